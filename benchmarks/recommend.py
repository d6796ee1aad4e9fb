"""Recommender speed on this CPU: training sequences/s, a full evaluation, serving latency.

Planted-signal data with the shape of the MicroLens title features (7 depths, 4 tokens, 384-d)
and a 20,000-item catalog, so the numbers do not depend on any download:

    python benchmarks/recommend.py [--items 20000] [--users 5000] [--requests 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the planted-data factory lives with the tests

from linkedout.recommend.evaluate import TrainedRun, evaluate_run  # noqa: E402
from linkedout.recommend.model import ModelConfig  # noqa: E402
from linkedout.recommend.serve import recommend  # noqa: E402
from linkedout.recommend.train import TrainConfig, train  # noqa: E402
from tests.recommend.planted import make_planted  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--requests", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        data = make_planted(
            root,
            items=args.items,
            users=args.users,
            clusters=50,
            layers=(0, 1, 2, 3, 4, 5, 6),
            signal_layer=4,
            dim=384,
            seq_len=12,
        )
        print(
            f"recommender benchmark: {args.items:,} items x [7, 4, 384], {args.users:,} users "
            f"(built in {time.perf_counter() - start:.0f} s), torch threads "
            f"{torch.get_num_threads()}"
        )
        config = TrainConfig(
            features=str(data.features),
            interactions=str(data.interactions),
            out=str(root / "run"),
            model=ModelConfig(),
            epochs=args.epochs,
            patience=args.epochs,
            progress=False,
        )
        start = time.perf_counter()
        run = train(config)
        fit = time.perf_counter() - start
        sequences = args.users * args.epochs
        print(
            f"train   {args.epochs} epochs + evaluation in {fit:.1f} s: "
            f"{sequences / fit:.0f} user sequences/s end to end"
        )
        start = time.perf_counter()
        result = evaluate_run(run, splits=("test",))
        seconds, test = time.perf_counter() - start, result["test"]
        print(
            f"eval    one full-ranking pass over {args.users:,} users x {args.items:,} items: "
            f"{seconds:.2f} s (test HR@10 {test['model']['HR@10']:.3f}, "
            f"popularity {test['popularity']['HR@10']:.3f})"
        )
        trained = TrainedRun(run)
        histories = [
            [trained.item_ids[i - 1] for i in trained.split.history(u, "test")]
            for u in range(min(args.requests, len(trained.split.users)))
        ]
        for history in histories[:20]:  # warm up
            recommend(trained, history, k=10)
        latencies = []
        for history in histories:
            start = time.perf_counter()
            recommend(trained, history, k=10)
            latencies.append((time.perf_counter() - start) * 1000)
        q = statistics.quantiles(latencies, n=100)
        print(
            f"serve   recommend(k=10) over {args.items:,} items, {len(latencies)} requests: "
            f"p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms"
        )


if __name__ == "__main__":
    main()
