"""Model settings for new uploads, chosen on validation: each variant trained once on the
new-uploads log (benchmarks/new_uploads.py; 20% of items new for the test, a disjoint 10% for
validation, the draw `microlens.py --new-uploads` uses) and judged on validation only:

- new uploads: HR@10 / NDCG@10 of each user's last validation-new item (never trained on);
- warm: the run's own leave-one-out validation at its best epoch (the log without new items).

    python benchmarks/new_uploads_study.py --variants moe,moe+ids [--seed 1]
        [--lifts 0,0.25,0.5 --loo-runs out/benchmark/runs/moe+ids-seed1]

`--lifts` ranks each variant's run again with each `--new-item-lift` (a ranking setting, no
retraining), and `--loo-runs` the leave-one-out benchmark's runs (warm validation on the whole
log, where few items lack a trained ID vector).

Each finished variant is written at once to OUT/new-uploads-study.json (default
out/benchmark), so a stopped study resumes from the finished runs; test targets are not read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import new_uploads as nu  # noqa: E402
from benchmarks.common import write_json  # noqa: E402
from benchmarks.microlens import (  # noqa: E402
    FULL,
    NEW_UPLOAD_SEED,
    Row,
    extract_titles,
    inputs,
    microlens_50k,
    train_row,
)

BASE = {
    "ids": ("--fusion", "none", "--ids"),
    "moe": ("--fusion", "moe"),
    "moe+ids": ("--fusion", "moe", "--ids"),
    "mean": ("--fusion", "mean"),
    "mean+ids": ("--fusion", "mean", "--ids"),
}
"""A variant is a base row, then `/`-separated changes: id-drop-P (--id-dropout P),
lift-B (--new-item-lift B)."""
CHANGES = {"id-drop": "--id-dropout", "lift": "--new-item-lift"}


def variant_args(name: str) -> tuple[str, ...]:
    base, *changes = name.split("/")
    if base not in BASE:
        raise SystemExit(f"variant {name!r}: start with one of {', '.join(BASE)}")
    args = list(BASE[base])
    for change in changes:
        flag, _, value = change.rpartition("-")
        if flag not in CHANGES:
            raise SystemExit(f"variant {name!r}: {change!r} is not one of {', '.join(CHANGES)}-P")
        args += [CHANGES[flag], value]
    return tuple(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="", help="comma-separated variant names")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "benchmark")
    parser.add_argument(
        "--lifts",
        help="comma-separated --new-item-lift values to rank each variant's run with "
        "(no retraining: the lift is a ranking setting)",
    )
    parser.add_argument(
        "--loo-runs",
        type=Path,
        nargs="*",
        default=[],
        help="finished leave-one-out runs (benchmarks/microlens.py) to rank with each lift too: "
        "their warm validation on the whole log",
    )
    args = parser.parse_args()
    lifts = [float(b) for b in args.lifts.split(",")] if args.lifts else []
    variants = {name: variant_args(name) for name in args.variants.split(",") if name}
    data = microlens_50k()
    pairs, titles = inputs(data, args.out, None)
    extract_titles(args.out, titles, FULL.tokens_per_layer)
    sequences = nu.read_pairs(pairs)
    new = nu.choose(sorted({i for s in sequences.values() for i in s}), seed=NEW_UPLOAD_SEED)
    chosen, empty = nu.targets(sequences, new, nu.VALIDATION)
    folder = args.out / "new-uploads"
    trained_on = nu.write_pairs(nu.training_sequences(sequences, new), folder / "pairs.tsv")
    figures_path = args.out / "new-uploads-study.json"
    figures = json.loads(figures_path.read_text()) if figures_path.exists() else {}
    for name, train_args in variants.items():
        key = f"{name} seed {args.seed}"
        run = folder / "study" / f"{name.replace('/', '_')}-seed{args.seed}"
        record = train_row(
            run,
            Row(name, name, train_args, True),
            args.seed,
            FULL,
            args.out / "titles.lance",
            trained_on,
        )
        best = max(record["curve"], key=lambda e: e["val_NDCG@10"])
        earlier = figures.get(key, {}).get("lift_sweep", {})  # kept beside new lifts
        figures[key] = {
            "args": list(train_args),
            "new_valid": nu.evaluate(run, chosen),
            "warm_valid": {k: best[f"val_{k}"] for k in ("HR@10", "NDCG@10")},
            "epochs": record["epochs"],
            "wall_seconds": record["wall_seconds"],
            "targets": len(chosen),
            "left_out_empty_history": empty,
        }
        if lifts:
            figures[key]["lift_sweep"] = earlier | lift_sweep(run, chosen, lifts)
        write_json(figures_path, figures)
        f = figures[key]
        print(
            f"{key}: new-upload valid HR@10 {f['new_valid']['HR@10']:.4f} NDCG@10 "
            f"{f['new_valid']['NDCG@10']:.4f}; warm valid HR@10 {f['warm_valid']['HR@10']:.4f} "
            f"NDCG@10 {f['warm_valid']['NDCG@10']:.4f} ({f['epochs']} epochs, "
            f"{f['wall_seconds']:.0f} s)",
            flush=True,
        )
    for run in args.loo_runs:
        key = f"leave-one-out {run.name}"
        earlier = figures.get(key, {}).get("lift_sweep", {})
        figures[key] = figures.get(key, {}) | {"lift_sweep": earlier | lift_sweep(run, [], lifts)}
        write_json(figures_path, figures)


def lift_sweep(run: Path, chosen: list[nu.Target], lifts: list[float]) -> dict:
    """Validation figures of a finished run ranked with each `new_item_lift` in `lifts`:
    new uploads (`chosen` targets) and the run's own warm validation (its leave-one-out
    validation targets, every item of the catalog a candidate)."""
    import torch

    from linkedout.recommend.evaluate import TrainedRun, states
    from linkedout.recommend.metrics import RankingMetrics
    from linkedout.recommend.ranking import rank_targets

    trained = TrainedRun(run)
    model, split = trained.model, trained.split
    users = range(len(split.users))
    sets = {
        "warm": (
            [split.history(u, "valid") for u in users],
            torch.tensor([split.target(u, "valid") for u in users]),
        )
    }
    if chosen:
        sets["new"] = nu.rankable(trained, chosen)[:2]
    out = {}
    with torch.inference_mode():
        user_states = {name: states(trained, hist, 1024) for name, (hist, _) in sets.items()}
        for lift in lifts:
            model.lift_new_items(lift)
            out[str(lift)] = {}
            for name, (hist, items) in sets.items():
                ranks, _ = rank_targets(model, trained.catalog, *user_states[name], items, hist)
                metrics = RankingMetrics()
                metrics.update(ranks)
                m = metrics.compute()
                out[str(lift)][name] = {k: m[k] for k in ("HR@10", "NDCG@10")}
            print(f"{run.name} lift {lift}: {json.dumps(out[str(lift)])}", flush=True)
    return out


if __name__ == "__main__":
    main()
