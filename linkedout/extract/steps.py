"""The per-item steps of an extraction and the one frozen plan they read.

    prepare_item (decode + pack, no weights) ─▶ run_batch (forward, pool, one row per item)

Both engines run exactly these steps; they differ only in where (decode threads and this
process, or Ray tasks and actors). The steps take an `ExtractPlan`, not the run's whole
`ExtractConfig`: the plan holds only what shapes a row, is built once per run, and is small
enough to ship to every Ray process.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import transformers

from linkedout import __version__
from linkedout.cli_options import command_line
from linkedout.errors import LinkedOutError, SettingError
from linkedout.extract.backbones import Asked, Backbone, ItemInput, Packer, Prepared
from linkedout.extract.config import ExtractConfig
from linkedout.extract.decode import DecodeError, decode_video, unreadable_reason
from linkedout.extract.discover import CatalogItem
from linkedout.extract.pool import PoolingRecipe
from linkedout.extract.queries import DEFAULT_QUERY, Query, fill
from linkedout.storage import FailedItem, FeatureRow, Manifest
from linkedout.storage.columns import TORCH_DTYPES

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class BackboneFacts:
    """What the manifest says about the model: known from a loaded backbone, or (for a
    cluster run, whose driver loads no weights) from the checkpoint's config and the device
    the workers will use."""

    model_id: str
    kind: str
    hidden_size: int
    revision: str | None
    dtype: torch.dtype
    device: str
    backend: str = "transformers"
    versions: tuple[tuple[str, str], ...] = ()
    """(package, version) of the backend beyond transformers and torch, e.g. vllm."""

    @classmethod
    def of(cls, backbone: Backbone) -> BackboneFacts:
        return cls(
            backbone.model_id,
            backbone.kind,
            backbone.hidden_size,
            backbone.revision,
            backbone.dtype,
            str(backbone.device),
            backbone.backend,
            tuple(backbone.versions.items()),
        )


@dataclass(frozen=True)
class ExtractPlan:
    """What the per-item steps need to know about the run, and all they may read of it."""

    facts: BackboneFacts
    """The model as the manifest states it; each Ray replica checks its backbone agrees."""
    layers: tuple[int, ...]
    recipe: PoolingRecipe
    frames: int
    queries: tuple[Query, ...]
    """What every video is asked (text backbones: the one default query, unused)."""
    query_position: str
    new_tokens: int
    max_pixels: int | None
    store_dtype: str
    batch_size: int
    with_tokens: bool = True
    """Whether the first query's slots make the `tokens` column (False: rows that only add
    queries to stored items, each to its own column)."""
    command: str = ""
    """The `linkedout extract` line of these settings, for the manifest's provenance (the
    dataset card shows it to whoever receives the data)."""

    @classmethod
    def make(
        cls,
        config: ExtractConfig,
        facts: BackboneFacts,
        layers: tuple[int, ...],
        recipe: PoolingRecipe,
        queries: tuple[Query, ...] | None = None,
    ) -> ExtractPlan:
        """`queries`: what every video is asked (default: the run's own)."""
        return cls(
            facts,
            layers,
            recipe,
            config.frames,
            tuple(config.named_queries()) if queries is None else queries,
            config.query_position,
            config.new_tokens,
            config.max_pixels,
            config.store_dtype,
            config.batch_size,
            # --shard is how one process shares the work, not how the data was made.
            command=command_line("extract", config, leave_out=frozenset({"shard"})),
        )

    @property
    def is_video(self) -> bool:
        return self.facts.kind == "video-llm"

    @property
    def query_slots(self) -> int:
        """Slots of a query column: the query's own (T - V) when the video is shared."""
        t = self.recipe.tokens_per_layer
        return t - self.recipe.video_slot_count if self.query_position == "after" else t

    def query_columns(self, asked: torch.Tensor) -> dict[str, torch.Tensor]:
        """One video's `[Q, L, T, D]` -> the stored slots of each query that has a column of
        its own (all of them, or all but the first whose slots are `tokens`)."""
        first = 1 if self.with_tokens else 0
        keep = self.recipe.tokens_per_layer - self.query_slots
        return {q.name: asked[i, :, keep:] for i, q in enumerate(self.queries) if i >= first}


def parse_layers(spec: str, num_layers: int) -> tuple[int, ...]:
    """`auto:N` (N evenly spaced blocks ending with the last), `all` (0..L) or `4,8,12`."""
    spec = spec.strip()
    if spec == "all":
        return tuple(range(num_layers + 1))
    if spec.startswith("auto"):
        _, _, count = spec.partition(":")
        try:
            n = int(count or 8)
        except ValueError:
            raise SettingError("layers", spec, "write auto:N, all or 4,8,12") from None
        n = max(1, min(n, num_layers))
        return tuple(sorted({math.floor(num_layers * (k + 1) / n + 0.5) for k in range(n)}))
    try:
        layers = tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise SettingError("layers", spec, "write auto:N, all or 4,8,12") from None
    bad = [x for x in layers if not 0 <= x <= num_layers]
    if not layers or bad:
        raise SettingError(
            "layers",
            spec,
            f"indices must lie in 0..{num_layers} for this model "
            f"(0 = embeddings, {num_layers} = last block)",
        )
    if len(set(layers)) != len(layers):
        raise SettingError("layers", spec, "names a layer twice")
    return layers


def check_frames_fit(
    frames: int, settings: object | None, max_positions: int | None, model: str
) -> None:
    """Refuse, before the first item, a frame count whose video tokens alone overflow the
    model's positions even at the smallest frame size the packer makes (so every item would
    fail). `settings` is a Video LLM packer's `PackSettings` (None: nothing to check). Clips
    that only overflow at their own resolution fail one by one (`Backbone.refuse`)."""
    if settings is None:
        return
    if settings.budget == "clip" and frames < settings.temporal_patch_size:
        raise SettingError(
            "frames",
            frames,
            f"{model} packs at least {settings.temporal_patch_size} frames (one temporal patch) "
            f"per video: use `frames` {settings.temporal_patch_size} or more",
        )
    if max_positions is None:
        return
    fewest = settings.fewest_video_tokens(frames)
    if fewest < max_positions:
        return
    per_patch = settings.fewest_video_tokens(settings.temporal_patch_size)
    fits = max(1, (max_positions - 1) // per_patch * settings.temporal_patch_size)
    raise SettingError(
        "frames",
        frames,
        f"{frames} frames make at least {fewest} video tokens (at the smallest frame size, "
        f"{min(settings.min_pixels, settings.max_pixels)} pixels), but {model} holds "
        f"{max_positions} positions: use `frames` {fits} or fewer",
    )


def check_tokens_fit(
    recipe: PoolingRecipe, frames: int, settings: object | None, model: str
) -> None:
    """Refuse, before the first item, a `tokens_per_layer` whose video slots would mostly
    repeat others: `frames` frames make `ceil(frames / temporal patch)` time steps of at most
    a few merged patches each, and a pooling into more time bins (or more of the 2 x 2 spatial
    bins than a step has tokens) only copies them, storing empty width for every item.
    `settings`: a Qwen packer's `PackSettings` (None, the generic path: not known here)."""
    if settings is None or recipe.video_bins is None or recipe.video_sequence:
        return
    bins_t, bins_h, bins_w = recipe.video_bins
    steps = math.ceil(frames / settings.temporal_patch_size)
    per_step = settings.most_video_tokens(frames) // steps
    slots = bins_t * bins_h * bins_w
    distinct = min(bins_t, steps) * min(bins_h * bins_w, per_step)
    if 2 * distinct >= slots:
        return
    fits = 4 * steps + 2 + recipe.generated_slots
    raise SettingError(
        "tokens_per_layer",
        recipe.tokens_per_layer,
        f"pools the video into {bins_t} x {bins_h} x {bins_w} bins, but {frames} frames make "
        f"{steps} time step(s) of at most {per_step} token(s) in {model}: {slots - distinct} of "
        f"the {slots} video slots would only repeat others; use `tokens_per_layer` {fits} or "
        "fewer, or more `frames`",
    )


def build_manifest(plan: ExtractPlan, engine: Mapping[str, str]) -> Manifest:
    """The manifest of this run; `engine` is the engine's own provenance (its name, versions)."""
    facts = plan.facts
    compute = str(facts.dtype).removeprefix("torch.")
    recipe_facts = {"compute_dtype": compute, "new_tokens": str(plan.new_tokens)}
    if plan.is_video:
        recipe_facts["max_pixels"] = str(plan.max_pixels)
    queries = tuple((q.name, q.text) for q in plan.queries) if plan.is_video else ()
    several = len(queries) > 1 or (queries and queries[0][0] != DEFAULT_QUERY)
    return Manifest(
        backbone=facts.model_id,
        backbone_kind=facts.kind,
        layers=plan.layers,
        tokens_per_layer=plan.recipe.tokens_per_layer,
        hidden_size=facts.hidden_size,
        dtype=plan.store_dtype,
        backbone_revision=facts.revision,
        pooling=plan.recipe.describe(),
        prompt=plan.queries[0].text if plan.is_video else None,
        queries=queries if several else (),
        query_slots=plan.query_slots if several else None,
        query_position=plan.query_position if plan.is_video else "after",
        frames_per_video=plan.frames if plan.is_video else None,
        recipe=recipe_facts,
        # Older datasets hold the backend under "engine"; provenance is never compared on
        # resume, so they still open and resume unchanged.
        provenance={
            "backend": facts.backend,
            **dict(facts.versions),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "device": facts.device,
            "linkedout": __version__,
            **engine,
            **({"command": plan.command} if plan.command else {}),
        },
    )


# ------------------------------------------------------------------ per item
def empty_query(name: str) -> str:
    what, flag = ("the prompt", "--prompt") if name == DEFAULT_QUERY else (f"query {name!r}", "it")
    return (
        f"{what} is empty for this video: every line of it names a field the video has no "
        f"value for ({{title}} or another --titles column); add a line without one to {flag}, "
        "or the values"
    )


@dataclass
class PreparedItem:
    """An item packed for the model. The decoded frames are not kept: only what the row
    records of them, so items waiting for the model (or crossing a cluster) stay small."""

    item: CatalogItem
    sha: str
    prepared: Prepared | Asked
    """What the backbone forwards: a text item's `Prepared`, or a video with its queries."""
    frame_indices: tuple[int, ...] | None = None
    frame_seconds: tuple[float, ...] | None = None

    def failed(self, reason: str) -> FailedItem:
        return FailedItem(self.item.item_id, reason, self.sha, self.item.source, self.item.title)


def prepare_item(
    item: CatalogItem, sha: str, plan: ExtractPlan, packer: Packer
) -> PreparedItem | FailedItem:
    """Decode and pack one item (in a decode thread, or a Ray task); failures come back as
    values, so a broken file is recorded once and never retried."""
    try:
        if item.source == "text":
            return PreparedItem(item, sha, packer.prepare(ItemInput(text=item.title or "")))
        texts = tuple(fill(q.text, item.title, item.fields) for q in plan.queries)
        empty = next(
            (q.name for q, t in zip(plan.queries, texts, strict=True) if not t.strip()), None
        )
        why = unreadable_reason(item.source) or (None if empty is None else empty_query(empty))
        if why:  # a dangling link or FIFO says so first; a FIFO is never opened
            return FailedItem(item.item_id, why, sha, item.source, item.title)
        video = decode_video(item.source, plan.frames)
        asked = packer.ask(
            ItemInput(
                texts[0],
                video.frames,
                tuple(video.seconds),
                queries=texts,
                query_position=plan.query_position,
            )
        )
        return PreparedItem(item, sha, asked, video.indices, video.seconds)
    except (DecodeError, LinkedOutError) as e:
        return FailedItem(item.item_id, str(e), sha, item.source, item.title)
    except Exception as e:  # a broken file must not stop a catalog-sized run
        log.debug("prepare failed for %s", item.item_id, exc_info=True)
        return FailedItem(
            item.item_id, f"{type(e).__name__}: {e}".splitlines()[0], sha, item.source, item.title
        )


def run_batch(
    batch: list[PreparedItem | FailedItem], backbone: Backbone, plan: ExtractPlan
) -> list[FeatureRow | FailedItem]:
    """Forward one batch of prepared items and pool each item's states into a row; items that
    failed to prepare, that the backbone refuses, or whose forward fails come back as
    `FailedItem`."""
    rows: list[FeatureRow | FailedItem] = [x for x in batch if isinstance(x, FailedItem)]
    ready: list[PreparedItem] = []
    for r in (x for x in batch if isinstance(x, PreparedItem)):
        asked = r.prepared.queries if isinstance(r.prepared, Asked) else (r.prepared,)
        why = next(filter(None, (backbone.refuse(p, plan.new_tokens) for p in asked)), None)
        if why:
            rows.append(r.failed(why))
        else:
            ready.append(r)
    if not ready:
        return rows
    start = time.perf_counter()
    try:
        if plan.is_video:
            pooled = backbone.asked_states(
                [r.prepared for r in ready], plan.layers, plan.recipe, plan.new_tokens
            )
            per_video = pooled.tokens
            forwarded = [queries[0] for queries in pooled.prepared]
        else:
            one = backbone.pooled_states(
                [r.prepared for r in ready], plan.layers, plan.recipe.pool, plan.new_tokens
            )
            per_video = tuple(t[None] for t in one.tokens)
            forwarded = list(one.prepared)
    except (RuntimeError, LinkedOutError) as e:  # e.g. out of memory on one huge video
        reason = f"forward failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        return rows + [r.failed(reason) for r in ready]
    per_item = (time.perf_counter() - start) / len(ready)
    dtype = TORCH_DTYPES[plan.store_dtype]
    for r, asked, prepared in zip(ready, per_video, forwarded, strict=True):
        asked = asked.to(dtype).cpu()  # [Q, L, T, D]
        rows.append(
            FeatureRow(
                item_id=r.item.item_id,
                tokens=asked[0].clone() if plan.with_tokens else None,
                content_sha256=r.sha,
                source=r.item.source,
                title=r.item.title,
                frame_indices=r.frame_indices,
                frame_seconds=r.frame_seconds,
                token_counts=prepared.token_counts,
                extract_seconds=per_item,
                queries={n: t.clone() for n, t in plan.query_columns(asked).items()},
            )
        )
    return rows
