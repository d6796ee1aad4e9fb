"""`linkedout catalog add` and `remove`: new items ranked, old ones withdrawn, without retraining;
`catalog publish`: the catalog copied to an object store that several servers share.

Each change is one Lance commit to the run's catalog.lance (a new version): an interrupted add
commits nothing and is simply run again. Version 1, what training wrote, is never rewritten, so
evaluation keeps ranking the split's items (catalog.py). A running `linkedout serve` swaps in
each new version on its own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

from linkedout.errors import LinkedOutError
from linkedout.recommend.catalog_additions import CatalogChange, add_to_catalog, open_additions
from linkedout.recommend.catalog_dataset import CatalogDataset
from linkedout.recommend.catalog_location import write_location
from linkedout.recommend.run import RunDir
from linkedout.recommend.run_lock import RunLock
from linkedout.storage.share import check_destination
from linkedout.storage.uri import describe_storage_error, filesystem, normalize


def add_items(
    run_path: str | Path,
    features: str,
    storage_options: dict[str, str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> CatalogChange:
    """Embed every item of `features` that the catalog lacks with the run's trained compressor
    and experts, and append them to catalog.lance in one commit."""
    with _editing(run_path, "catalog add") as run:
        return _add_items(run, features, storage_options, on_progress)


def remove_items(run_path: str | Path, item_ids: list[str]) -> CatalogChange:
    """Delete these items from the catalog in one commit; ids not in it are counted, not fatal."""
    with _editing(run_path, "catalog remove") as run:
        return _remove_items(run, item_ids)


def publish_catalog(
    run_path: str | Path, uri: str, storage_options: dict[str, str] | None = None
) -> CatalogDataset:
    """Copy the run's catalog, every version, to `uri` (a new, empty object-store prefix or
    folder), check the copy, then point the run at it (catalog_location.py). Returns the
    published catalog, opened at its newest version."""
    options = dict(storage_options or {})
    with _editing(run_path, "catalog publish") as run:
        config = run.config()
        source = run.catalog_location
        source_uri, uri = normalize(source.uri), normalize(uri)
        if uri == source_uri:
            raise LinkedOutError(f"{run.path}'s catalog is already at {uri}: nothing to publish")
        original = run.catalog_dataset()
        check_destination(uri, options, "publish")
        src_fs, src_root = filesystem(source_uri, source.storage_options)
        dst_fs, dst_root = filesystem(uri, options)
        try:
            # Files as they are, every version: version 1 must stay what training wrote
            # (evaluation reads it, its rows are model indices), so no rewrite will do.
            pafs.copy_files(
                src_root, dst_root, source_filesystem=src_fs, destination_filesystem=dst_fs
            )
        except OSError as e:
            raise LinkedOutError(
                f"cannot publish to {uri}: {describe_storage_error(options, e)}; the run still "
                "reads its catalog where it was (delete what was copied there, then try again)"
            ) from None
        copy = CatalogDataset(uri, None, options)
        if (copy.version, copy.num_rows, copy.run_id) != (
            original.version,
            original.num_rows,
            config.run_id,
        ):
            raise LinkedOutError(
                f"the copy at {uri} does not match {source.uri} (version {copy.version} against "
                f"{original.version}, {copy.num_rows} rows against {original.num_rows}): the run "
                "still reads its catalog where it was; delete the copy and publish again"
            )
        write_location(run.path, uri, options)
        return copy


def _add_items(
    run: RunDir,
    features: str,
    storage_options: dict[str, str] | None,
    on_progress: Callable[[int, int], None] | None,
) -> CatalogChange:
    config = run.config()
    model = run.model(config.run_id)
    if not model.content:
        raise LinkedOutError(
            f"{run.path} ranks by item IDs alone (--fusion none): an item it was not trained on "
            "has no vector to rank it by; train a run with content to add items"
        )
    store = open_additions(features, config.manifest, config.layers, storage_options)
    return add_to_catalog(run.catalog_dataset(), model, config, store, on_progress)


def _remove_items(run: RunDir, item_ids: list[str]) -> CatalogChange:
    catalog = run.catalog_dataset()
    present = catalog.live_ids()
    gone = sorted(set(item_ids) & present)
    if not gone:
        return CatalogChange(already=len(set(item_ids)), version=catalog.version, size=len(present))
    return CatalogChange(
        removed=len(gone),
        already=len(set(item_ids)) - len(gone),
        version=catalog.delete(gone),
        size=len(present) - len(gone),
    )


@contextmanager
def _editing(run_path: str | Path, command: str) -> Iterator[RunDir]:
    """The run, locked for one catalog change: not beside training (which rewrites
    catalog.lance from scratch when it finishes, so a change now would be lost) nor beside
    another change (two adds would both append the same new items)."""
    run = RunDir(run_path)
    run.require_checkpoint()
    lock = RunLock(run.lock_file, command)
    holder = lock.holder()
    if (
        holder is not None
        and holder.get("command", "train") == "train"
        and lock.holder_alive(holder)
    ):
        raise LinkedOutError(
            f"{run.path} is being trained ({lock.describe(holder)}): change its catalog once "
            "training has finished"
        )
    note = lock.acquire()  # another change holding it is one line naming it
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)
    try:
        yield run
    finally:
        lock.release()
