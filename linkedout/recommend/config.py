"""The settings of one training run; `linkedout train`'s options are generated from them
(the model's and the split's settings included: `ModelConfig`, `SplitConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from linkedout.errors import SettingError
from linkedout.memory import MemoryBudget
from linkedout.settings import (
    at_least,
    check_choices,
    comma_list,
    depths_of,
    finite,
    names_of,
    setting,
)
from linkedout.storage.uri import storage_options_setting


def parse_slots(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """`0:12` on the command line -> (0, 12)."""
    if text is None or isinstance(text, tuple):
        return text
    start, sep, stop = text.partition(":")
    if not sep or not start.strip().isdigit() or not stop.strip().isdigit():
        raise SettingError("slots", text, "write START:STOP, e.g. 0:12")
    if int(start) >= int(stop):
        raise SettingError("slots", text, "START must be below STOP")
    return int(start), int(stop)


def uris_of(values: list[str] | None) -> list[str]:
    """A repeatable flag's values (none given: [])."""
    return list(values or [])


FUSIONS = ("moe", "mean", "last", "none")  # and layer:K, one stored depth


@dataclass(frozen=True)
class ModelConfig:
    """The recommender's architecture (stored in the run's config.json)."""

    d_model: int = 64
    """Width of item vectors and of the sequence model."""
    fusion: str = "moe"
    """How depths combine: moe (per-user gate), mean, last, layer:K (one stored depth), or
    none (IDs only)."""
    ids: bool = False
    """Add an item-ID embedding to the content (content only ranks unseen items)."""
    expert_dim: int = 16
    """Dimensions of each depth's expert (its subspace of the model)."""
    whiten: int = 64
    """Principal directions kept per depth by the whitening fitted on the catalog (0: LayerNorm
    the tokens at their full width instead)."""
    id_dropout: float = 0.2
    """With content and --ids: drop a history item's ID vector with this probability in
    training, so the model learns to read items by their content too (items with few
    interactions have poor ID vectors, new ones none)."""
    new_item_lift: float = 0.25
    """With content and --ids: when ranking, every item without a trained ID vector (new
    uploads, items added with `catalog add`, items no training sequence holds) gains this
    many units of the user's ID-score scale (|h_u| times the mean length of the trained ID
    vectors). Such items are scored by content alone against warm items' content + ID scores,
    which otherwise keeps them out of every top 10. Not used by the training loss; 0 turns it
    off. The default: chosen on MicroLens-50K's validation new uploads (README, model
    section)."""
    token_pool: Literal["mean", "attention"] = "mean"
    """How a depth's stored tokens become one vector: mean (once, before training) or attention
    (a learned query per depth)."""
    top_k: int = 0
    """Gate keeps the k largest layer weights (0 = soft gate)."""
    balance_weight: float = 0.01
    """Weight of the gate load-balancing term (keeps the gate from collapsing early)."""
    blocks: int = 2
    """Causal Transformer blocks."""
    heads: int = 2
    """Attention heads."""
    dropout: float = 0.2
    """Dropout in the sequence model."""
    max_len: int = 50
    """History length the model sees (the most recent items)."""

    def __post_init__(self) -> None:
        check_choices(self)
        fusion = self.fusion
        depth = fusion.removeprefix("layer:")
        if fusion not in FUSIONS and not (fusion.startswith("layer:") and depth.isdigit()):
            reason = "use moe, mean, last, layer:K (K a stored depth) or none"
            raise SettingError("fusion", fusion, reason)
        at_least(self, "d_model", 1, "give the model 1+ dimensions")
        at_least(self, "expert_dim", 1, "give each depth 1+ dimensions")
        at_least(self, "whiten", 0, "keep 0 (no whitening) or more directions")
        at_least(self, "top_k", 0, "keep 0 (a soft gate) or more depths")
        at_least(self, "balance_weight", 0, "must be 0 or more")
        at_least(self, "blocks", 1, "use at least 1 block")
        at_least(self, "heads", 1, "use at least 1 head")
        at_least(self, "max_len", 1, "the model must see at least 1 item")
        if self.d_model % self.heads:
            raise SettingError("heads", self.heads, f"must divide `d_model` ({self.d_model})")
        finite(self, "new_item_lift")
        for name in ("id_dropout", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise SettingError(name, getattr(self, name), "use a probability in [0, 1)")

    @classmethod
    def stored(cls, values: dict) -> ModelConfig:
        """The config a checkpoint stored. Runs trained before 2026-12-07 stored
        `new_item_boost`, a constant added to new items' scores: in score units it has no
        counterpart in `new_item_lift`'s, so it is dropped and they rank with the default lift
        (`--new-item-lift` overrides it; the weights do not depend on either)."""
        return cls(**{k: v for k, v in values.items() if k != "new_item_boost"})


@dataclass(frozen=True)
class SplitConfig:
    """Which interactions make the leave-one-out split."""

    min_interactions: int = 5
    """Drop users with fewer interactions (MicroLens' rule; below 3 counts as 3: a user needs
    a train, a valid and a test item)."""
    allow_missing: bool = False
    """Keep items without features, served by their ID embedding only (needs --ids)."""


@dataclass
class TrainConfig:
    """Everything one training run needs."""

    features: str
    """Feature dataset written by `linkedout extract` (path or URI)."""
    interactions: str
    """CSV/TSV/Parquet of user, item[, timestamp] rows, or MicroLens pairs (user<TAB>item item
    ...)."""
    out: str = setting(short="-o")
    """Run directory to create, e.g. runs/NAME."""
    model: ModelConfig = field(default_factory=ModelConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    layers: list[int] = setting(default_factory=list, cli_type=str | None, parse=depths_of)
    """Stored depths to read, comma-separated (default: every one): the MoE's experts, and
    what --fusion mean, last and layer:K choose among. The same depths of a full dataset or of
    a subset exported with `export --layers` train the same model."""
    queries: list[str] = setting(default_factory=list, cli_type=str | None, parse=names_of)
    """Queries of a multi-query feature dataset to read, comma-separated, or all (default:
    its first). With several, every (query, depth) pair is an expert of the MoE, and
    explanations name the query and the depth, as query:depth."""
    slots: tuple[int, int] | None = setting(None, cli_type=str | None, parse=parse_slots)
    """START:STOP: read only these of the T pooled slots of each depth (default: all), e.g.
    0:12 for the video slots alone of the 16-slot video recipe, 12:16 for the prompt's; the
    feature dataset's pooling recipe (`linkedout info`) says what each slot holds."""
    user_col: str | None = None
    """User column (default: detected)."""
    item_col: str | None = None
    """Item column (default: detected)."""
    time_col: str | None = None
    """Timestamp column (default: detected, optional)."""
    epochs: int = 50
    """Most epochs; early stopping may end sooner."""
    batch_size: int = 256
    """Users per training batch."""
    eval_batch_size: int = 512
    """Users per batch when validation and evaluation rank the catalog."""
    lr: float = 2e-3
    """AdamW learning rate."""
    weight_decay: float = 0.1
    """AdamW weight decay (decoupled, on every parameter). 0.1 rather than 0.01: the ID
    vectors overfit after a few epochs otherwise (MicroLens validation, README)."""
    loss_weighting: Literal["target", "batch"] = "target"
    """target: every predicted position weighs the same in an epoch (as in RecBole's one-target
    samples); batch: each batch's mean, so positions in batches of long histories weigh less
    (batches group histories of similar length)."""
    patience: int = 4
    """Epochs without a better validation NDCG@10 before stopping."""
    val_users: int | None = None
    """Validate each epoch on a fixed random sample of N users (default: all); model selection
    only, the final metrics rank every user."""
    negatives: int = 1024
    """Sampled-softmax negatives (catalogs above --full-softmax-max-items)."""
    full_softmax_max_items: int = 100_000
    """Largest catalog trained with a full softmax (every item a candidate at every step);
    larger ones train with a sampled softmax of --negatives items."""
    seed: int = 42
    """Random seed."""
    feature_memory_gb: float | None = None
    """Keep item features, and the per-layer item embeddings validation ranks against, in
    memory up to this many GiB; beyond it features stream from the store and embeddings are
    ranked chunk by chunk from Lance (default: half the free memory)."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu."""
    devices: int = 1
    """Processes per node (one per GPU, or CPU processes): above 1 trains data-parallel, each
    taking a slice of every batch."""
    num_nodes: int = 1
    """Machines taking part (Lightning num_nodes)."""
    strategy: str = "auto"
    """Lightning strategy: auto (ddp when several processes), ddp, ..."""
    catalog_features: list[str] = setting(
        default_factory=list, cli_type=list[str] | None, parse=uris_of
    )
    """More feature datasets (path or URI; repeat the flag) whose items join the run's catalog
    when training ends, ranked by their content as `linkedout catalog add` would add them: give
    the datasets added to an earlier run's catalog, and the retrained run keeps them. Extracted
    like --features; evaluation still ranks the interactions' items."""
    storage_options: dict[str, str] = storage_options_setting()
    quiet: bool = setting(False, short="-q")
    """No progress bars."""

    def __post_init__(self) -> None:
        check_choices(self)
        if self.model.fusion == "none" and not self.model.ids:
            raise SettingError("fusion", "none", "uses no content: add `ids` (the ID-only SASRec)")
        if self.model.fusion == "none" and self.catalog_features:
            raise SettingError(
                "catalog_features",
                self.catalog_features[0],
                "an ID-only model (--fusion none) cannot rank items it was not trained on: "
                "train with content to add them",
            )
        for name in ("epochs", "batch_size", "eval_batch_size", "val_users", "negatives"):
            at_least(self, name, 1, "must be at least 1")
        for name in ("devices", "num_nodes"):
            at_least(self, name, 1, "must be at least 1")
        at_least(self, "full_softmax_max_items", 0, "must be 0 (always sampled) or more")
        if not self.lr > 0:
            raise SettingError("lr", self.lr, "the learning rate must be above 0")
        at_least(self, "weight_decay", 0, "must be 0 or more")
        at_least(self, "patience", 0, "must be 0 or more")
        at_least(self, "feature_memory_gb", 0, "give a size of 0 or more")


def _run_setting():
    return setting(argument=True, help="Run directory written by `linkedout train`.")


def _catalog_memory_setting():
    return setting(
        default=None,
        help="Load the run's per-layer item embeddings (catalog.lance) up to this many GiB, "
        "else rank them chunk by chunk from disk (default: half the free memory).",
    )


def _check_catalog_memory(config) -> None:
    at_least(config, "catalog_memory_gb", 0, "give a size of 0 or more")


def _memory_budget(config) -> MemoryBudget:
    """How much of the run's catalog may sit in memory (`catalog_memory_gb`, resolved once)."""
    return MemoryBudget.resolve(config.catalog_memory_gb)


def parse_history(text: str | None) -> tuple[str, ...] | None:
    """`ID,ID,...` -> the ids, oldest first (blanks between commas ignored)."""
    if text is None:
        return None
    items = comma_list(text)
    if not items:
        raise SettingError(
            "history", text, "lists no item ids: pass watched ids, oldest first, as ID,ID,..."
        )
    return items


IndexMode = Literal["auto", "exact", "graph"]
GRAPH_AUTO_MIN_ITEMS = 200_000
"""`--index auto` ranks through the graph index from this catalog size on (the exact scan is
cheap below it: README, serving)."""
INDEX_HELP = (
    "How a ranking finds the top k: exact (scan every item), graph (the run's approximate graph "
    "index, `linkedout catalog index`, its candidates scored exactly; `serve` builds it in the "
    f"background when missing), or auto (graph from {GRAPH_AUTO_MIN_ITEMS:,} items on, where "
    "one is stored or `serve` builds it; exact below)."
)

NEW_ITEM_LIFT_HELP = (
    "Rank with this --new-item-lift instead of the run's (content + IDs runs: what items "
    "without a trained ID vector gain, in units of each user's ID-score scale; 0 turns it "
    "off). No retraining needed."
)


@dataclass(frozen=True)
class EvaluateConfig:
    """What `linkedout evaluate` ranks."""

    run: Path = _run_setting()
    split: Literal["valid", "test"] = "test"
    """The split whose targets are ranked: valid or test."""
    catalog_memory_gb: float | None = _catalog_memory_setting()
    new_item_lift: float | None = setting(default=None, help=NEW_ITEM_LIFT_HELP)

    def __post_init__(self) -> None:
        check_choices(self)
        _check_catalog_memory(self)
        finite(self, "new_item_lift")

    memory_budget = _memory_budget


@dataclass(frozen=True)
class RecommendConfig:
    """Whom `linkedout recommend` ranks for, and how much it shows."""

    run: Path = _run_setting()
    user: str | None = None
    """A user of the run's interactions (ranked after everything the run saw of them)."""
    history: tuple[str, ...] | None = setting(
        default=None, cli_type=str | None, parse=parse_history
    )
    """Watched item ids, oldest first: ID,ID,..."""
    k: int = 10
    """How many items."""
    explain: bool = False
    """Show the user's per-depth gate and each item's strongest depth."""
    new_item_lift: float | None = setting(default=None, help=NEW_ITEM_LIFT_HELP)
    index: IndexMode = setting(default="auto", help=INDEX_HELP)

    def __post_init__(self) -> None:
        check_choices(self)
        finite(self, "new_item_lift")
        if (self.user is None) == (self.history is None):
            reason = "pass exactly one of `user` U or `history` ID,ID,..."
            raise SettingError("user", SettingError.UNSET, reason)
        if self.user is not None and not self.user.strip():
            raise SettingError(
                "user", self.user, "is empty: give a user id of the run's interactions"
            )
        at_least(self, "k", 1, "ask for at least 1 item")
