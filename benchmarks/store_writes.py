"""What a batched commit costs: plain Lance append (LinkedOut before issue 16) against the
merge_insert on item_id every write is now (one row per item under concurrent writers).

Writes --rows small rows in commits of --commit-every into a fresh dataset, and again into one
already holding --base indexed rows (a resumed or growing extraction: the merge joins against
what is stored). Prints seconds per run and per commit; nothing is asserted.

    python benchmarks/store_writes.py [--rows 2000] [--commit-every 16] [--base 0 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lance
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linkedout.storage import FeatureStore, FeatureWriter  # noqa: E402
from linkedout.storage.columns import rows_to_table  # noqa: E402
from linkedout.testing.factories import make_manifest, make_rows  # noqa: E402


def plain_append(store: FeatureStore, table: pa.Table) -> None:
    """The commit LinkedOut made before: no join, so no check against what is stored."""
    lance.write_dataset(table, store.dataset, mode="append")
    store.refresh()


def insert_only(store: FeatureStore, table: pa.Table) -> None:
    """merge_insert without the replace-a-failure condition (which forces a scan, see below)."""
    store.declare_primary_key()
    store.dataset.merge_insert("item_id").when_not_matched_insert_all().execute(table)
    store.refresh()


COMMITS: dict[str, Callable[[FeatureStore, pa.Table], None]] = {
    "append (before)": plain_append,
    "merge_insert, insert only": insert_only,
    "FeatureStore.append (now)": FeatureStore.append,
    "FeatureStore.upsert": FeatureStore.upsert,
}


def fresh_store(folder: Path, name: str, base: int) -> FeatureStore:
    manifest = make_manifest()
    store = FeatureStore.create(folder / f"{name}.lance", manifest)
    if base:
        with FeatureWriter(store, commit_every=base) as w:  # one commit, then the index
            w.extend(make_rows(base, manifest, prefix="base"))
    return store


def time_commits(store: FeatureStore, tables: list[pa.Table], commit) -> float:
    start = time.perf_counter()
    for table in tables:
        commit(store, table)
    return time.perf_counter() - start


def time_writer(store: FeatureStore, rows, commit_every: int) -> tuple[float, float]:
    """The whole FeatureWriter run, and the index update its close adds."""
    start = time.perf_counter()
    writer = FeatureWriter(store, commit_every=commit_every)
    writer.extend(rows)
    writer.flush()
    flushed = time.perf_counter()
    writer.close()
    return time.perf_counter() - start, time.perf_counter() - flushed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--commit-every", type=int, default=16)
    parser.add_argument("--base", type=int, nargs="+", default=[0, 20_000])
    args = parser.parse_args()
    manifest = make_manifest()
    rows = make_rows(args.rows, manifest)
    batches = [rows[i : i + args.commit_every] for i in range(0, len(rows), args.commit_every)]
    tables = [rows_to_table(b, manifest) for b in batches]
    print(
        f"{args.rows} rows of {list(manifest.shape)} {manifest.dtype}, "
        f"{len(tables)} commits of {args.commit_every}; lance {lance.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for base in args.base:
            print(f"\ninto a dataset holding {base} indexed rows:")
            for i, (name, commit) in enumerate(COMMITS.items()):
                store = fresh_store(folder, f"b{base}-{i}", base)
                if commit is FeatureStore.upsert:
                    plain_append(store, pa.concat_tables(tables))  # upsert replaces rows
                seconds = time_commits(store, tables, commit)
                print(
                    f"  {name:28s} {seconds:7.2f} s  {1000 * seconds / len(tables):6.1f} ms/commit"
                )
            store = fresh_store(folder, f"b{base}-writer", base)
            total, index = time_writer(store, rows, args.commit_every)
            print(
                f"  {'FeatureWriter, whole run':28s} {total:7.2f} s  "
                f"(close's index update {index:.2f} s)"
            )


if __name__ == "__main__":
    main()
