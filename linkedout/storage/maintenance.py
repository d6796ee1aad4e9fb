"""`optimize`: a dataset made tidy after batched (or older, duplicated) writes."""

from __future__ import annotations

from datetime import timedelta

from linkedout.storage.duplicates import surplus_addresses
from linkedout.storage.status import OptimizeReport
from linkedout.storage.store import FeatureStore

END_OF_RUN_GRACE = timedelta(hours=1)
"""What the optimize at the end of an unsharded `extract` keeps: the versions of the last hour.
A concurrent writer's commit (the same command started twice) finds its clashes with the
other's inserts in the transactions of the versions after its own read; pruning those made
a stale insert commit unseen, storing an item twice (issue 35). Files they alone use are
freed by a later run or `linkedout optimize`."""


def optimize(
    store: FeatureStore,
    prune_old_versions: bool = True,
    keep_newer_than: timedelta = timedelta(0),
) -> OptimizeReport:
    """Delete duplicate rows older versions left (keeping one per item), merge the small
    fragments batched writes leave behind into large ones, and (with `prune_old_versions`)
    delete the files only versions older than `keep_newer_than` use, except tagged versions.

    Prune everything (the default) only when no other process writes or reads an older
    version of this dataset: pruning removes files and transaction history such a process may
    still need. `linkedout extract` ends an unsharded run with `END_OF_RUN_GRACE`. A writer
    that meets pruned files re-plans on the latest version (`FeatureStore.append`); a reader
    does not.
    """
    before = store.info()
    removed = delete_duplicates(store)
    store.dataset.optimize.compact_files()
    store.refresh()
    store.update_index()
    if prune_old_versions:
        # Tagged versions stay (a run may pin one: `linkedout tag`); the rest go.
        store.dataset.cleanup_old_versions(
            older_than=keep_newer_than, error_if_tagged_old_versions=False
        )
        store.refresh()
    after = store.info()
    return OptimizeReport(
        before.fragments, after.fragments, before.size_bytes, after.size_bytes, removed
    )


def delete_duplicates(store: FeatureStore) -> int:
    """Delete every row but the kept one of each item id, in one commit; rows removed."""
    if not store.duplicate_rows():
        return 0
    addresses = surplus_addresses(store.dataset)
    # Row addresses name exact rows and are never reused, so a retried delete cannot hit
    # a row committed meanwhile: each item keeps its chosen row or a newer one.
    store.dataset.delete(f"_rowaddr IN ({','.join(map(str, addresses.tolist()))})")
    store.refresh()
    return len(addresses)
