"""discover -> decode and pack (background threads) -> forward with hooks -> pool -> store.

Resumable by construction: items already stored with the same content hash and title are never
decoded again, rows are committed in batches (each an atomic Lance commit), and Ctrl-C commits
what is done before it stops.

This module plans, resumes and writes, once per run; an engine (`engines/local.py` or
`engines/ray.py`) runs the per-item steps of `steps.py` under one `ExtractPlan`.
"""

from __future__ import annotations

import errno
import os
import re
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from linkedout.errors import LinkedOutError, SettingError, first_line
from linkedout.extract.adding_queries import add_queries, stored_items_to_add, stored_queries
from linkedout.extract.backbones import Backbone, inspect_model, load_backbone, writes_timestamps
from linkedout.extract.backbones.generic_vlm import GenericVLMPacker
from linkedout.extract.config import ExtractConfig
from linkedout.extract.decode import unreadable_reason
from linkedout.extract.discover import (
    CatalogItem,
    discover_videos,
    read_texts,
    read_title_table,
)
from linkedout.extract.engines import ray as ray_engine
from linkedout.extract.engines.base import Engine
from linkedout.extract.engines.local import LocalEngine
from linkedout.extract.pool import PoolingRecipe
from linkedout.extract.queries import Query, check_fields, fill
from linkedout.extract.steps import (
    BackboneFacts,
    ExtractPlan,
    check_frames_fit,
    check_tokens_fit,
    parse_layers,
)
from linkedout.extract.summary import ExtractSummary
from linkedout.storage import FailedItem, FeatureStore, FeatureWriter
from linkedout.storage.maintenance import END_OF_RUN_GRACE, optimize
from linkedout.storage.rows import sha256_file, sha256_text


# ------------------------------------------------------------------ planning
def plan_items(config: ExtractConfig) -> tuple[list[CatalogItem], list[str], list[str] | None]:
    """The items this process extracts, notes for the user (duplicates, skipped files), and
    the titles table's other columns that queries may name (None: no table)."""
    notes: list[str] = []
    columns = {"id_column": config.id_column, "text_column": config.text_column}
    others = None
    if config.texts is not None:
        items = read_texts(config.texts, **columns)
    else:
        titles, fields = None, None
        if config.titles:
            table = read_title_table(config.titles, **columns)
            titles, others, fields = table.titles, table.columns, table.fields
        check_fields(config.named_queries(), others, str(config.titles))
        found = discover_videos(config.videos, titles, fields)
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
    if config.videos is not None and items:
        untitled = "" if config.titles else " (no `titles` table given)"
        for query in config.named_queries():
            if any(fill(query.text, i.title, i.fields) for i in items):
                continue
            why = (
                "is empty for every video: each of its lines holds {title}, and no video has a "
                f"title{untitled}: add a line without {{title}}"
            )
            if not (config.query or config.queries):
                raise SettingError("prompt", config.prompt, why)
            raise LinkedOutError(f"query {query.name!r} {why}")
    return items, notes, others


def make_engine(
    config: ExtractConfig,
    backbone: Backbone | None = None,
    queries: tuple[Query, ...] | None = None,
) -> Engine:
    """The engine of `config.engine`, holding the run's one `ExtractPlan`; `queries`: what
    every video is asked (default: the run's own, `config.named_queries()`)."""
    info, settings = None, None
    want = "text" if config.texts is not None else "video-llm"
    if backbone is None:
        # Check every setting against the checkpoint's config before paying for a weights load.
        info = inspect_model(config.model, want)
        num_layers, kind = info.num_layers, info.kind
        if info.generic and config.max_pixels is not None:
            raise SettingError(
                "max_pixels",
                config.max_pixels,
                f"{config.model} ({info.model_type}) goes through the generic path, where its "
                "own processor sizes the frames: drop `max_pixels` (or set the size in the "
                "checkpoint's processor config)",
            )
        if info.is_video and not info.generic:
            from linkedout.extract.backbones.qwen_vl import pack_settings

            settings = pack_settings(info.path, info.model_type, config.max_pixels)
            check_frames_fit(config.frames, settings, info.max_positions, config.model)
    elif config.engine == "ray":
        raise ValueError("a preloaded backbone runs in this process: use engine='local'")
    else:
        num_layers, kind = backbone.num_layers, backbone.kind
        if kind != want:
            given = "`texts`" if config.texts is not None else "`videos`"
            raise SettingError(
                "model", backbone.model_id, f"is a {kind} backbone, which cannot read {given}"
            )
        if kind == "video-llm":
            settings = backbone.packer.settings
            check_frames_fit(config.frames, settings, backbone.max_positions, backbone.model_id)
    layers = parse_layers(config.layers, num_layers)
    model_type = info.model_type if info is not None else backbone.family
    generic = info.generic if info is not None else isinstance(backbone.packer, GenericVLMPacker)
    if generic and kind == "video-llm" and config.query_position == "before":
        raise SettingError(
            "query_position",
            "before",
            f"{config.model} goes through the generic path, whose processor writes the chat "
            "turn with the video first: use `query_position` after",
        )
    recipe = PoolingRecipe.make(
        kind,
        config.tokens_per_layer,
        config.new_tokens,
        timestamps=writes_timestamps(model_type),
        video_sequence=generic and kind == "video-llm",
    )
    check_tokens_fit(recipe, config.frames, settings, config.model)
    if config.engine == "ray":
        facts = ray_engine.cluster_facts(config, info)
        plan = ExtractPlan.make(config, facts, layers, recipe, queries)
        return ray_engine.RayEngine(plan, info, config.dtype, config.ray)
    if backbone is None:
        backbone = load_backbone(
            info, config.device, config.dtype, max_pixels=config.max_pixels, backend=config.backend
        )
    plan = ExtractPlan.make(config, BackboneFacts.of(backbone), layers, recipe, queries)
    return LocalEngine(plan, backbone, config.decode_threads)


def _content_hash(item: CatalogItem) -> str:
    if item.source == "text":
        return sha256_text(item.title or "")
    # A dangling link or a FIFO is hashed by its reason, never opened: its failure is stored
    # (by `prepare_item`, which finds the same reason) and the run goes on.
    why = unreadable_reason(item.source)
    return sha256_text(f"unreadable: {why}") if why else sha256_file(item.source)


def _hashes(config: ExtractConfig, items: list[CatalogItem]) -> dict[str, str]:
    """Item id -> content hash, hashed on the decode threads."""
    with ThreadPoolExecutor(max(1, config.decode_threads), "linkedout-hash") as pool:
        return dict(zip((i.item_id for i in items), pool.map(_content_hash, items), strict=True))


def _todo(
    config: ExtractConfig, store: FeatureStore, items: list[CatalogItem], hashes: dict[str, str]
) -> tuple[list[tuple[CatalogItem, str]], set[str]]:
    """(item, content hash) of each item the store does not hold as it is now (known failures
    only with --retry-failed), and the ids of the known failures."""
    if not items:
        return [], set()
    pending, known = store.triage(
        ((i.item_id, hashes[i.item_id], i.title) for i in items),
        overwrite=config.overwrite,
        retry_failed=config.retry_failed,
    )
    todo_ids = set(pending)
    todo = [(i, hashes[i.item_id]) for i in items if i.item_id in todo_ids]
    if config.texts is not None:
        # Batches of similar length waste little compute on padding (2x on MicroLens titles).
        todo.sort(key=lambda pair: len(pair[0].title or ""))
    return todo, set(known)


# ------------------------------------------------------------------ the run
@contextmanager
def _writing(uri: str):
    """Turns an OS error while writing the dataset (read-only folder, full disk, quota) into
    one line naming the dataset and the reason; Lance commits are atomic, so every batch
    committed before it stays whole and a re-run resumes from there."""
    try:
        yield
    except OSError as e:
        code = _os_code(e)
        fix = "free some space" if code in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
        raise LinkedOutError(
            f"cannot write the dataset {uri}: {_os_reason(e, code)}; the batches "
            f"committed before this are kept: {fix} (or pass another --out) and re-run to resume"
        ) from e


def _os_code(error: OSError) -> int | None:
    """The errno of an OS error; Lance raises plain OSErrors quoting it as `(os error N)`."""
    if error.errno is not None:
        return error.errno
    found = re.search(r"\(os error (\d+)\)", str(error))
    return int(found.group(1)) if found else None


def _os_reason(error: OSError, code: int | None) -> str:
    if code is not None:
        return f"{error.strerror or os.strerror(code)} ({errno.errorcode.get(code, code)})"
    return first_line(error)


def extract(
    config: ExtractConfig,
    on_progress: Callable[[int, int, int], None] | None = None,
    backbone: Backbone | None = None,
) -> ExtractSummary:
    """Run one extraction. `on_progress(done, total, failed)` is called after every item.

    The engines differ only in where `prepare_item` and `run_batch` run (threads and this
    process, or Ray tasks and actors); planning, resuming and writing happen here, once."""
    started = time.perf_counter()
    items, notes, columns = plan_items(config)
    queries = stored_queries(config)
    engine = make_engine(config, backbone, queries)
    with _writing(config.out):
        store = FeatureStore.open_or_create(config.out, engine.manifest, config.storage_options)
    if engine.plan.is_video:  # every new row gets every query the dataset holds
        asked = tuple(Query(n, t) for n, t in store.manifest.named_queries())
        if asked != engine.plan.queries:  # another run added queries since `stored_queries`
            raise LinkedOutError(
                f"{store.uri} got other queries while this run started: run it again"
            )
        check_fields(list(asked), columns, str(config.titles))
    summary = ExtractSummary(uri=store.uri, items=len(items), notes=notes)
    first_version = store.version
    hashes = _hashes(config, items)
    todo, known = _todo(config, store, items, hashes)
    adding = stored_items_to_add(store, items, hashes, {i.item_id for i, _ in todo})
    summary.known_failures = len(known)
    summary.skipped = len(items) - len(todo) - (0 if config.retry_failed else len(known))
    summary.attempted = len(todo)
    total = len(todo) + len(adding[1])
    if on_progress:
        on_progress(0, total, 0)
    if adding[0]:
        with _writing(store.uri):
            add_queries(config, store, engine, adding, on_progress, total, summary)
    writer = FeatureWriter(store, config.commit_every, overwrite=config.overwrite)
    with _writing(store.uri):
        try:
            for done, row in enumerate(engine.rows(todo), len(adding[1]) + 1):
                if isinstance(row, FailedItem) and row.item_id in known:
                    summary.failed_again += 1  # retried (--retry-failed), failed as before
                elif isinstance(row, FailedItem):
                    summary.failure_reasons[row.error] += 1
                writer.add(row)
                if on_progress:
                    on_progress(done, total, writer.stats.failed)
        except OSError:
            raise  # the store cannot be written: committing or indexing again would fail too
        except BaseException:
            writer.close()  # keep the work done before an error or Ctrl-C
            raise
        writer.close()
    stats = writer.stats
    summary.new, summary.replaced, summary.failed = stats.written, stats.replaced, stats.failed
    summary.skipped += stats.skipped
    if config.shard is None and stats.commits and store.only_writer_since(first_version):
        # One writer, finished: merge the batch fragments and free what they superseded.
        with _writing(store.uri):
            optimize(store, keep_newer_than=END_OF_RUN_GRACE)
    elif config.shard is None and stats.commits:
        # Another process wrote meanwhile (the same command started twice): pruning could
        # delete files its next commit still reads.
        summary.notes.append(
            f"another process wrote to {store.uri} during this run; once it has finished, run "
            f"`linkedout optimize {store.uri}` to merge the fragments"
        )
    elif stats.commits:
        summary.notes.append(
            f"once every shard has finished, run `linkedout optimize {store.uri}` to merge "
            "their fragments"
        )
    summary.seconds = time.perf_counter() - started
    return summary
