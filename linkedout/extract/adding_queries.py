"""Queries added to videos already stored: only the new queries run, for the stored items whose
video is here unchanged, and their slots are committed as new columns without rewriting any
stored column (storage/query_columns.py). Lance fills the columns a batch of stored rows at a
time; a local checkpoint keeps the batches done, so an interrupted run resumes there."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from linkedout.errors import LinkedOutError, SettingError
from linkedout.extract.config import ExtractConfig
from linkedout.extract.defaults import DEFAULT_PROMPT
from linkedout.extract.discover import CatalogItem
from linkedout.extract.engines.base import Engine
from linkedout.extract.queries import Query
from linkedout.extract.summary import ExtractSummary
from linkedout.storage import FailedItem, FeatureStore
from linkedout.storage.columns import digest_column, query_column, tensor_columns
from linkedout.storage.location import exists


def stored_queries(config: ExtractConfig) -> tuple[Query, ...] | None:
    """The queries every video of this run is asked, when `--out` already stores videos: the
    stored ones in their order (the first stays in `tokens`), then the run's new ones; None
    when nothing is stored there (the run's own queries).

    Checked before any weights load: a query the dataset stores with another text or position
    is refused, and so is a sharded run that would add queries to its stored videos (they
    commit as one set of new columns, by one process; shards would each try). A run that asks
    no query of its own of a dataset of named queries asks the stored ones (rather than adding
    the default prompt as a query)."""
    if config.videos is None or not exists(config.out, config.storage_options):
        return None
    stored = FeatureStore.open(config.out, config.storage_options)
    manifest = stored.manifest
    if manifest.backbone_kind != "video-llm":
        return None  # `open_or_create` names the differences
    have = tuple(Query(n, t) for n, t in manifest.named_queries())
    asks_nothing = not config.query and config.queries is None and config.prompt == DEFAULT_PROMPT
    if asks_nothing and manifest.queries:
        return have
    queries = config.named_queries()
    conflicts = manifest.query_conflicts([(q.name, q.text) for q in queries])
    if conflicts:
        name, text, new = conflicts[0]
        raise LinkedOutError(
            f"{stored.uri} stores query {name!r} as {text!r}, not {new!r}: a new query needs a "
            "name of its own"
        )
    if manifest.query_position != config.query_position:
        raise SettingError(
            "query_position",
            config.query_position,
            f"{stored.uri} holds queries placed {manifest.query_position} the video: repeat "
            "it, or write to a new --out",
        )
    known = {q.name for q in have}
    added = tuple(q for q in queries if q.name not in known)
    if config.shard is not None and (added or stored.missing_queries()):
        raise LinkedOutError(
            f"this run adds queries ({', '.join(q.name for q in added) or 'unfinished ones'}) "
            f"to the videos stored in {config.out}: that runs in one process; drop --shard for "
            "it (then shard the new videos as before)"
        )
    return have + added


def stored_items_to_add(
    store: FeatureStore, items: list[CatalogItem], hashes: dict[str, str], todo: set[str]
) -> tuple[list[str], dict[str, tuple[CatalogItem, str]]]:
    """Queries the dataset names but holds no column for yet, and the stored items they are
    run for: those whose video is here, unchanged (the same content hash), and not about to
    be extracted whole."""
    names = store.missing_queries()
    if not names or not len(store):
        return names, {}
    stored = store.status()
    return names, {
        i.item_id: (i, hashes[i.item_id])
        for i in items
        if i.item_id not in todo
        and i.item_id in stored
        and stored[i.item_id].error is None
        and stored[i.item_id].content_sha256 == hashes[i.item_id]
    }


def add_queries(
    config: ExtractConfig,
    store: FeatureStore,
    engine: Engine,
    adding: tuple[list[str], dict[str, tuple[CatalogItem, str]]],
    on_progress: Callable[[int, int, int], None] | None,
    total: int,
    summary: ExtractSummary,
) -> None:
    """Run only the new queries for the stored items and commit them as new columns, none of
    the stored columns rewritten. Lance fills the columns a batch of stored rows at a time; a
    local checkpoint keeps the batches done, so an interrupted run resumes there."""
    names, todo = adding
    plan = replace(
        engine.plan,
        queries=tuple(q for q in engine.plan.queries if q.name in names),
        with_tokens=False,
    )
    done = 0
    stop = threading.Event()

    def fill_columns(batch: pa.RecordBatch) -> pa.RecordBatch:
        nonlocal done
        ids = batch.column("item_id").to_pylist()
        rows = {}
        for row in engine.rows([todo[i] for i in ids if i in todo], plan):
            if stop.is_set():
                raise _Stopped  # Lance commits nothing; the checkpoint keeps the batches done
            done += 1
            if isinstance(row, FailedItem):
                summary.failure_reasons[f"query not added: {row.error}"] += 1
            elif row.finite():
                rows[row.item_id] = row
            else:
                summary.failure_reasons["query not added: its states hold NaN or inf"] += 1
            if on_progress:
                on_progress(done, total, 0)
        columns, labels = [], []
        for name in names:
            column = query_column(name)
            columns += tensor_columns(
                [rows[i].queries[name] if i in rows else None for i in ids],
                store.manifest,
                store.manifest.query_slots,
            )
            labels += [column, digest_column(column)]
        return pa.RecordBatch.from_arrays(columns, names=labels)

    checkpoint = _checkpoint_file(store, names)
    if checkpoint.exists():
        summary.notes.append(f"resumed adding {', '.join(names)} where an interrupted run left it")
    # Lance runs `fill` while this thread waits inside it, where Ctrl-C would not be seen until
    # the end; run it aside, so a Ctrl-C here stops it at the next item.
    with ThreadPoolExecutor(1, "linkedout-add-queries") as aside:
        adding = aside.submit(
            store.add_query_columns, names, fill_columns, config.commit_every, str(checkpoint)
        )
        try:
            while not wait([adding], timeout=0.2).done:
                pass
        except KeyboardInterrupt:
            stop.set()
            wait([adding])
            raise
        adding.result()
    store.refresh()
    checkpoint.unlink(missing_ok=True)
    lacking = {name: store.query_nulls(name) for name in names}
    summary.queries_added = list(names)
    summary.given_queries = len(store) - max(lacking.values())
    for name, count in lacking.items():
        if count:
            summary.notes.append(
                f"{count} stored item(s) got no {name!r} slots (their video is not under "
                "--videos as it was extracted): extract them again to add it"
            )


class _Stopped(Exception):
    """Raised inside Lance's column fill to abandon it on Ctrl-C."""


def _checkpoint_file(store: FeatureStore, names: list[str]) -> Path:
    """Where an interrupted `add_queries` keeps its finished batches: a local file named by
    the dataset, its version and the queries, so only the same run resumes from it."""
    key = hashlib.sha256(f"{store.uri}|{store.version}|{','.join(names)}".encode()).hexdigest()
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "linkedout"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"add-queries-{key[:16]}.sqlite"
