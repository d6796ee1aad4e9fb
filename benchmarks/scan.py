"""The service's exact scan (linkedout/service/scan.py: bfloat16 candidates, float32 answers)
beside the float32 scan it replaced, on a trained run's real keys and on a 1M-item catalog
drawn from a mixture fitted to them (benchmarks/ann.py's `mixture`), with real users' vectors.

    python benchmarks/scan.py RUN [--items 1000000] [--users 200] [--json OUT]

For each catalog and batch size (1, 8 and 64 users a pass, as the service merges concurrent
requests): ms per pass of both scans (median of the passes over the users), how many users
the bfloat16 pass could not prove and were scanned again in float32, and whether every user's
top 10 equals the float32 scan's (items and order). One torch thread, as `serve --threads 1`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ann import mixture, real_keys_and_queries  # noqa: E402
from linkedout.service.scan import Scan  # noqa: E402

K = 10


def float32_top(keys: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
    """The scan the service ran before: one float32 product, then top-k."""
    return (users @ keys.T).topk(K, dim=1).indices


def measure(keys: torch.Tensor, queries: torch.Tensor, batches: list[int]) -> dict:
    scan = Scan.of(keys)
    fallbacks = []
    full = Scan._full

    def counting(self, users, *args):
        fallbacks.append(len(users))
        return full(self, users, *args)

    Scan._full = counting
    try:
        masked = [[]] * len(queries)
        _, rows = scan.top(queries, K, masked)
        agree = torch.equal(rows, float32_top(keys, queries))
        proven = len(queries) - sum(fallbacks)
        rows_out = []
        for batch in batches:
            passes = [queries[i : i + batch] for i in range(0, len(queries) - batch + 1, batch)]
            served, before = [], []
            for users in passes:
                t = time.perf_counter()
                scan.top(users, K, [[]] * len(users))
                served.append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                float32_top(keys, users)
                before.append((time.perf_counter() - t) * 1e3)
            rows_out.append(
                {
                    "users_per_pass": batch,
                    "passes": len(passes),
                    "float32_ms": statistics.median(before),
                    "served_ms": statistics.median(served),
                }
            )
    finally:
        Scan._full = full
    return {
        "items": len(keys),
        "width": keys.shape[1],
        "bfloat16": scan.low is not None,
        "users": len(queries),
        "proven_by_bfloat16": proven,
        "top10_equal_to_float32": agree,
        "batches": rows_out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    real, queries, _ = real_keys_and_queries(args.run, args.users)
    results = {"threads": 1, "catalogs": {}}
    for name, keys in (("real", real), ("mixture", None)):
        if keys is None:
            keys = mixture(real, args.items)
        with torch.inference_mode():
            figures = measure(keys, queries, [1, 8, 64])
        results["catalogs"][name] = figures
        print(name, json.dumps(figures), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
