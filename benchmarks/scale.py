"""Scaling on this machine: Ray extraction workers, data-parallel training, streamed features.

1. Extraction with `--engine ray` over the shared clips (tiny Qwen2.5-VL, one CPU and one torch
   thread per model replica): videos/s with 1 and with 2 workers, and the local engine beside.
2. Training on MicroLens (the first --users users, MiniLM title features): sequences/s of one
   process against `--devices 2 --strategy ddp` (two CPU processes, gloo).
3. The same one-process training with item tokens streamed from Lance (`--feature-memory-gb 0`:
   validation then also ranks against item embeddings spilled to Lance) against all in memory.
4. Ranking the trained run's test users over its catalog.lance loaded in memory against read
   chunk by chunk from disk (`--catalog-memory-gb 0`): seconds per full evaluation pass and
   `recommend` latency, with the metrics checked equal.

Figures are ratios measured in one run; a 2-core machine bounds what a second worker can add.

    python benchmarks/scale.py [--features out/benchmark/titles.lance] [--users 10000]
        [--epochs 2] [--videos ../shared/data/videos] [--json out/benchmark/scale.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tiny-checkpoint factory lives with the tests

from benchmarks.common import write_json  # noqa: E402
from benchmarks.microlens import inputs, recommend_latency  # noqa: E402
from linkedout.datasets import microlens_50k  # noqa: E402
from linkedout.extract.config import ExtractConfig, RayOptions  # noqa: E402
from linkedout.extract.pipeline import extract  # noqa: E402
from linkedout.testing.tiny_qwen import build_tiny_qwen  # noqa: E402

LINKEDOUT = [sys.executable, "-m", "linkedout.cli"]


def extraction(videos: Path, tmp: Path, frames: int, max_pixels: int) -> dict:
    import ray

    model = build_tiny_qwen("qwen2_5_vl", tmp / "tiny")
    # One cluster for both runs: the two replicas take a CPU each, decode tasks the others.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    figures = {}
    try:
        runs = (("local", "local", 1), ("ray_1", "ray", 1), ("ray_2", "ray", 2))
        for name, engine, workers in runs:
            config = ExtractConfig(
                out=str(tmp / f"{name}.lance"),
                videos=videos,
                model=str(model),
                frames=frames,
                max_pixels=max_pixels,
                layers="all",
                engine=engine,
                ray=RayOptions(workers=workers),
            )
            summary = extract(config)
            figures[name] = {
                "videos": summary.new,
                "seconds": summary.seconds,
                "videos_per_s": summary.new / summary.seconds,
            }
            print(
                f"  {name:8s} {summary.new} videos in {summary.seconds:6.1f} s  "
                f"{summary.new / summary.seconds:.2f} videos/s",
                flush=True,
            )
    finally:
        ray.shutdown()
    one, two = figures["ray_1"]["videos_per_s"], figures["ray_2"]["videos_per_s"]
    figures["ray_2_over_ray_1"] = two / one
    return figures


def training(features: Path, pairs: Path, tmp: Path, epochs: int) -> dict:
    figures = {}
    for name, extra in (
        ("one_process", []),
        ("ddp_2_processes", ["--devices", "2", "--strategy", "ddp"]),
        ("streamed_features", ["--feature-memory-gb", "0"]),
    ):
        run = tmp / name
        command = [*LINKEDOUT, "train", "--features", str(features), "--interactions", str(pairs)]
        command += ["--out", str(run), "--epochs", str(epochs), "--patience", str(epochs)]
        command += ["--batch-size", "256", "--lr", "0.002", "--accelerator", "cpu", "--quiet"]
        subprocess.run(command + extra, check=True, capture_output=True, text=True)
        epoch = json.loads((run / "epochs.json").read_text())["epochs"][-1]  # warm: the last
        figures[name] = {
            "train_seconds_per_epoch": epoch["train_seconds"],
            "sequences_per_s": epoch["train_sequences"] / epoch["train_seconds"],
            "val_HR@10_last_epoch": epoch["val_HR@10"],
            "validation_seconds_per_epoch": epoch["val_seconds"],
        }
        print(
            f"  {name:18s} {figures[name]['train_seconds_per_epoch']:6.1f} s/epoch  "
            f"{figures[name]['sequences_per_s']:7.0f} sequences/s",
            flush=True,
        )
    base = figures["one_process"]["sequences_per_s"]
    figures["ddp_over_one"] = figures["ddp_2_processes"]["sequences_per_s"] / base
    figures["streamed_over_in_memory"] = figures["streamed_features"]["sequences_per_s"] / base
    return figures


def ranking(run: Path) -> dict:
    import time

    from linkedout.memory import MemoryBudget
    from linkedout.recommend.evaluate import TrainedRun, evaluate_run

    figures: dict = {}
    metrics = {}
    for name, budget in (("in_memory", None), ("from_lance", MemoryBudget(0))):
        start = time.perf_counter()
        metrics[name] = evaluate_run(run, splits=("test",), memory_budget=budget)
        seconds = time.perf_counter() - start
        trained = TrainedRun(run, budget)
        latency = recommend_latency(trained, users=300, warm=10)
        figures[name] = {
            "evaluate_test_seconds": seconds,
            "recommend_p50_ms": latency["p50_ms"],
            "recommend_p99_ms": latency["p99_ms"],
        }
        p50 = latency["p50_ms"]
        print(
            f"  {name:18s} {seconds:6.1f} s per evaluation pass  recommend p50 {p50:.2f} ms",
            flush=True,
        )
    figures["users"] = metrics["in_memory"].splits["test"].model["users"]
    figures["items"] = trained.catalog.num_items - 1
    figures["same_metrics"] = metrics["in_memory"] == metrics["from_lance"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=REPO / "out/benchmark/titles.lance")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared/data/videos")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--max-pixels", type=int, default=224 * 224)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (args.features / "_versions").exists():
        sys.exit(
            f"{args.features} holds no feature dataset: run `make benchmark` (or pass "
            "--features with a titles dataset written by `linkedout extract --texts`)"
        )
    with tempfile.TemporaryDirectory(prefix="linkedout-scale-") as tmp_dir:
        tmp = Path(tmp_dir)
        print(f"1. extraction: {args.frames} frames, at most {args.max_pixels} pixels", flush=True)
        figures = {"extraction": extraction(args.videos, tmp, args.frames, args.max_pixels)}
        print(
            f"2-3. training on the first {args.users:,} MicroLens users, {args.epochs} epochs",
            flush=True,
        )
        pairs, _ = inputs(microlens_50k(), tmp, args.users)
        figures["training"] = training(args.features, pairs, tmp, args.epochs)
        print("4. ranking the catalog from memory and from catalog.lance", flush=True)
        figures["ranking"] = ranking(tmp / "one_process")
    figures["settings"] = {k: str(v) for k, v in vars(args).items() if k != "json"}
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
