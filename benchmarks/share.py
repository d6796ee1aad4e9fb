"""Sharing a feature dataset at team scale: what a subset saves, what merge and verify cost, and
what training's input read costs from an S3-compatible server against local disk.

A synthetic dataset of N rows of [layers, tokens, dim] float16 (default: the Qwen3-VL-2B shape
[8, 16, 896], 229 KB a row) is written through `FeatureWriter` (digests included), then:
- `export` of the whole dataset and of 1 depth of 8 (bytes written, seconds; each export
  verifies what it wrote, as the command does);
- `verify` of the source (rows/s, MB/s hashed);
- `merge` of two halves (cut with `export --where`) into one dataset;
- training's input read: every item's tokens at 1 depth (`FeatureStore.load(layers=[k])`, what
  `train --fusion layer:K` loads) from moto's S3 server on 127.0.0.1 and from local disk:
  seconds and bytes Lance read (its own IO counters).

    python benchmarks/share.py [--rows 100000] [--s3-rows 10000] [--json out/share.json]

moto keeps every object in memory: the S3 part uses the first --s3-rows rows (a subset
exported there), so a 100,000-row run fits in 24 GiB; the local disk needs twice the dataset
(46 GB at 100,000 rows). Numbers are one run each (the work is
seconds to minutes, far above timer noise); page cache warm for the local reads.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import write_json  # noqa: E402
from linkedout.storage import FeatureRow, FeatureStore, FeatureWriter, Manifest, export  # noqa: E402
from linkedout.storage.merge import merge  # noqa: E402
from linkedout.storage.subset import Subset  # noqa: E402
from linkedout.storage.verify import verify  # noqa: E402
from linkedout.testing.s3 import make_bucket, moto_server  # noqa: E402


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def write_source(path: Path, rows: int, shape: tuple[int, int, int]) -> tuple[FeatureStore, float]:
    layers, tokens, dim = shape
    manifest = Manifest(
        backbone="synthetic/qwen3-vl-2b-shape",
        backbone_kind="video-llm",
        layers=tuple(round(28 * (k + 1) / layers) for k in range(layers)),
        tokens_per_layer=tokens,
        hidden_size=dim,
        prompt="What does this video show?",
    )
    store = FeatureStore.create(path, manifest)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with FeatureWriter(store, commit_every=512) as w:
        for start in range(0, rows, 512):
            n = min(512, rows - start)
            block = torch.from_numpy(
                rng.standard_normal((n, *shape), dtype=np.float32).astype(np.float16)
            )
            for i in range(n):
                w.add(FeatureRow(f"item{start + i:07d}", block[i], f"sha{start + i}"))
    return FeatureStore.open(path), time.perf_counter() - started


def clock(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--s3-rows", type=int, default=10_000)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--dim", type=int, default=896)
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    shape = (args.layers, args.tokens, args.dim)
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="share-bench-"))
    figures: dict = {
        "rows": args.rows,
        "shape": list(shape),
        "dtype": "float16",
        "date": datetime.date.today().isoformat(),
    }
    try:
        source, seconds = write_source(root / "src.lance", args.rows, shape)
        figures["write"] = {"seconds": seconds, "bytes": dir_bytes(root / "src.lance")}
        print(
            f"wrote {args.rows:,} rows, {figures['write']['bytes'] / 1e9:.2f} GB in {seconds:.1f} s"
        )
        depth = source.manifest.layers[len(source.manifest.layers) // 2]

        report, seconds = clock(lambda: verify(source))
        assert report.ok and report.verified == args.rows, report.problems()
        figures["verify"] = {
            "seconds": seconds,
            "rows_per_s": args.rows / seconds,
            "mb_per_s": report.bytes_hashed / 1e6 / seconds,
        }
        print(
            f"verify: {args.rows / seconds:,.0f} rows/s, "
            f"{report.bytes_hashed / 1e6 / seconds:,.0f} MB/s"
        )

        _, seconds = clock(
            lambda: export(source.uri, root / "one-depth.lance", subset=Subset(layers=(depth,)))
        )
        one = {"seconds": seconds, "bytes": dir_bytes(root / "one-depth.lance")}
        shutil.rmtree(root / "one-depth.lance")
        _, seconds = clock(lambda: export(source.uri, root / "whole.lance"))
        whole = {"seconds": seconds, "bytes": dir_bytes(root / "whole.lance")}
        shutil.rmtree(root / "whole.lance")
        figures["export"] = {"one_depth": one, "whole": whole, "depth": depth}
        print(
            f"export 1 depth of {args.layers}: {one['bytes'] / 1e9:.2f} GB in "
            f"{one['seconds']:.1f} s; "
            f"whole: {whole['bytes'] / 1e9:.2f} GB in {whole['seconds']:.1f} s (each verified)"
        )

        # Training's input read first: the halves below replace the source (disk: a 100,000-row
        # run peaks at twice its size, not three times).
        figures["read"] = read_local_and_s3(source, root, depth, args.s3_rows)
        middle = f"item{args.rows // 2:07d}"
        export(source.uri, root / "a.lance", subset=Subset(where=f"item_id < '{middle}'"))
        export(source.uri, root / "b.lance", subset=Subset(where=f"item_id >= '{middle}'"))
        shutil.rmtree(root / "src.lance")
        halves = [str(root / "a.lance"), str(root / "b.lance")]
        result, seconds = clock(lambda: merge(halves, str(root / "merged.lance")))
        assert len(result.store) == args.rows
        figures["merge"] = {"seconds": seconds, "rows_per_s": args.rows / seconds}
        print(f"merge of two halves: {seconds:.1f} s ({args.rows / seconds:,.0f} rows/s, verified)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_json(args.json, figures)


def read_local_and_s3(source: FeatureStore, root: Path, depth: int, rows: int) -> dict:
    """Training's input read, 1 depth of every item, from local disk and from moto's S3."""
    local_uri = root / "part.lance"
    where = f"item_id < 'item{rows:07d}'"
    export(source.uri, local_uri, subset=Subset(where=where))
    out = {"rows": rows, "depth": depth}
    with moto_server() as endpoint:
        options = make_bucket(endpoint, "team")
        export(local_uri, "s3://team/features.lance", dest_options=options)
        for name, uri, opts in (
            ("local", str(local_uri), None),
            ("s3", "s3://team/features.lance", options),
        ):
            store = FeatureStore.open(uri, opts)
            store.dataset.io_stats_incremental()
            (ids, tokens), seconds = clock(lambda store=store: store.load(layers=[depth]))
            stats = store.dataset.io_stats_incremental()
            assert tokens.shape[0] == rows
            out[name] = {
                "seconds": seconds,
                "read_bytes": stats.read_bytes,
                "read_iops": stats.read_iops,
            }
            print(
                f"read 1 depth of {rows:,} rows from {name}: {seconds:.2f} s, "
                f"{stats.read_bytes / 1e6:,.0f} MB in {stats.read_iops:,} reads"
            )
    out["tensor_bytes"] = int(tokens.numel() * tokens.element_size())
    out["dataset_bytes"] = dir_bytes(local_uri)
    return out


if __name__ == "__main__":
    main()
