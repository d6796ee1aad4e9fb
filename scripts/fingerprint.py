"""Fingerprint what linkedout computes, to show a refactor changed no bit of it.

Runs the real CLI of whichever linkedout is importable (point PYTHONPATH at a checkout to test
another one) on fixed inputs and prints sha256 digests of everything it stored:
  - `extract` of the shared clips with a tiny random Qwen2.5-VL (two settings), every column of
    every row except the wall-clock ones (`extracted_at`, `extract_seconds`), and the manifest
    minus its provenance;
  - `train` of the planted-signal dataset (deterministic, CPU): every tensor of the best
    checkpoint, catalog.lance, metrics.json and epochs.json minus their seconds.

    PYTHONPATH=. python scripts/fingerprint.py --work /tmp/fp-after > after.json
    PYTHONPATH=/tmp/before python scripts/fingerprint.py --work /tmp/fp-before > before.json
    diff before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lance
import torch

WALL_CLOCK = {"extracted_at", "extract_seconds", "train_seconds", "val_seconds", "seconds"}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "linkedout.cli", *args], check=True, stdout=sys.stderr)


def table_digests(uri: Path, key: str) -> dict[str, str]:
    table = lance.dataset(str(uri)).to_table()
    table = table.sort_by(key)
    return {
        name: digest(repr(table.column(name).to_pylist()).encode())
        for name in table.column_names
        if name not in WALL_CLOCK
    }


def manifest_digest(uri: Path) -> str:
    meta = lance.dataset(str(uri)).schema.metadata
    manifest = json.loads(next(v for k, v in meta.items() if b"manifest" in k))
    # The checkpoint's folder (and the revision derived from it) is the scratch folder's.
    for volatile in ("provenance", "linkedout_version", "backbone", "backbone_revision"):
        manifest.pop(volatile, None)
    return digest(json.dumps(manifest, sort_keys=True).encode())


def without_seconds(value):
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k not in WALL_CLOCK}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def extraction(work: Path, videos: Path) -> dict:
    from linkedout.testing.tiny_qwen import build_tiny_qwen

    model = build_tiny_qwen("qwen2_5_vl", work / "qwen2_5_vl")
    settings = {
        "default": [],
        "generated": ["--new-tokens", "2", "--batch-size", "2", "--layers", "all"],
    }
    out = {}
    for name, extra in settings.items():
        uri = work / f"{name}.lance"
        cli("extract", "--videos", str(videos), "--model", str(model), "--out", str(uri),
            "--frames", "4", "--device", "cpu", "--quiet", *extra)  # fmt: skip
        out[name] = {"manifest": manifest_digest(uri), "columns": table_digests(uri, "item_id")}
    return out


def training(work: Path, *extra: str) -> dict:
    from tests.recommend.planted import make_planted

    planted = make_planted(work / f"planted{'-'.join(extra)}")
    run = work / f"run{'-'.join(extra)}"
    cli("train", "--features", str(planted.features), "--interactions", str(planted.interactions),
        "--out", str(run), "--ids", "--epochs", "3", "--seed", "0", "--accelerator", "cpu",
        "--quiet", *extra)  # fmt: skip
    state = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    return {
        "checkpoint": {
            name: digest(t.contiguous().view(torch.uint8).numpy().tobytes())
            for name, t in sorted(state.items())
        },
        "catalog": table_digests(run / "catalog.lance", "item_id"),
        "metrics": without_seconds(json.loads((run / "metrics.json").read_text())),
        "epochs": without_seconds(json.loads((run / "epochs.json").read_text())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="empty scratch folder")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
    parser.add_argument("--videos", type=Path, default=shared, help="the shared clips")
    parser.add_argument("--only", choices=["extract", "train"], help="fingerprint one stage")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=False)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = {}
    if args.only in (None, "extract"):
        result["extract"] = extraction(args.work, args.videos.resolve())
    if args.only in (None, "train"):
        result["train"] = training(args.work)
        # A sampled softmax (the path large catalogs take) draws its negatives in every step.
        result["train_sampled"] = training(args.work, "--full-softmax-max-items", "0")
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
