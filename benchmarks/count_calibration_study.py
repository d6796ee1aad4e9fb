"""Count-aware calibration at ranking time, judged on validation only (issue 34): a trained
content + IDs run ranked again with each candidate's score terms reweighted by how often the
item occurs in training (n), the history inputs unchanged, no retraining:

  shrink c   the item's ID vector scaled by n / (n + c) (rare items' IDs trusted less);
  boost c    the item's content terms scaled by 1 + c / (1 + n) (rare items' content more).

    python benchmarks/count_calibration_study.py RUN OUT.json

Prints and writes validation HR@10 / NDCG@10 over every user and over the long tail (targets
with 1 to 5 training interactions). The run's catalog must fit in memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linkedout.recommend.catalog import MemoryCatalog  # noqa: E402
from linkedout.recommend.evaluate import LONG_TAIL, TrainedRun, states  # noqa: E402
from linkedout.recommend.metrics import RankingMetrics  # noqa: E402
from linkedout.recommend.ranking import rank_targets  # noqa: E402

SETTINGS = (("shrink", (0, 0.5, 1, 2, 4, 8)), ("boost", (0.25, 0.5, 1.0)))


def hr_ndcg(ranks: torch.Tensor) -> tuple[float, float]:
    metrics = RankingMetrics()
    metrics.update(ranks)
    figures = metrics.compute()
    return round(figures["HR@10"], 4), round(figures["NDCG@10"], 4)


@torch.inference_mode()
def study(path: Path) -> list[dict]:
    run = TrainedRun(path)
    if not isinstance(run.catalog, MemoryCatalog) or run.catalog.ids is None:
        sys.exit(f"{path}: needs a content + IDs run whose catalog fits in memory")
    split = run.split
    counts = split.train_counts()
    histories = [split.history(u, "valid") for u in range(len(split.users))]
    targets = torch.tensor([split.target(u, "valid") for u in range(len(split.users))])
    tail = (counts[targets] >= 1) & (counts[targets] <= LONG_TAIL)
    h, gate = states(run, histories, 1024)
    ids, experts = run.catalog.ids, run.catalog.experts
    rows = []
    for kind, values in SETTINGS:
        for c in values:
            run.catalog.ids, run.catalog.experts = ids, experts
            if kind == "shrink":
                run.catalog.ids = ids * (counts / (counts + c)).nan_to_num(0.0)[:, None]
            else:
                run.catalog.experts = experts * (1 + c / (1 + counts))[:, None, None]
            ranks, _ = rank_targets(run.model, run.catalog, h, gate, targets, histories)
            row = {
                "kind": kind,
                "c": c,
                "valid": hr_ndcg(ranks),
                "valid_long_tail": hr_ndcg(ranks[tail]),
                "tail_users": int(tail.sum()),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished content + IDs run")
    parser.add_argument("out", type=Path, help="JSON to write the rows to")
    args = parser.parse_args()
    args.out.write_text(json.dumps(study(args.run), indent=2) + "\n")


if __name__ == "__main__":
    main()
