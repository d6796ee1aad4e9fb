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

    python benchmarks/share.py [--rows 100000] [--s3-rows 2000] [--json out/share.json]
    python benchmarks/share.py --source DIR/share-bench-X/src.lance --steps read,merge --json ...

moto's server keeps every object in memory and writes slowly (2.2 GB took over 17 minutes
here): the S3 part uses the first --s3-rows rows (a subset exported there). The local disk
needs twice the dataset (46 GB at 100,000 rows). Each step writes its figures to --json as it
ends; an interrupted run continues with --source and --steps. Numbers are one run each (the work is
seconds to minutes, far above timer noise); page cache warm for the local reads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
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


STEPS = ("verify", "export", "read", "merge")
READ_REPEATS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--s3-rows", type=int, default=2_000)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--dim", type=int, default=896)
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument(
        "--source",
        type=Path,
        help="reuse the synthetic dataset an interrupted run left (DIR/share-bench-*/src.lance) "
        "instead of writing one; the merge step replaces it by its halves",
    )
    parser.add_argument("--steps", default=",".join(STEPS), help=f"of {', '.join(STEPS)}")
    parser.add_argument(
        "--json", type=Path, help="write the figures here after every step (kept: a rerun adds)"
    )
    args = parser.parse_args()
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if set(steps) - set(STEPS):
        parser.error(f"--steps: choose among {', '.join(STEPS)}")
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="share-bench-"))
    figures: dict = {}
    if args.json is not None and args.json.exists():
        figures = {k: v for k, v in json.loads(args.json.read_text()).items() if k != "environment"}

    def done(step: str, values: dict) -> None:
        figures[step] = values
        write_json(args.json, figures)  # a step's figures reach the disk as it ends

    try:
        if args.source is not None:
            source = FeatureStore.open(args.source)
            print(f"reusing {args.source}: {len(source):,} rows")
        else:
            shape = (args.layers, args.tokens, args.dim)
            source, seconds = write_source(root / "src.lance", args.rows, shape)
            if set(steps) != {"read"}:  # the read step's figures say their own size
                figures["write"] = {"seconds": seconds, "bytes": dir_bytes(root / "src.lance")}
            print(f"wrote {len(source):,} rows in {seconds:.1f} s")
        rows = len(source)
        if set(steps) != {"read"}:  # the read step's figures say their own size
            figures.update(
                rows=rows,
                shape=list(source.manifest.shape),
                dtype=source.manifest.dtype,
                date=datetime.date.today().isoformat(),
            )
        depth = source.manifest.layers[len(source.manifest.layers) // 2]
        if "verify" in steps:
            report, seconds = clock(lambda: verify(source))
            assert report.ok and report.verified == rows, report.problems()
            mb = report.bytes_hashed / 1e6 / seconds
            done("verify", {"seconds": seconds, "rows_per_s": rows / seconds, "mb_per_s": mb})
            print(f"verify: {rows / seconds:,.0f} rows/s, {mb:,.0f} MB/s")
        if "export" in steps:
            done("export", export_one_and_whole(source, root, depth))
        if "read" in steps:
            done("read", read_local_and_s3(source, root, depth, args.s3_rows))
        if "merge" in steps:  # last: its halves replace the source (disk: twice the dataset)
            middle = f"item{rows // 2:07d}"
            export(source.uri, root / "a.lance", subset=Subset(where=f"item_id < '{middle}'"))
            export(source.uri, root / "b.lance", subset=Subset(where=f"item_id >= '{middle}'"))
            shutil.rmtree(source.uri)
            halves = [str(root / "a.lance"), str(root / "b.lance")]
            result, seconds = clock(lambda: merge(halves, str(root / "merged.lance")))
            assert len(result.store) == rows
            done("merge", {"seconds": seconds, "rows_per_s": rows / seconds})
            print(f"merge of two halves: {seconds:.1f} s ({rows / seconds:,.0f} rows/s, verified)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_json(args.json, figures)


def export_one_and_whole(source: FeatureStore, root: Path, depth: int) -> dict:
    """`export --layers DEPTH` against the whole dataset: bytes written and seconds (each
    verifies what it wrote)."""
    out = {"depth": depth}
    for name, subset in (("one_depth", Subset(layers=(depth,))), ("whole", None)):
        dest = root / f"{name}.lance"
        _, seconds = clock(lambda dest=dest, subset=subset: export(source.uri, dest, subset=subset))
        out[name] = {"seconds": seconds, "bytes": dir_bytes(dest)}
        shutil.rmtree(dest)
        print(f"export {name}: {out[name]['bytes'] / 1e9:.2f} GB in {seconds:.1f} s (verified)")
    return out


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
            times = []
            for _ in range(READ_REPEATS):  # a fresh open each time, as a training run starts
                store = FeatureStore.open(uri, opts)
                store.dataset.io_stats_incremental()
                (ids, tokens), seconds = clock(lambda store=store: store.load(layers=[depth]))
                stats = store.dataset.io_stats_incremental()
                assert tokens.shape[0] == rows
                times.append(seconds)
            out[name] = {
                "seconds": statistics.median(times),
                "all_seconds": times,
                "read_bytes": stats.read_bytes,
                "read_iops": stats.read_iops,
            }
            print(
                f"read 1 depth of {rows:,} rows from {name}: median {out[name]['seconds']:.2f} s "
                f"of {READ_REPEATS}, {stats.read_bytes / 1e6:,.0f} MB in {stats.read_iops:,} reads"
            )
    out["tensor_bytes"] = int(tokens.numel() * tokens.element_size())
    out["dataset_bytes"] = dir_bytes(local_uri)
    return out


if __name__ == "__main__":
    main()
