"""The service's request and response bodies (its OpenAPI schema). Types are strict: `"5"` is
not a `k`, and `1` is not an item id, so a client's bug is answered, not guessed around."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    model_validator,
)

from linkedout.service.config import MAX_EXCLUDE, MAX_HISTORY, MAX_ID_LENGTH, MAX_K

DEPRECATED = "renamed in 0.2 (an expert is a (query, depth) pair); this name goes in 0.3"

ItemId = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_ID_LENGTH)]


class RecommendRequest(BaseModel):
    """One user to rank for: `history` (item ids, oldest first) or `user` (a user of the run's
    interactions, ranked after everything the run saw of them)."""

    model_config = ConfigDict(extra="forbid")

    history: Annotated[list[ItemId], Field(min_length=1, max_length=MAX_HISTORY)] | None = None
    user: ItemId | None = None
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 10
    exclude: Annotated[list[ItemId], Field(max_length=MAX_EXCLUDE)] = []
    explain: StrictBool = False
    """Return the user's per-depth gate and each item's strongest depth."""

    @model_validator(mode="after")
    def _one_of(self) -> RecommendRequest:
        if (self.history is None) == (self.user is None):
            raise ValueError("give exactly one of history (item ids, oldest first) or user")
        return self


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: Annotated[list[RecommendRequest], Field(min_length=1)]


class RankedItem(BaseModel):
    item_id: str
    score: float
    top_expert: int | str | None = None
    """The expert that added most to this item's score (with explain): its depth, or
    query:depth for runs over several queries."""
    expert_scores: list[float] = []
    """Each expert's term of the score, in the order of /metadata's `experts`."""
    top_layer: Annotated[int | str | None, Field(deprecated=DEPRECATED)] = None
    """`top_expert`'s old name."""
    layer_scores: Annotated[list[float], Field(deprecated=DEPRECATED)] = []
    """`expert_scores`' old name."""


class RecommendResponse(BaseModel):
    items: list[RankedItem]
    gate: dict[str, float] = {}
    """The user's weight on each depth (with explain, for runs with content)."""
    unknown: list[str] = []
    """History ids the catalog does not hold (ignored)."""
    catalog_version: int


class BatchResponse(BaseModel):
    results: list[RecommendResponse]
    catalog_version: int
    """Every result of a batch is ranked against this one catalog version."""


class ItemResponse(BaseModel):
    item_id: str
    trained: bool
    """Whether the run was trained on it (else it was added later and ranks by content)."""
    catalog_version: int


class CatalogInfo(BaseModel):
    version: int
    size: int
    added: int
    """Live items that were added after training."""


class IndexInfo(BaseModel):
    mode: str
    """The --index setting: auto, exact or graph."""
    in_use: str
    """How rankings are found now: exact, or graph."""
    graph_catalog_version: int | None = None
    """The catalog version the graph in use was built over."""
    graph_items: int | None = None
    """Live items the graph holds."""
    beside_graph: int | None = None
    """Live items scanned exactly beside the graph (added since it was built, or lifted)."""
    building: bool = False
    """A new graph is being built in the background."""
    error: str | None = None
    """Why the last graph build failed (rankings go on as before)."""


class Metadata(BaseModel):
    run: str
    run_id: str | None
    fusion: str
    ids: bool
    experts: list[int | str]
    """Each expert's name: its depth, or query:depth for runs over several queries."""
    layers: Annotated[list[int | str], Field(deprecated=DEPRECATED)]
    """`experts`' old name."""
    users: int
    max_history_used: int
    """The model reads the last this-many history items."""
    new_item_lift: float
    """What items without a trained ID vector gain, in units of each user's ID-score scale
    (content + IDs runs)."""
    manifest: dict
    catalog: CatalogInfo
    index: IndexInfo


class Problem(BaseModel):
    detail: str
    """One sentence: what was wrong and what to do."""
