"""`optimize`: a dataset made tidy after batched (or older, duplicated) writes."""

from __future__ import annotations

from datetime import timedelta

from linkedout.storage.duplicates import surplus_addresses
from linkedout.storage.status import OptimizeReport
from linkedout.storage.store import FeatureStore


def optimize(store: FeatureStore, prune_old_versions: bool = True) -> OptimizeReport:
    """Delete duplicate rows older versions left (keeping one per item), merge the small
    fragments batched writes leave behind into large ones, and (with `prune_old_versions`)
    delete the files only older versions use.

    Run it when no other process writes or reads an older version of this dataset
    (`linkedout extract` does at the end of an unsharded run): pruning removes files such a
    process may still need. A writer that meets pruned files re-plans on the latest version
    (`FeatureStore.append`); a reader does not.
    """
    before = store.info()
    removed = delete_duplicates(store)
    store.dataset.optimize.compact_files()
    store.refresh()
    store.update_index()
    if prune_old_versions:
        store.dataset.cleanup_old_versions(older_than=timedelta(0))
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
