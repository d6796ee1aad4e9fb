"""Feature-store speed: Lance (through FeatureStore) against a NumPy memmap and a Parquet file.

Same data for all three: N rows of [L, T, D] float16 (default 10k x [8, 16, 128], 320 MiB).
Prints seconds (median of --repeats) and each as a ratio to the memmap. Lance's write is the
extraction path: idempotent batched commits, then `optimize` (compaction, old files freed).
Reads are warm (the
files were just written and sit in the page cache), which is the regime training runs in.

    python benchmarks/storage.py [--rows 10000] [--layers 8] [--tokens 16] [--dim 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import timed, write_json  # noqa: E402
from linkedout.storage import FeatureRow, FeatureStore, FeatureWriter, Manifest  # noqa: E402
from linkedout.storage.maintenance import optimize  # noqa: E402


def dir_bytes(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--take", type=int, default=1000, help="rows per random take")
    parser.add_argument("--batch", type=int, default=256, help="rows per Lance commit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    n, shape = args.rows, (args.layers, args.tokens, args.dim)

    rng = np.random.default_rng(0)
    data = rng.standard_normal((n, *shape), dtype=np.float32).astype(np.float16)
    ids = [f"item{i:06d}" for i in range(n)]
    pick = rng.choice(n, size=args.take, replace=False)
    pick_ids = [ids[i] for i in pick]
    layer = args.layers // 2
    manifest = Manifest(
        backbone="benchmark",
        backbone_kind="video-llm",
        layers=tuple(range(args.layers)),
        tokens_per_layer=args.tokens,
        hidden_size=args.dim,
    )

    results: dict[str, dict[str, float]] = {"memmap": {}, "parquet": {}, "lance": {}}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        # --- NumPy memmap: the floor for raw local reads; no ids, no schema, no object store.
        mm_path = tmp / "features.npy"

        def write_memmap():
            mm = np.lib.format.open_memmap(mm_path, mode="w+", dtype=np.float16, shape=data.shape)
            mm[:] = data
            mm.flush()
            del mm

        results["memmap"]["write"] = timed(write_memmap, 1)
        mm = np.load(mm_path, mmap_mode="r")
        index = {item_id: i for i, item_id in enumerate(ids)}
        results["memmap"]["take"] = timed(
            lambda: torch.from_numpy(mm[[index[i] for i in pick_ids]]), args.repeats
        )
        results["memmap"]["load"] = timed(lambda: torch.from_numpy(np.array(mm)), args.repeats)
        results["memmap"]["one layer"] = timed(
            lambda: torch.from_numpy(np.ascontiguousarray(mm[:, layer])), args.repeats
        )
        sizes["memmap"] = dir_bytes(mm_path)

        # --- Parquet: one fixed_size_list column, row groups of 1000.
        pq_path = tmp / "features.parquet"
        flat = data.reshape(n, -1)

        def write_parquet():
            column = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
            pq.write_table(
                pa.table({"item_id": ids, "tokens": column}), pq_path, row_group_size=1000
            )

        def parquet_tensor(table: pa.Table) -> torch.Tensor:
            values = table.column("tokens").combine_chunks().flatten().to_numpy()
            return torch.from_numpy(values.reshape(-1, *shape).copy())

        results["parquet"]["write"] = timed(write_parquet, 1)
        pq_ds = pads.dataset(pq_path)
        pq_ids = pq.read_table(pq_path, columns=["item_id"]).column(0).to_pylist()
        pq_index = {item_id: i for i, item_id in enumerate(pq_ids)}
        results["parquet"]["take"] = timed(
            lambda: parquet_tensor(
                pq_ds.take(pa.array([pq_index[i] for i in pick_ids]), columns=["tokens"])
            ),
            args.repeats,
        )
        results["parquet"]["load"] = timed(
            lambda: parquet_tensor(pq.read_table(pq_path, columns=["tokens"])), args.repeats
        )
        # Parquet cannot read part of a list column: one layer costs a full read plus a slice.
        results["parquet"]["one layer"] = timed(
            lambda: parquet_tensor(pq.read_table(pq_path, columns=["tokens"]))[:, layer].clone(),
            args.repeats,
        )
        sizes["parquet"] = dir_bytes(pq_path)

        # --- Lance through LinkedOut's FeatureStore (ids, manifest, idempotent batched commits).
        lance_path = tmp / "features.lance"
        tensors = torch.from_numpy(data)

        def write_lance():
            store = FeatureStore.create(lance_path, manifest)
            with FeatureWriter(store, commit_every=args.batch) as writer:
                for i, item_id in enumerate(ids):
                    writer.add(FeatureRow(item_id, tensors[i], content_sha256=item_id))
            optimize(store)  # as `linkedout optimize` leaves it: one fragment, old files freed

        results["lance"]["write"] = timed(write_lance, 1)
        store = FeatureStore.open(lance_path)
        store.read_tokens(pick_ids[:1])  # build the id -> row map once, as a training run does
        results["lance"]["take"] = timed(lambda: store.read_tokens(pick_ids), args.repeats)
        results["lance"]["load"] = timed(lambda: store.load(), args.repeats)
        results["lance"]["one layer"] = timed(lambda: store.load(layers=[layer]), args.repeats)
        sizes["lance"] = dir_bytes(lance_path)

        # Same bytes out of every format.
        got = store.read_tokens(pick_ids[:5])
        assert torch.equal(got, torch.from_numpy(data[pick[:5]])), "Lance read back other values"

    mib = data.nbytes / 2**20
    print(
        f"feature store benchmark: {n:,} rows of {list(shape)} float16 = {mib:.0f} MiB; "
        f"take = {args.take} random ids; one layer = layer {layer} of {args.layers}; "
        f"Lance commits every {args.batch} rows; median of {args.repeats} warm reads"
    )
    ops = ["write", "take", "load", "one layer"]
    header = f"{'format':<9}" + "".join(f"{op:>22}" for op in ops) + f"{'on disk':>12}"
    print(header)
    print("-" * len(header))
    for fmt, row in results.items():
        cells = "".join(
            f"{row[op]:>9.3f}s ({row[op] / results['memmap'][op]:>5.1f}x)" + " " * 4 for op in ops
        )
        print(f"{fmt:<9}{cells}{sizes[fmt] / 2**20:>8.0f} MiB")
    print("(x) = time relative to the NumPy memmap; lower is faster")
    write_json(
        args.json,
        {
            "rows": n,
            "shape": list(shape),
            "dtype": "float16",
            "take": args.take,
            "seconds": results,
            "bytes_on_disk": sizes,
        },
    )


if __name__ == "__main__":
    main()
