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
    Prepared,
    inspect_model,
    load_backbone,
)
from linkedout.extract.capture import LayerCapture
from linkedout.extract.decode import DecodedVideo, DecodeError, decode_video
from linkedout.extract.defaults import DEFAULT_PROMPT, DEFAULT_VIDEO_MODEL
from linkedout.extract.discover import CatalogItem, discover_videos, read_texts, read_titles
from linkedout.extract.pool import PoolingRecipe
from linkedout.storage import FailedItem, FeatureRow, FeatureStore, Manifest
from linkedout.storage.columns import TORCH_DTYPES
from linkedout.storage.rows import sha256_file, sha256_text

log = logging.getLogger(__name__)


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
    decode_workers: int = 2
    write_batch: int = 16
    storage_options: dict[str, str] = field(default_factory=dict)

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


def build_manifest(
    config: ExtractConfig, backbone: Backbone, layers: tuple[int, ...], recipe: PoolingRecipe
) -> Manifest:
    is_video = backbone.kind == "video-llm"
    compute = str(backbone.dtype).removeprefix("torch.")
    recipe_facts = {"compute_dtype": compute, "new_tokens": str(config.new_tokens)}
    if is_video:
        recipe_facts["max_pixels"] = str(getattr(backbone, "max_pixels", config.max_pixels))
    return Manifest(
        backbone=backbone.model_id,
        backbone_kind=backbone.kind,
        layers=layers,
        tokens_per_layer=config.tokens_per_layer,
        hidden_size=backbone.hidden_size,
        dtype=config.store_dtype,
        backbone_revision=backbone.revision,
        pooling=recipe.describe(),
        prompt=config.prompt if is_video else None,
        frames_per_video=config.frames if is_video else None,
        recipe=recipe_facts,
        provenance={
            "engine": "transformers",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "device": str(backbone.device),
            "linkedout": __version__,
        },
    )


# ------------------------------------------------------------------ per item
@dataclass
class _Ready:
    item: CatalogItem
    sha: str
    prepared: Prepared
    video: DecodedVideo | None


def _prepare(item: CatalogItem, sha: str, config: ExtractConfig, backbone: Backbone):
    """Decode and pack one item (runs in a worker thread); failures come back as values."""
    try:
        if item.source == "text":
            return _Ready(item, sha, backbone.prepare(ItemInput(text=item.title or "")), None)
        video = decode_video(item.source, config.frames)
        text = fill_prompt(config.prompt, item.title)
        prepared = backbone.prepare(ItemInput(text, video.frames, tuple(video.seconds)))
        return _Ready(item, sha, prepared, video)
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
    """Run one extraction. `on_progress(done, total, failed)` is called after every item."""
    config.validate()
    started = time.perf_counter()
    items, notes = plan_items(config)
    if backbone is None:
        # Check every flag against the config before paying for a weights load.
        info = inspect_model(config.model, "text" if config.texts is not None else "video-llm")
        layers = parse_layers(config.layers, info.num_layers)
        kind = "video-llm" if info.is_video else "text"
        recipe = PoolingRecipe.make(kind, config.tokens_per_layer, config.new_tokens)
        backbone = load_backbone(info, config.device, config.dtype, max_pixels=config.max_pixels)
    else:
        layers = parse_layers(config.layers, backbone.num_layers)
        recipe = PoolingRecipe.make(backbone.kind, config.tokens_per_layer, config.new_tokens)
    manifest = build_manifest(config, backbone, layers, recipe)
    store = FeatureStore.open_or_create(config.out, manifest, config.storage_options)
    summary = ExtractSummary(uri=store.uri, items=len(items), notes=notes)

    with ThreadPoolExecutor(max(1, config.decode_workers), "linkedout-decode") as pool:
        hashes = dict(zip((i.item_id for i in items), pool.map(_content_hash, items), strict=True))
        todo_ids = set(
            store.pending(
                ((i.item_id, hashes[i.item_id], i.title) for i in items), overwrite=config.overwrite
            )
        )
        todo = [i for i in items if i.item_id in todo_ids]
        if config.texts is not None:
            # Batches of similar length waste little compute on padding (2x on MicroLens titles).
            todo.sort(key=lambda i: len(i.title or ""))
        summary.skipped = len(items) - len(todo)
        if on_progress:
            on_progress(0, len(todo), 0)
        window = config.batch_size * 2 + config.decode_workers
        ready = _in_order(
            pool, [(i, hashes[i.item_id], config, backbone) for i in todo], _prepare, window
        )
        with store.writer(batch_size=config.write_batch, overwrite=config.overwrite) as writer:
            done = 0
            for batch in _batched(ready, config.batch_size):
                for row in _run_batch(batch, backbone, layers, recipe, config):
                    writer.add(row)
                done += len(batch)
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


def _batched(stream: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for x in stream:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_batch(
    batch: list,
    backbone: Backbone,
    layers: tuple[int, ...],
    recipe: PoolingRecipe,
    config: ExtractConfig,
) -> list[FeatureRow | FailedItem]:
    rows: list[FeatureRow | FailedItem] = [x for x in batch if isinstance(x, FailedItem)]
    ready: list[_Ready] = [x for x in batch if isinstance(x, _Ready)]
    if not ready:
        return rows
    start = time.perf_counter()
    try:
        if config.new_tokens:
            for r in ready:
                r.prepared = backbone.generate(r.prepared, config.new_tokens)
        inputs, offsets = backbone.collate([r.prepared for r in ready])

        def reduce(hidden: torch.Tensor) -> torch.Tensor:
            return torch.stack(
                [
                    recipe.pool(hidden[i, off:], r.prepared.spans)
                    for i, (off, r) in enumerate(zip(offsets, ready, strict=True))
                ]
            )

        with LayerCapture(backbone.decoder_layers(), layers, reduce) as capture:
            states = capture.run(lambda: backbone.forward(inputs))
    except (RuntimeError, LinkedOutError) as e:  # e.g. out of memory on one huge video
        reason = f"forward failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        return rows + [
            FailedItem(r.item.item_id, reason, r.sha, r.item.source, r.item.title) for r in ready
        ]
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
                frame_indices=r.video.indices if r.video else None,
                frame_seconds=r.video.seconds if r.video else None,
                token_counts=r.prepared.token_counts,
                extract_seconds=per_item,
            )
        )
    return rows
