"""discover -> decode and pack (background threads) -> forward with hooks -> pool -> store.

Resumable by construction: items already stored with the same content hash and title are never
decoded again, rows are committed in batches (each an atomic Lance commit), and Ctrl-C commits
what is done before it stops.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from linkedout import __version__
from linkedout.errors import LinkedOutError
from linkedout.extract.backbones import (
    Backbone,
    ItemInput,
    Packer,
    Prepared,
    inspect_model,
    load_backbone,
)
from linkedout.extract.capture import LayerCapture
from linkedout.extract.decode import DecodeError, decode_video
from linkedout.extract.defaults import DEFAULT_PROMPT, DEFAULT_VIDEO_MODEL
from linkedout.extract.discover import CatalogItem, discover_videos, read_texts, read_titles
from linkedout.extract.pool import PoolingRecipe
from linkedout.storage import FailedItem, FeatureRow, FeatureStore, Manifest
from linkedout.storage.columns import TORCH_DTYPES
from linkedout.storage.rows import sha256_file, sha256_text

log = logging.getLogger(__name__)


@dataclass
class RayOptions:
    """Where and how wide `--engine ray` runs."""

    address: str | None = None
    """None starts a Ray cluster on this machine; `auto` joins the running one; or HOST:PORT."""
    workers: int = 1
    """Model replicas (Ray actors), one weights load each."""
    gpus_per_worker: float = 0.0
    """GPUs each replica holds (0: the model runs on CPU)."""
    cpus_per_worker: float = 1.0
    """CPUs each replica holds; decoding and packing run in separate one-CPU tasks."""

    def validate(self) -> None:
        if self.workers < 1:
            raise LinkedOutError(f"--workers {self.workers}: run at least 1 model replica")
        if self.gpus_per_worker < 0:
            raise LinkedOutError(f"--gpus-per-worker {self.gpus_per_worker}: must be 0 or more")
        if self.cpus_per_worker <= 0:
            raise LinkedOutError(f"--cpus-per-worker {self.cpus_per_worker}: must be above 0")


@dataclass
class ExtractConfig:
    """Everything one extraction run needs; `linkedout extract --help` documents each flag."""

    out: str
    videos: Path | None = None
    texts: Path | None = None
    model: str = DEFAULT_VIDEO_MODEL
    prompt: str = DEFAULT_PROMPT
    """Query given with each video; lines holding `{title}` are dropped for untitled items."""
    titles: Path | None = None
    id_column: str | None = None
    text_column: str | None = None
    frames: int = 16
    max_pixels: int | None = None
    """Pixel budget per frame (the Qwen processors' max_pixels); None keeps the checkpoint's."""
    layers: str = "auto:8"
    tokens_per_layer: int = 16
    new_tokens: int = 0
    batch_size: int = 1
    device: str = "auto"
    dtype: str = "auto"
    store_dtype: str = "float16"
    shard: tuple[int, int] | None = None
    """(index, count): this process takes the items whose id hashes to `index` modulo `count`."""
    limit: int | None = None
    overwrite: bool = False
    decode_threads: int = 2
    write_batch: int = 16
    storage_options: dict[str, str] = field(default_factory=dict)
    engine: str = "local"
    """local (this process, decoding in threads) or ray (Ray Data over a cluster)."""
    backend: str = "transformers"
    """What runs the model: transformers (the reference) or vllm (a vLLM engine per process;
    Video LLMs only)."""
    ray: RayOptions = field(default_factory=RayOptions)
    """Cluster, workers and GPUs of `engine="ray"`."""

    def validate(self) -> None:
        if (self.videos is None) == (self.texts is None):
            raise LinkedOutError("pass exactly one of --videos DIR or --texts FILE")
        if self.frames < 1:
            raise LinkedOutError(f"--frames {self.frames}: sample at least 1 frame per video")
        if self.batch_size < 1:
            raise LinkedOutError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.new_tokens < 0:
            raise LinkedOutError(f"--new-tokens {self.new_tokens}: must be 0 or more")
        if self.store_dtype not in TORCH_DTYPES:
            raise LinkedOutError(f"--store-dtype {self.store_dtype}: use {', '.join(TORCH_DTYPES)}")
        if self.shard is not None:
            index, count = self.shard
            if count < 1 or not 0 <= index < count:
                raise LinkedOutError(f"--shard {index}/{count}: need 0 <= I < N")
        if self.limit is not None and self.limit < 0:
            raise LinkedOutError(f"--limit {self.limit}: must be 0 or more")
        if self.engine not in ("local", "ray"):
            raise LinkedOutError(f"--engine {self.engine!r}: use local or ray")
        if self.backend not in ("transformers", "vllm"):
            raise LinkedOutError(f"--backend {self.backend!r}: use transformers or vllm")
        if self.engine == "ray":
            self.ray.validate()


@dataclass
class ExtractSummary:
    uri: str
    items: int = 0
    new: int = 0
    replaced: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        done = self.new + self.replaced
        rate = done / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.uri}: {self.new} new, {self.replaced} replaced, {self.skipped} skipped "
            f"(already stored), {self.failed} failed in {self.seconds:.1f}s "
            f"({rate:.2f} items/s)"
        )


# ------------------------------------------------------------------ planning
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
            raise LinkedOutError(f"--layers {spec!r}: write auto:N, all or 4,8,12") from None
        n = max(1, min(n, num_layers))
        return tuple(sorted({math.floor(num_layers * (k + 1) / n + 0.5) for k in range(n)}))
    try:
        layers = tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise LinkedOutError(f"--layers {spec!r}: write auto:N, all or 4,8,12") from None
    bad = [x for x in layers if not 0 <= x <= num_layers]
    if not layers or bad:
        raise LinkedOutError(
            f"--layers {spec!r}: indices must lie in 0..{num_layers} for this model "
            f"(0 = embeddings, {num_layers} = last block)"
        )
    if len(set(layers)) != len(layers):
        raise LinkedOutError(f"--layers {spec!r} names a layer twice")
    return layers


def fill_prompt(template: str, title: str | None) -> str:
    if title:
        return template.replace("{title}", title)
    return "\n".join(line for line in template.splitlines() if "{title}" not in line).strip()


def plan_items(config: ExtractConfig) -> tuple[list[CatalogItem], list[str]]:
    """The items this process extracts, and notes for the user (duplicates, skipped files)."""
    notes: list[str] = []
    if config.texts is not None:
        items = read_texts(config.texts, config.text_column, config.id_column)
    else:
        titles = (
            read_titles(config.titles, config.id_column, config.text_column)
            if config.titles
            else None
        )
        found = discover_videos(config.videos, titles)
        items = found.items
        if found.duplicates:
            shown = ", ".join(f"{i} ({len(p)} files)" for i, p in found.duplicates[:3])
            notes.append(f"{len(found.duplicates)} duplicate id(s), first file kept: {shown}")
        if found.not_videos:
            notes.append(
                f"{len(found.not_videos)} non-video file(s) skipped, e.g. {found.not_videos[0]}"
            )
        if titles is not None and found.untitled:
            notes.append(f"{len(found.untitled)} video(s) have no title in {config.titles}")
    if config.shard is not None:
        index, count = config.shard
        items = [i for i in items if zlib.crc32(i.item_id.encode()) % count == index]
    if config.limit is not None:
        items = items[: config.limit]
    return items, notes


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
            getattr(backbone, "backend", "transformers"),
            tuple(getattr(backbone, "versions", {}).items()),
        )


def build_manifest(
    config: ExtractConfig,
    facts: BackboneFacts,
    layers: tuple[int, ...],
    recipe: PoolingRecipe,
    engine: dict[str, str] | None = None,
) -> Manifest:
    """The manifest of this run; `engine` adds the cluster engine's name and versions."""
    is_video = facts.kind == "video-llm"
    compute = str(facts.dtype).removeprefix("torch.")
    recipe_facts = {"compute_dtype": compute, "new_tokens": str(config.new_tokens)}
    if is_video:
        recipe_facts["max_pixels"] = str(config.max_pixels)
    return Manifest(
        backbone=facts.model_id,
        backbone_kind=facts.kind,
        layers=layers,
        tokens_per_layer=config.tokens_per_layer,
        hidden_size=facts.hidden_size,
        dtype=config.store_dtype,
        backbone_revision=facts.revision,
        pooling=recipe.describe(),
        prompt=config.prompt if is_video else None,
        frames_per_video=config.frames if is_video else None,
        recipe=recipe_facts,
        provenance={
            "engine": facts.backend,
            **dict(facts.versions),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "device": facts.device,
            "linkedout": __version__,
            **(engine or {}),
        },
    )


# ------------------------------------------------------------------ per item
@dataclass
class PreparedItem:
    """An item packed for the model. The decoded frames are not kept: only what the row
    records of them, so items waiting for the model (or crossing a cluster) stay small."""

    item: CatalogItem
    sha: str
    prepared: Prepared
    frame_indices: tuple[int, ...] | None = None
    frame_seconds: tuple[float, ...] | None = None

    def failed(self, reason: str) -> FailedItem:
        return FailedItem(self.item.item_id, reason, self.sha, self.item.source, self.item.title)


def prepare_item(item: CatalogItem, sha: str, config: ExtractConfig, packer: Packer):
    """Decode and pack one item (in a decode thread, or a Ray task); failures come back as
    values, so a broken file is recorded once and never retried."""
    try:
        if item.source == "text":
            return PreparedItem(item, sha, packer.prepare(ItemInput(text=item.title or "")))
        video = decode_video(item.source, config.frames)
        text = fill_prompt(config.prompt, item.title)
        prepared = packer.prepare(ItemInput(text, video.frames, tuple(video.seconds)))
        return PreparedItem(item, sha, prepared, video.indices, video.seconds)
    except (DecodeError, LinkedOutError) as e:
        return FailedItem(item.item_id, str(e), sha, item.source, item.title)
    except Exception as e:  # a broken file must not stop a catalog-sized run
        log.debug("prepare failed for %s", item.item_id, exc_info=True)
        return FailedItem(
            item.item_id, f"{type(e).__name__}: {e}".splitlines()[0], sha, item.source, item.title
        )


def _content_hash(item: CatalogItem) -> str:
    return sha256_text(item.title or "") if item.source == "text" else sha256_file(item.source)


def _in_order(pool: ThreadPoolExecutor, work: list, fn: Callable, window: int) -> Iterator:
    """`fn(*args)` for each args in `work` on the pool, yielded in order, at most `window` ahead."""
    pending: list[Future] = []
    for args in work:
        pending.append(pool.submit(fn, *args))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


# ------------------------------------------------------------------ the run
def extract(
    config: ExtractConfig,
    on_progress: Callable[[int, int, int], None] | None = None,
    backbone: Backbone | None = None,
) -> ExtractSummary:
    """Run one extraction. `on_progress(done, total, failed)` is called after every item.

    The engines differ only in where `prepare_item` and `run_batch` run (threads and this
    process, or Ray tasks and actors); planning, resuming and writing happen here, once."""
    config.validate()
    started = time.perf_counter()
    items, notes = plan_items(config)
    info = None
    if backbone is None:
        # Check every flag against the config before paying for a weights load.
        info = inspect_model(config.model, "text" if config.texts is not None else "video-llm")
        num_layers, kind = info.num_layers, "video-llm" if info.is_video else "text"
    elif config.engine == "ray":
        raise ValueError("a preloaded backbone runs in this process: use engine='local'")
    else:
        num_layers, kind = backbone.num_layers, backbone.kind
    layers = parse_layers(config.layers, num_layers)
    recipe = PoolingRecipe.make(kind, config.tokens_per_layer, config.new_tokens)
    if config.engine == "ray":
        from linkedout.extract.ray_engine import RayEngine

        engine = RayEngine(config, info, layers, recipe)
    else:
        if backbone is None:
            backbone = load_backbone(
                info,
                config.device,
                config.dtype,
                max_pixels=config.max_pixels,
                backend=config.backend,
            )
        engine = LocalEngine(config, backbone, layers, recipe)
    store = FeatureStore.open_or_create(config.out, engine.manifest, config.storage_options)
    summary = ExtractSummary(uri=store.uri, items=len(items), notes=notes)

    with ThreadPoolExecutor(max(1, config.decode_threads), "linkedout-hash") as pool:
        hashes = dict(zip((i.item_id for i in items), pool.map(_content_hash, items), strict=True))
    todo_ids = set(
        store.pending(
            ((i.item_id, hashes[i.item_id], i.title) for i in items), overwrite=config.overwrite
        )
    )
    todo = [(i, hashes[i.item_id]) for i in items if i.item_id in todo_ids]
    if config.texts is not None:
        # Batches of similar length waste little compute on padding (2x on MicroLens titles).
        todo.sort(key=lambda pair: len(pair[0].title or ""))
    summary.skipped = len(items) - len(todo)
    if on_progress:
        on_progress(0, len(todo), 0)
    with store.writer(batch_size=config.write_batch, overwrite=config.overwrite) as writer:
        for done, row in enumerate(engine.rows(todo), 1):
            writer.add(row)
            if on_progress:
                on_progress(done, len(todo), writer.stats.failed)
    stats = writer.stats
    summary.new, summary.replaced, summary.failed = stats.written, stats.replaced, stats.failed
    summary.skipped += stats.skipped
    if config.shard is None and stats.commits:
        # One writer, finished: merge the batch fragments and free what they superseded.
        store.optimize()
    elif stats.commits:
        summary.notes.append(
            f"once every shard has finished, run `linkedout optimize {store.uri}` to merge "
            "their fragments"
        )
    summary.seconds = time.perf_counter() - started
    return summary


class LocalEngine:
    """This process: decode threads prepare items ahead while the model runs batches."""

    def __init__(
        self,
        config: ExtractConfig,
        backbone: Backbone,
        layers: tuple[int, ...],
        recipe: PoolingRecipe,
    ):
        self.config, self.backbone, self.layers, self.recipe = config, backbone, layers, recipe
        self.manifest = build_manifest(config, BackboneFacts.of(backbone), layers, recipe)

    def rows(self, todo: list[tuple[CatalogItem, str]]) -> Iterator[FeatureRow | FailedItem]:
        config, backbone = self.config, self.backbone
        window = config.batch_size * 2 + config.decode_threads
        work = [(item, sha, config, backbone.packer) for item, sha in todo]
        with ThreadPoolExecutor(max(1, config.decode_threads), "linkedout-decode") as pool:
            for batch in _batched(_in_order(pool, work, prepare_item, window), config.batch_size):
                yield from run_batch(batch, backbone, self.layers, self.recipe, config)


def _batched(stream: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for x in stream:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _captured_states(
    ready: list[PreparedItem],
    backbone: Backbone,
    layers: tuple[int, ...],
    recipe: PoolingRecipe,
    new_tokens: int,
) -> dict[int, torch.Tensor]:
    """transformers: one padded forward of the batch, each tapped layer pooled by a hook."""
    if new_tokens:
        for r in ready:
            r.prepared = backbone.generate(r.prepared, new_tokens)
    inputs, offsets = backbone.collate([r.prepared for r in ready])

    def reduce(hidden: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                recipe.pool(hidden[i, off:], r.prepared.spans)
                for i, (off, r) in enumerate(zip(offsets, ready, strict=True))
            ]
        )

    with LayerCapture(backbone.decoder_layers(), layers, reduce) as capture:
        return capture.run(lambda: backbone.forward(inputs))


def _vllm_states(
    ready: list[PreparedItem],
    backbone,
    layers: tuple[int, ...],
    recipe: PoolingRecipe,
    new_tokens: int,
) -> dict[int, torch.Tensor]:
    """vLLM: the batch's requests in one engine call (generation included), then the same
    pooling of each item's states."""
    results = backbone.states([r.prepared for r in ready], layers, new_tokens)
    for r, (prepared, _) in zip(ready, results, strict=True):
        r.prepared = prepared
    return {
        x: torch.stack(
            [recipe.pool(s[x], r.prepared.spans) for r, (_, s) in zip(ready, results, strict=True)]
        )
        for x in layers
    }


def run_batch(
    batch: list,
    backbone: Backbone,
    layers: tuple[int, ...],
    recipe: PoolingRecipe,
    config: ExtractConfig,
) -> list[FeatureRow | FailedItem]:
    """Forward one batch of prepared items with hooks and pool each item's states into a row;
    items that failed to prepare, or whose forward fails, come back as `FailedItem`."""
    rows: list[FeatureRow | FailedItem] = [x for x in batch if isinstance(x, FailedItem)]
    ready: list[PreparedItem] = [x for x in batch if isinstance(x, PreparedItem)]
    vllm = getattr(backbone, "backend", "transformers") == "vllm"
    if vllm:  # the engine rejects a request longer than it takes: that item fails alone
        reasons = [backbone.refuse(r.prepared, config.new_tokens) for r in ready]
        rows += [r.failed(why) for r, why in zip(ready, reasons, strict=True) if why]
        ready = [r for r, why in zip(ready, reasons, strict=True) if not why]
    if not ready:
        return rows
    start = time.perf_counter()
    states_of = _vllm_states if vllm else _captured_states
    try:
        states = states_of(ready, backbone, layers, recipe, config.new_tokens)
    except (RuntimeError, LinkedOutError) as e:  # e.g. out of memory on one huge video
        reason = f"forward failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        return rows + [r.failed(reason) for r in ready]
    per_item = (time.perf_counter() - start) / len(ready)
    tokens = torch.stack([states[x] for x in layers], dim=1)  # [B, L, T, D]
    tokens = tokens.to(TORCH_DTYPES[config.store_dtype]).cpu()
    for i, r in enumerate(ready):
        rows.append(
            FeatureRow(
                item_id=r.item.item_id,
                tokens=tokens[i].clone(),
                content_sha256=r.sha,
                source=r.item.source,
                title=r.item.title,
                frame_indices=r.frame_indices,
                frame_seconds=r.frame_seconds,
                token_counts=r.prepared.token_counts,
                extract_seconds=per_item,
            )
        )
    return rows
