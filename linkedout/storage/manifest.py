"""The manifest: how every tensor in a feature dataset was made.

It lives in the Lance schema metadata under `linkedout.manifest`, so it travels with every copy
of the dataset and is versioned with it. Two extraction runs may write into one dataset only if
their manifests agree on everything that shapes the tensors (`Manifest.mismatches`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from linkedout import __version__
from linkedout.errors import LinkedOutError

# Bump when the on-disk layout changes in a way older readers would misread.
FORMAT_VERSION = 1

BackboneKind = Literal["video-llm", "text"]
BACKBONE_KINDS: tuple[str, ...] = ("video-llm", "text")
DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32")

# Fields that record who wrote the data rather than what the tensors are; appends may differ here.
_PROVENANCE_FIELDS = frozenset({"linkedout_version", "provenance"})
# A run may add queries to a dataset, or ask fewer; its queries are compared by name instead.
_QUERY_FIELDS = frozenset({"prompt", "queries", "query_slots"})


@dataclass(frozen=True)
class Manifest:
    """Everything needed to reproduce, trust and combine the stored `[L, T, D]` tensors."""

    backbone: str
    """Hub id or local path the backbone was loaded from, e.g. `Qwen/Qwen2.5-VL-3B-Instruct`."""
    backbone_kind: BackboneKind
    """`video-llm` (frames + prompt) or `text` (auxiliary text alone)."""
    layers: tuple[int, ...]
    """Tapped depths, in stored order; 0 is the embedding output, i is decoder layer i's output."""
    tokens_per_layer: int
    """T: pooled token slots kept per layer."""
    hidden_size: int
    """D: the backbone's hidden size."""
    dtype: str = "float16"
    """Storage dtype of the tensors: float16, bfloat16 or float32."""
    backbone_revision: str | None = None
    """Commit hash or weights checksum, so a re-run can tell the same weights from new ones."""
    pooling: str = ""
    """The recipe mapping each span's tokens to the T slots, as written by the extractor."""
    prompt: str | None = None
    """The query template given to the backbone (`{title}` is filled per item); with several
    queries, the first's (whose slots are the `tokens` column)."""
    queries: tuple[tuple[str, str], ...] = ()
    """(name, text) of every query, in stored order, when there is more than the one named
    `default` (which is `prompt`): the first's slots are `tokens`, each other's `query_<name>`."""
    query_slots: int | None = None
    """Slots per layer in each `query_<name>` column: T - V (after) or T (before); set by the
    run that writes the first such column."""
    query_position: str = "after"
    """Where queries sit in the chat turn: `after` the video (whose slots every query then
    shares: a query column holds its own T - V slots) or `before` it (all T slots per query)."""
    frames_per_video: int | None = None
    """Frames sampled from each video; None for text backbones."""
    recipe: dict[str, str] = field(default_factory=dict)
    """Other settings that change the tensors (pixel budget, new tokens); compared on append."""
    provenance: dict[str, str] = field(default_factory=dict)
    """Who wrote the data (engine, its version); informative only, never compared."""
    format_version: int = FORMAT_VERSION
    linkedout_version: str = __version__

    def __post_init__(self) -> None:
        # Normalise containers so a manifest read back from JSON equals the one written.
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "queries", tuple((str(n), str(t)) for n, t in self.queries))
        object.__setattr__(self, "recipe", {str(k): str(v) for k, v in self.recipe.items()})
        object.__setattr__(self, "provenance", {str(k): str(v) for k, v in self.provenance.items()})
        problems = []
        if not self.layers:
            problems.append("layers is empty")
        if len(set(self.layers)) != len(self.layers):
            problems.append(f"layers {list(self.layers)} repeat an index")
        if any(x < 0 for x in self.layers):
            problems.append(f"layers {list(self.layers)} has a negative index")
        if self.tokens_per_layer < 1:
            problems.append(f"tokens_per_layer must be >= 1, got {self.tokens_per_layer}")
        if self.hidden_size < 1:
            problems.append(f"hidden_size must be >= 1, got {self.hidden_size}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.backbone_kind not in BACKBONE_KINDS:
            problems.append(
                f"backbone_kind {self.backbone_kind!r} is not one of {', '.join(BACKBONE_KINDS)}"
            )
        if problems:
            raise LinkedOutError("invalid manifest: " + "; ".join(problems))

    @property
    def shape(self) -> tuple[int, int, int]:
        """`(L, T, D)` of every stored tensor."""
        return (len(self.layers), self.tokens_per_layer, self.hidden_size)

    def named_queries(self) -> tuple[tuple[str, str], ...]:
        """(name, text) of every stored query, the `tokens` column's first; none for text
        backbones."""
        if self.queries:
            return self.queries
        return (("default", self.prompt),) if self.prompt is not None else ()

    def mismatches(self, other: Manifest, reads: Sequence[int] | None = None) -> list[str]:
        """Human-readable differences that make rows of `other` incompatible with this dataset:
        every field that shapes the tensors, and each query both name with another text
        (queries only one of them has are no difference: see `with_queries`). With `reads`,
        the depths a reader needs, `other` may hold more depths than these (a run trained on
        a subset reads new items extracted with every depth)."""
        out = []
        if reads is not None:
            absent = [x for x in reads if x not in other.layers]
            if absent:
                out.append(f"layers: read {list(reads)}, new {list(other.layers)}")
        for f in fields(self):
            if f.name in _PROVENANCE_FIELDS or f.name in _QUERY_FIELDS:
                continue
            if f.name == "layers" and reads is not None:
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine != theirs:
                out.append(f"{f.name}: stored {_short(mine)}, new {_short(theirs)}")
        if None not in (self.query_slots, other.query_slots) and (
            self.query_slots != other.query_slots
        ):
            out.append(f"query_slots: stored {self.query_slots}, new {other.query_slots}")
        for name, stored, text in self.query_conflicts(other.named_queries()):
            out.append(
                f"query {name!r}: stored {_short(stored)}, new {_short(text)} (a new query "
                "needs a name of its own)"
            )
        return out

    def query_conflicts(self, queries: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
        """(name, stored text, new text) of each of `queries` stored under its name with
        another text."""
        stored = dict(self.named_queries())
        return [(n, stored[n], t) for n, t in queries if n in stored and stored[n] != t]

    def with_queries(self, other: Manifest) -> Manifest:
        """This manifest with the queries of `other` it lacks appended (the stored ones keep
        their place: the first stays in `tokens`)."""
        stored = self.named_queries()
        names = {name for name, _ in stored}
        added = tuple((n, t) for n, t in other.named_queries() if n not in names)
        if not added:
            return self
        return replace(self, queries=stored + added, query_slots=other.query_slots)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data: dict[str, Any] = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LinkedOutError(f"its manifest is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise LinkedOutError("its manifest is not a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise LinkedOutError(
                f"this dataset uses LinkedOut format version {version}, but linkedout "
                f"{__version__} reads format {FORMAT_VERSION}: "
                + (
                    "upgrade linkedout (pip install -U linkedout)"
                    if isinstance(version, int) and version > FORMAT_VERSION
                    else "re-extract it with this version"
                )
            )
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:  # a required field is absent
            raise LinkedOutError(f"its manifest is incomplete ({e})") from None


def _short(value: Any) -> str:
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 60 else text[:57] + "..."
