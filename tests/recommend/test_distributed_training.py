"""`linkedout train --devices 2 --strategy ddp`: two CPU processes (gloo) on this machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from linkedout.recommend.config import TrainConfig
from linkedout.recommend.data import LengthGroupedBatches
from linkedout.recommend.evaluate import evaluate_run
from linkedout.recommend.model import ModelConfig
from linkedout.recommend.train import train
from tests.recommend.planted import make_planted

LINKEDOUT = str(Path(sys.executable).with_name("linkedout"))
SETTINGS = dict(epochs=8, batch_size=64, lr=3e-3, patience=8, seed=7)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("planted"))


def test_ranks_split_each_batch_and_together_take_one_process_steps():
    lengths = [1 + (i * 7) % 13 for i in range(1000)]
    one = list(LengthGroupedBatches(lengths, 64, seed=3))
    halves = [list(LengthGroupedBatches(lengths, 64, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == len(one)  # equal steps, or DDP would hang
    assert [a + b for a, b in zip(*halves)] == one
    odd = [
        list(LengthGroupedBatches(lengths[:65], 64, seed=3, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert len(odd[0]) == len(odd[1]) == 1  # the one-row batch cannot be split: left out by both


def _train_ddp(planted, out: Path) -> subprocess.CompletedProcess:
    args = [LINKEDOUT, "train", "--features", str(planted.features)]
    args += ["--interactions", str(planted.interactions), "--out", str(out)]
    args += ["--d-model", "32", "--dropout", "0.1", "--quiet", "--accelerator", "cpu"]
    args += ["--devices", "2", "--strategy", "ddp"]
    for key, value in SETTINGS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return subprocess.run(args, capture_output=True, text=True, timeout=400)


def test_two_processes_validate_as_one_and_train_as_well(planted, tmp_path):
    run = tmp_path / "ddp"
    result = _train_ddp(planted, run)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("users: valid") == 1  # one report, from the first rank

    # Validation during training was sharded over the two ranks and summed: it must equal
    # one process ranking every validation user with the same (best) checkpoint.
    epochs = json.loads((run / "epochs.json").read_text())["epochs"]
    best = max(epochs, key=lambda e: e["val_NDCG@10"])
    single = evaluate_run(run, splits=("valid",)).splits["valid"].model
    for name in ("HR@10", "NDCG@10", "HR@20", "NDCG@20"):
        assert best[f"val_{name}"] == pytest.approx(single[name], abs=1e-6), name

    one = train(
        TrainConfig(
            features=str(planted.features),
            interactions=str(planted.interactions),
            out=str(tmp_path / "one"),
            model=ModelConfig(d_model=32, dropout=0.1),
            quiet=True,
            **SETTINGS,
        )
    )
    ddp_test = json.loads((run / "metrics.json").read_text())["test"]["model"]
    one_test = json.loads((one / "metrics.json").read_text())["test"]["model"]
    assert ddp_test["users"] == one_test["users"] == 300
    assert ddp_test["HR@10"] == pytest.approx(one_test["HR@10"], abs=0.1)
    assert ddp_test["HR@10"] > 0.3  # far above popularity on the planted preference
