"""How well runs order new uploads among themselves: each validation new-upload target of the
new-uploads protocol (benchmarks/new_uploads.py) ranked against the other validation-new items
only, never against warm ones.

    python benchmarks/new_uploads_among_new.py RUN [RUN ...] [--out FILE.json]

A lift adds the same amount to every new item of a user's scores, so this ranking does not
depend on it: it separates how a model orders new items by content (what a better model
would improve) from how many new items its lift lets into a top 10 (where every remedy so far
trades warm quality for new-item quality along one curve, README "New uploads"). Runs: the
study's runs on the new-uploads log (`benchmarks/new_uploads_study.py`, e.g.
out/benchmark/new-uploads/study/moe-seed1 and moe+ids-seed1). Validation only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import new_uploads as nu  # noqa: E402
from benchmarks.common import write_json  # noqa: E402
from benchmarks.microlens import NEW_UPLOAD_SEED, PAIRS, microlens_50k  # noqa: E402


def among_new(run: Path, chosen: list[nu.Target], new_items: frozenset[str]) -> dict:
    """HR@10 / NDCG@10 of `chosen` targets ranked among `new_items` (ties against the target)."""
    import torch

    from linkedout.recommend.evaluate import TrainedRun, states
    from linkedout.recommend.metrics import RankingMetrics, rank_of_target

    trained = TrainedRun(run)
    histories, targets, _ = nu.rankable(trained, chosen)
    pool = torch.tensor(sorted(trained.index[i] for i in new_items if i in trained.index))
    catalog = trained.catalog
    with torch.inference_mode():
        h, gate = states(trained, histories, 1024)
        codes = catalog.experts_of(pool)
        ids = None if catalog.ids is None else catalog.ids[pool]
        scores = trained.model.score(h, gate, codes, ids)  # [U, new items]
    column = torch.searchsorted(pool, targets)
    if not torch.equal(pool[column], targets):
        raise SystemExit(f"{run}: a target is not among the validation-new items")
    metrics = RankingMetrics()
    metrics.update(rank_of_target(scores, column, None))  # ties counted against the target
    m = metrics.compute()
    return {
        "HR@10": m["HR@10"],
        "NDCG@10": m["NDCG@10"],
        "candidates": len(pool),
        "targets": len(targets),
        "random HR@10": 10 / len(pool),
        # 0 where none of the new items was trained on, as the protocol means
        "trained_ids_among_new": 0 if ids is None else int((ids != 0).any(1).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args()
    data = microlens_50k()
    sequences = nu.read_pairs(data / PAIRS)
    new = nu.choose(sorted({i for s in sequences.values() for i in s}), seed=NEW_UPLOAD_SEED)
    chosen, _ = nu.targets(sequences, new, nu.VALIDATION)
    figures = {}
    for run in args.runs:
        figures[str(run)] = among_new(run, chosen, new.valid)
        f = figures[str(run)]
        print(
            f"{run}: among {f['candidates']} validation-new items, HR@10 {f['HR@10']:.4f} "
            f"NDCG@10 {f['NDCG@10']:.4f} ({f['targets']} targets; random "
            f"{f['random HR@10']:.4f})",
            flush=True,
        )
    if args.out:
        write_json(args.out, figures)


if __name__ == "__main__":
    main()
