"""MicroLens-50K through LinkedOut's own commands: ranking quality of every fusion beside
popularity and ID-only SASRec, and the recommender's speed on real data.

1. The item titles through the real all-MiniLM-L6-v2 (embedding output + 6 layers) into Lance,
   with `linkedout extract --texts`: the path a video catalog takes, the title as the modality.
2. One `linkedout train` per row and seed. Every run must produce the same split (its sha256 is
   checked); the split is copied to OUT/split for other libraries (`make benchmark-peers`).
3. Speed: training seconds per epoch and sequences/s (from each run's epochs.json), one
   full-ranking evaluation pass, and `recommend` latency over the whole catalog.

    python benchmarks/microlens.py [--quick] [--out out/benchmark] [--seeds 1,2,3]

Writes OUT/microlens.json. Finished runs are kept and reused when the command is run again
(an interrupted benchmark resumes); `--fresh` starts over. MicroLens is found (or downloaded
once) by `linkedout.datasets.microlens_50k` and never copied into the repository.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import timed, write_json  # noqa: E402
from benchmarks.run_reuse import stale_defaults  # noqa: E402
from linkedout.datasets import MICROLENS_FILES, microlens_50k  # noqa: E402
from linkedout.errors import LinkedOutError  # noqa: E402

PAIRS, TITLES = MICROLENS_FILES
LINKEDOUT = [sys.executable, "-m", "linkedout.cli"]
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEPTHS = range(7)  # MiniLM: the embedding output and its 6 blocks
METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR")


@dataclass(frozen=True)
class Row:
    key: str
    name: str
    args: tuple[str, ...]
    main: bool
    """Main rows run for every seed; the others for the first seed."""


ROWS = (
    Row("ids", "SASRec, ID only", ("--fusion", "none", "--ids"), True),
    Row("moe", "LinkedOut MoE (content only)", ("--fusion", "moe"), True),
    Row("moe+ids", "LinkedOut MoE + IDs", ("--fusion", "moe", "--ids"), True),
    Row("mean", "mean of layers", ("--fusion", "mean"), False),
    *(Row(f"layer:{k}", f"layer {k} only", ("--fusion", f"layer:{k}"), False) for k in DEPTHS),
)


@dataclass(frozen=True)
class Ablation:
    key: str
    name: str
    reference: str
    """The main row this one changes one thing of (its first seed is the comparison)."""
    args: tuple[str, ...]
    shuffled: bool = False
    """Train on titles shuffled across items: content that says nothing about the item."""


# `--ablations`: one thing changed at a time against a main row, first seed only. Each is a
# reason the README gives for a setting; the shuffled-titles row checks that fusing content
# costs nothing where the content is uninformative.
ABLATIONS = (
    Ablation(
        "ids/batch-mean",
        "SASRec, ID only, loss averaged per batch",
        "ids",
        ("--fusion", "none", "--ids", "--loss-weighting", "batch"),
    ),
    Ablation(
        "ids/sampled",
        "SASRec, ID only, sampled softmax (1,024 negatives)",
        "ids",
        ("--fusion", "none", "--ids", "--full-softmax-max-items", "0"),
    ),
    Ablation(
        "moe+ids/sampled",
        "MoE + IDs, sampled softmax (1,024 negatives)",
        "moe+ids",
        ("--fusion", "moe", "--ids", "--full-softmax-max-items", "0"),
    ),
    Ablation(
        "moe+ids/no-whitening",
        "MoE + IDs, LayerNorm instead of whitening",
        "moe+ids",
        ("--fusion", "moe", "--ids", "--whiten", "0"),
    ),
    Ablation(
        "moe+ids/attention-pool",
        "MoE + IDs, attention pooling of tokens",
        "moe+ids",
        ("--fusion", "moe", "--ids", "--token-pool", "attention"),
    ),
    Ablation(
        "moe+ids/mean-gate",
        "mean + IDs (a fixed, uniform gate: no personal gate)",
        "moe+ids",
        ("--fusion", "mean", "--ids"),
    ),
    Ablation(
        "moe+ids/shuffled",
        "MoE + IDs, titles shuffled across items",
        "moe+ids",
        ("--fusion", "moe", "--ids"),
        shuffled=True,
    ),
)


@dataclass(frozen=True)
class Protocol:
    users: int | None
    """First N users of the pairs file (None: all 50,000)."""
    seeds: tuple[int, ...]
    epochs: int
    patience: int
    batch_size: int = 256
    lr: float = 2e-3
    val_users: int | None = 10_000
    tokens_per_layer: int = 3

    def train_args(self, seed: int) -> list[str]:
        args = [
            f"--epochs={self.epochs}",
            f"--patience={self.patience}",
            f"--batch-size={self.batch_size}",
            f"--lr={self.lr}",
            f"--seed={seed}",
        ]
        return args + ([f"--val-users={self.val_users}"] if self.val_users else [])


# Every row trains until validation NDCG@10 has not improved for `patience` epochs (the
# curves flatten well before the epoch cap); validation ranks every user, so the stopping
# epoch is not chosen on a noisy sample.
FULL = Protocol(users=None, seeds=(1, 2, 3), epochs=60, patience=4, val_users=None)
QUICK = Protocol(users=3_000, seeds=(1,), epochs=30, patience=3, val_users=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3,000 users and one seed")
    parser.add_argument("--out", type=Path, default=None, help="default out/benchmark[-quick]")
    parser.add_argument("--seeds", help="comma-separated seeds for the main rows")
    parser.add_argument("--epochs", type=int, help="most epochs per run")
    parser.add_argument(
        "--rows",
        help="comma-separated row keys to train, in this order (default: all)",
    )
    parser.add_argument("--fresh", action="store_true", help="discard earlier runs in --out")
    parser.add_argument(
        "--ablations", action="store_true", help="also train the ablation rows (first seed)"
    )
    parser.add_argument(
        "--new-uploads",
        action="store_true",
        help="also the new-uploads protocol (benchmarks/new_uploads.py): the ID-only, "
        "content-only and MoE + IDs rows, every seed, trained without the new items' "
        "interactions -> OUT/new-uploads.json",
    )
    parser.add_argument(
        "--new-fraction", type=float, default=0.2, help="share of items new for the test"
    )
    parser.add_argument(
        "--valid-new-fraction",
        type=float,
        default=0.1,
        help="share of items new for validation (disjoint from the test's)",
    )
    args = parser.parse_args()
    protocol = QUICK if args.quick else FULL
    if args.new_uploads:  # refused now, not after hours of the other rows
        from benchmarks.new_uploads import ProtocolError, check_fractions

        try:
            check_fractions(args.new_fraction, args.valid_new_fraction)
        except ProtocolError as e:
            print(e, file=sys.stderr)
            sys.exit(2)
    if args.seeds:
        protocol = replace(protocol, seeds=tuple(int(s) for s in args.seeds.split(",")))
    if args.epochs:
        protocol = replace(protocol, epochs=args.epochs)
    # Checked before --fresh deletes anything or the extraction runs.
    rows = ROWS
    if args.rows:
        by_key = {r.key: r for r in ROWS}
        wanted = list(dict.fromkeys(args.rows.split(",")))  # in the order given, once each
        if set(wanted) - by_key.keys():
            print(f"--rows {args.rows}: give row keys among {', '.join(by_key)}", file=sys.stderr)
            sys.exit(2)
        rows = tuple(by_key[k] for k in wanted)
    out = args.out or REPO / "out" / ("benchmark-quick" if args.quick else "benchmark")
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    try:
        data = microlens_50k()
    except LinkedOutError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    out.mkdir(parents=True, exist_ok=True)
    pairs, titles = inputs(data, out, protocol.users)
    extraction = extract_titles(out, titles, protocol.tokens_per_layer)
    features = out / "titles.lance"

    plan = [
        (row, seed)
        for row in rows
        for seed in protocol.seeds
        if row.main or seed == min(protocol.seeds)
    ]
    results: dict[str, list[dict]] = {}
    split_sha = None

    def report(final: bool) -> None:
        """OUT/microlens.json from the runs finished so far, naming the ones still missing:
        written after every run, so an interrupted benchmark is already a report."""
        missing = [f"{row.name}, seed {seed}" for row, seed in plan if not _has(results, row, seed)]
        figures = {
            "dataset": {
                "name": "MicroLens-50K",
                "source": str(data),
                "users_taken": protocol.users or "all",
                "quick": args.quick,
                "split": json.loads((out / "split" / "split.json").read_text()),
            },
            "protocol": asdict(protocol)
            | {"command": "linkedout train --features F --interactions I"},
            "extraction": extraction,
            # popularity is the same in every run
            "popularity": {
                k: v["popularity"] for k, v in next(iter(results.values()))[0]["views"].items()
            },
            "rows": [summarise(row, results[row.key]) for row in rows if row.key in results],
            "rows_not_run": [row.name for row in ROWS if row not in rows],
            "runs_missing": missing,
            "speed": speed(out, results, evaluate=final),
        }
        if final and args.ablations:
            figures["ablations"] = run_ablations(out, protocol, features, pairs, titles, split_sha)
        write_json(out / "microlens.json", figures)

    for n, (row, seed) in enumerate(plan, 1):
        run = out / "runs" / f"{row.key.replace(':', '')}-seed{seed}"
        record = train_row(run, row, seed, protocol, features, pairs)
        if split_sha is None:
            split_sha = record["split_sha256"]
            shutil.copytree(run / "split", out / "split", dirs_exist_ok=True)
        elif record["split_sha256"] != split_sha:
            sys.exit(f"{run} trained on another split than the first run: the benchmark is void")
        results.setdefault(row.key, []).append(record)
        test = record["views"]["test"]["model"]
        print(
            f"[{n}/{len(plan)}] {row.name}, seed {seed}: test HR@10 {test['HR@10']:.4f}, "
            f"NDCG@10 {test['NDCG@10']:.4f} ({record['epochs']} epochs, "
            f"{record['wall_seconds']:.0f} s)",
            flush=True,
        )
        if n < len(plan):
            report(final=False)
    report(final=True)
    if args.new_uploads:
        run_new_uploads(out, protocol, features, pairs, args.new_fraction, args.valid_new_fraction)


def _has(results: dict[str, list[dict]], row: Row, seed: int) -> bool:
    return any(r["seed"] == seed for r in results.get(row.key, []))


def inputs(data: Path, out: Path, users: int | None) -> tuple[Path, Path]:
    """The pairs and titles files to use: the originals, or the first `users` users' slice
    (written under `out`, which git ignores)."""
    if users is None:
        return data / PAIRS, data / TITLES
    lines = (data / PAIRS).read_text().splitlines()[:users]
    pairs = out / "data" / "pairs.tsv"
    pairs.parent.mkdir(parents=True, exist_ok=True)
    pairs.write_text("\n".join(lines) + "\n")
    items = {i for line in lines for i in line.split("\t")[1].split()}
    titles = out / "data" / "titles.csv"
    with open(data / TITLES, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["item"] in items]
    with open(titles, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["item", "title"])
        writer.writeheader()
        writer.writerows(rows)
    return pairs, titles


def extract_titles(out: Path, titles: Path, tokens_per_layer: int, name: str = "titles") -> dict:
    """Run `linkedout extract --texts` into OUT/NAME.lance; time it when it did the work (a
    re-run only resumes)."""
    record = out / f"extraction-{name}.json" if name != "titles" else out / "extraction.json"
    fresh = not (out / f"{name}.lance").exists()
    command = [
        *LINKEDOUT,
        "extract",
        "--texts",
        str(titles),
        "--model",
        TEXT_MODEL,
        "--layers",
        "all",
        f"--tokens-per-layer={tokens_per_layer}",
        "--batch-size=64",
        "--out",
        str(out / f"{name}.lance"),
        "--quiet",
    ]
    print("$ linkedout " + " ".join(command[3:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    if fresh:  # a resumed extraction (every title stored already) times nothing
        with open(titles, newline="", encoding="utf-8") as f:
            count = sum(1 for _ in csv.DictReader(f))
        figures = {
            "model": TEXT_MODEL,
            "layers": list(DEPTHS),
            "tokens_per_layer": tokens_per_layer,
            "titles": count,
            "seconds": seconds,
            "titles_per_s": count / seconds,
            "note": "wall time of the command, model load and Lance writes included",
        }
        record.write_text(json.dumps(figures, indent=2) + "\n")
    if not record.exists():
        return {"model": TEXT_MODEL, "layers": list(DEPTHS), "tokens_per_layer": tokens_per_layer}
    return json.loads(record.read_text())


def shuffled_titles(out: Path, titles: Path) -> Path:
    """The titles file with its titles permuted across items (fixed seed): every item gets
    some other item's title, so the content is real text that says nothing about the item."""
    path = out / "data" / "titles-shuffled.csv"
    with open(titles, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["title"] for r in rows]
    random.Random(0).shuffle(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["item", "title"])
        writer.writeheader()
        writer.writerows({"item": r["item"], "title": t} for r, t in zip(rows, texts))
    return path


NEW_UPLOAD_ROWS = ("ids", "moe", "moe+ids")
NEW_UPLOAD_SEED = 0
"""The draw of new items: one for every run, so seeds vary the training only."""


def run_new_uploads(
    out: Path,
    protocol: Protocol,
    features: Path,
    pairs: Path,
    fraction: float,
    valid_fraction: float,
) -> None:
    """The new-uploads protocol beside the leave-one-out table: each row and seed trained on
    the log without the new items, then its ranking of each user's last new item (validation's
    set and the test's); OUT/new-uploads.json rewritten after every run."""
    from benchmarks import new_uploads as nu

    sequences = nu.read_pairs(pairs)
    try:
        new = nu.choose(
            sorted({i for seq in sequences.values() for i in seq}),
            fraction,
            valid_fraction,
            NEW_UPLOAD_SEED,
        )
        chosen = {split: nu.targets(sequences, new, split) for split in (nu.VALIDATION, nu.TEST)}
    except nu.ProtocolError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    from linkedout.recommend.evaluate import TrainedRun

    folder = out / "new-uploads"
    trained_on = nu.write_pairs(nu.training_sequences(sequences, new), folder / "pairs.tsv")
    protocol_figures = {
        "fraction": fraction,
        "valid_fraction": valid_fraction,
        "draw_seed": NEW_UPLOAD_SEED,
        "items_new": {"valid": len(new.valid), "test": len(new.test)},
        "targets": {s: len(t) for s, (t, _) in chosen.items()},
        "left_out_empty_history": {s: e for s, (_, e) in chosen.items()},
        "trained_on": str(trained_on),
    }
    by_key = {r.key: r for r in ROWS}
    rows: dict[str, list[dict]] = {}
    for key in NEW_UPLOAD_ROWS:
        for seed in protocol.seeds:
            run = folder / "runs" / f"{key}-seed{seed}"
            record = train_row(run, by_key[key], seed, protocol, features, trained_on)
            trained = TrainedRun(run)
            record["new_uploads"] = {
                split: nu.evaluate(trained, targets) for split, (targets, _) in chosen.items()
            }
            rows.setdefault(key, []).append(record)
            test = record["new_uploads"]["test"]
            print(
                f"[new uploads] {by_key[key].name}, seed {seed}: new-item HR@10 "
                f"{test['HR@10']:.4f}, NDCG@10 {test['NDCG@10']:.4f}",
                flush=True,
            )
            rows_figures = [
                {"key": k, "name": by_key[k].name, "runs": [_new_upload_run(r) for r in records]}
                for k, records in rows.items()
            ]
            write_json(
                out / "new-uploads.json", {"protocol": protocol_figures, "rows": rows_figures}
            )


def _new_upload_run(record: dict) -> dict:
    """What new-uploads.json keeps of a run's record."""
    keep = ("seed", "new_uploads", "epochs", "wall_seconds")
    return {k: record[k] for k in keep} | {"warm": record["views"]}


def run_ablations(
    out: Path, protocol: Protocol, features: Path, pairs: Path, titles: Path, split_sha: str
) -> list[dict]:
    """Every ABLATIONS row on the first seed, each beside its reference row's first seed."""
    seed = min(protocol.seeds)
    records = []
    for n, ablation in enumerate(ABLATIONS, 1):
        source = features
        if ablation.shuffled:
            extract_titles(out, shuffled_titles(out, titles), protocol.tokens_per_layer, "shuffled")
            source = out / "shuffled.lance"
        row = Row(ablation.key, ablation.name, ablation.args, False)
        run = out / "ablations" / ablation.key.replace("/", "-").replace(":", "")
        record = train_row(run, row, seed, protocol, source, pairs)
        if record["split_sha256"] != split_sha:
            sys.exit(f"{run} trained on another split than the main rows: the ablation is void")
        record["reference"] = ablation.reference
        records.append(record)
        print(f"[ablation {n}/{len(ABLATIONS)}] {ablation.name}: {record['epochs']} epochs")
    return records


def train_row(
    run: Path, row: Row, seed: int, protocol: Protocol, features: Path, pairs: Path
) -> dict:
    """Train (or reuse a finished run of the same command) and collect its figures."""
    command = [
        *LINKEDOUT,
        "train",
        "--features",
        str(features),
        "--interactions",
        str(pairs),
        "--out",
        str(run),
        *row.args,
        *protocol.train_args(seed),
        "--quiet",
    ]
    stamp = run / "benchmark-command.json"
    done = (run / "metrics.json").exists() and stamp.exists()
    if done and json.loads(stamp.read_text())["command"] == command[3:]:
        changed = stale_defaults(run, command[3:])
        if not changed:
            return collect(run, row, seed, json.loads(stamp.read_text())["wall_seconds"])
        print(f"retraining {run}: defaults changed since ({'; '.join(changed)})", flush=True)
    shutil.rmtree(run, ignore_errors=True)
    run.parent.mkdir(parents=True, exist_ok=True)
    print("$ linkedout " + " ".join(command[3:]), flush=True)
    start = time.perf_counter()
    with open(run.parent / f"{run.name}.log", "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"training failed: see {run.parent / f'{run.name}.log'}")
    wall = time.perf_counter() - start
    stamp.write_text(json.dumps({"command": command[3:], "wall_seconds": wall}) + "\n")
    return collect(run, row, seed, wall)


def collect(run: Path, row: Row, seed: int, wall: float) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    epochs = json.loads((run / "epochs.json").read_text())["epochs"]
    best = max(epochs, key=lambda e: e["val_NDCG@10"])
    train_seconds = [e["train_seconds"] for e in epochs]
    sequences = epochs[0]["train_sequences"]
    return {
        "row": row.key,
        "seed": seed,
        "run": str(run),
        "split_sha256": json.loads((run / "split" / "split.json").read_text())["sha256"],
        "views": {k: v for k, v in metrics.items() if k.startswith(("valid", "test"))},
        "gate": metrics.get("gate"),
        "epochs": len(epochs),
        "best_epoch": best["epoch"],
        "curve": epochs,
        "train_seconds_per_epoch": statistics.median(train_seconds),
        "val_seconds_per_epoch": statistics.median(e["val_seconds"] for e in epochs),
        "sequences_per_s": sequences / statistics.median(train_seconds),
        "wall_seconds": wall,
    }


def summarise(row: Row, records: list[dict]) -> dict:
    """Per-seed figures and their mean and standard deviation for each view and metric."""
    views = records[0]["views"].keys()
    mean, std = {}, {}
    for view in views:
        values = {m: [r["views"][view]["model"][m] for r in records] for m in METRICS}
        mean[view] = {m: statistics.fmean(v) for m, v in values.items()}
        std[view] = {m: statistics.stdev(v) if len(v) > 1 else None for m, v in values.items()}
    gates = [r["gate"]["mean"] for r in records if r["gate"]]
    return {
        "key": row.key,
        "name": row.name,
        "args": list(row.args),
        "seeds": [r["seed"] for r in records],
        "mean": mean,
        "std": std,
        "gate": (
            {
                "layers": records[0]["gate"]["layers"],
                "mean": [statistics.fmean(g) for g in zip(*gates)],
            }
            if gates
            else None
        ),
        "runs": [{k: v for k, v in r.items() if k not in ("row",)} for r in records],
    }


def recommend_latency(trained, users: int, warm: int) -> dict[str, float]:
    """p50/p99 milliseconds of a top-10 ranking (the service's Ranker, in process) for the
    first `users` users' test histories, after `warm` untimed requests."""
    from linkedout.service.ranker import Ranker, RankRequest

    ranker = Ranker(trained.path)

    histories = [
        [trained.item_ids[i - 1] for i in trained.split.history(u, "test")] for u in range(users)
    ]
    for history in histories[:warm]:
        ranker.rank([RankRequest(history, k=10)])
    latencies = []
    for history in histories:
        start = time.perf_counter()
        ranker.rank([RankRequest(history, k=10)])
        latencies.append((time.perf_counter() - start) * 1000)
    q = statistics.quantiles(latencies, n=100)
    return {"p50_ms": q[49], "p99_ms": q[98]}


def speed(out: Path, results: dict[str, list[dict]], evaluate: bool = True) -> dict:
    """Training throughput of the MoE and ID-only rows beside the floor their softmax's
    products set on this machine, and (`evaluate`) one full-ranking evaluation pass and
    `recommend` latency, on the first seed's runs."""
    from linkedout.recommend.evaluate import TrainedRun, evaluate_run

    figures: dict = {"train": {}}
    present = [k for k in ("moe", "moe+ids", "ids") if k in results]
    for key in present:
        r = results[key][0]
        figures["train"][key] = {
            "seconds_per_epoch": r["train_seconds_per_epoch"],
            "sequences_per_s": r["sequences_per_s"],
            "validation_seconds_per_epoch": r["val_seconds_per_epoch"],
            "epochs": r["epochs"],
            "wall_seconds": r["wall_seconds"],
            "softmax_floor": softmax_floor(Path(r["run"])),
        }
    if not evaluate:
        return figures
    for key in present:
        run = Path(results[key][0]["run"])
        start = time.perf_counter()
        evaluated = evaluate_run(run, splits=("test",))
        seconds = time.perf_counter() - start
        trained = TrainedRun(run)
        users = min(1000, len(trained.split.users))
        latency = recommend_latency(trained, users, warm=20)
        figures[f"evaluate_{key}"] = {
            "seconds": seconds,
            "users": evaluated.splits["test"].model["users"],
            "items": len(trained.item_ids),
            "note": "test split: model and popularity ranks, masked and unmasked, cold slice",
        }
        figures[f"recommend_{key}"] = {
            **latency,
            "requests": users,
            "items": len(trained.item_ids),
        }
    return figures


@functools.cache  # the partial report after each run asks again for the rows done before
def softmax_floor(run: Path, rows: int = 1024) -> dict:
    """Seconds an epoch of this run's full softmax spends in its three matrix products alone
    (the logits, and the two gradients), timed on this machine at the run's shapes: `rows`
    targets against every candidate item, scaled to the epoch's targets. No epoch can take
    less; the rest of an epoch is the softmax's exponentials, the sequence model and the
    item tower."""
    import torch

    from linkedout.recommend.data import TrainSequences
    from linkedout.recommend.evaluate import TrainedRun
    from linkedout.recommend.softmax import product_dtype

    trained = TrainedRun(run)
    model, split = trained.model, trained.split
    width = (model.config.d_model if model.ids is not None else 0) + (
        model.num_layers * model.expert_dim if model.content else 0
    )
    counts = split.train_counts()
    items = int((counts[1:] > 0).sum()) if model.content else split.num_items - 1
    targets = sum(TrainSequences(split, model.config.max_len).lengths())
    dtype = product_dtype("cpu")
    q, k = torch.randn(rows, width, dtype=dtype), torch.randn(items, width, dtype=dtype)
    probs = torch.rand(rows, items, dtype=dtype)
    seconds = 0.0
    for product in (lambda: q @ k.T, lambda: probs @ k, lambda: probs.T @ q):
        product()  # untimed: the first call allocates
        seconds += timed(product, 9)
    return {
        "width": width,
        "items": items,
        "targets": targets,
        "tflop": 6 * targets * items * width / 1e12,
        "dtype": str(dtype).removeprefix("torch."),
        "seconds": seconds * targets / rows,
    }


if __name__ == "__main__":
    main()
