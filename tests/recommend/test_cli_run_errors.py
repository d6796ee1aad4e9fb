"""Bad run directories through the real `linkedout` command: `train --out` that is not a new
folder or a resumable run, settings Lightning refuses, a run being trained, and damaged or
mixed-up runs for `evaluate` and `recommend`. Each case: one line, exit 2, nothing stored
changed."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import lance
import pytest
import torch

from linkedout.errors import LinkedOutError
from linkedout.recommend.catalog_dataset import FORMAT, FORMAT_KEY
from linkedout.recommend.config import TrainConfig
from linkedout.recommend.evaluate import TrainedRun
from linkedout.recommend.model import ModelConfig
from linkedout.recommend.train import train
from tests.cli_harness import assert_one_line_error, run_linkedout, tree_digest
from tests.recommend.planted import make_planted

QUICK = dict(epochs=2, batch_size=64, lr=3e-3, patience=2, quiet=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two small finished runs of the same data (same item count, other seeds)."""
    root = tmp_path_factory.mktemp("cli-runs")
    planted = make_planted(root / "planted")

    def run(name: str, seed: int) -> Path:
        return train(
            TrainConfig(
                features=str(planted.features),
                interactions=str(planted.interactions),
                out=str(root / name),
                model=ModelConfig(d_model=16, dropout=0.1),
                seed=seed,
                **QUICK,
            )
        )

    return planted, run("one", 1), run("other", 2)


class Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _truncate(run: Path, tmp: Path) -> None:
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])


def _random_bytes(run: Path, tmp: Path) -> None:
    (run / "checkpoints" / "best.ckpt").write_bytes(os.urandom(4096))


def _pickled_payload(run: Path, tmp: Path) -> None:
    torch.save({"state_dict": Payload(tmp / "payload-ran")}, run / "checkpoints" / "best.ckpt")


def _corrupt_config(run: Path, tmp: Path) -> None:
    (run / "config.json").write_text('{"train": {"features": ')


def _config_without_train(run: Path, tmp: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    del config["train"]
    (run / "config.json").write_text(json.dumps(config))


def _no_catalog(run: Path, tmp: Path) -> None:
    shutil.rmtree(run / "catalog.lance")


def _newer_catalog_format(run: Path, tmp: Path) -> None:
    """catalog.lance as a later linkedout would write it: same rows, a higher format number."""
    table = lance.dataset(str(run / "catalog.lance")).to_table()
    metadata = {**table.schema.metadata, FORMAT_KEY: str(FORMAT + 1).encode()}
    shutil.rmtree(run / "catalog.lance")
    lance.write_dataset(table.replace_schema_metadata(metadata), str(run / "catalog.lance"))


def _unfinished(run: Path, tmp: Path) -> None:
    (run / "metrics.json").unlink()


DAMAGED = {
    "truncated checkpoint": (_truncate, ["best.ckpt", "not a readable checkpoint"]),
    "random-bytes checkpoint": (_random_bytes, ["best.ckpt", "not a readable checkpoint"]),
    "pickled payload": (_pickled_payload, ["best.ckpt", "holds pickled objects"]),
    "corrupt config.json": (_corrupt_config, ["config.json is damaged"]),
    "config.json without train": (_config_without_train, ["config.json", "no 'train' entry"]),
    "missing catalog": (_no_catalog, ["catalog.lance is missing"]),
    "catalog of a newer format": (
        _newer_catalog_format,
        [f"catalog.lance is catalog format {FORMAT + 1}", "upgrade linkedout"],
    ),
    "unfinished run": (_unfinished, ["unfinished run", "re-run the same `linkedout train`"]),
    "catalog of another run": (None, ["catalog.lance belongs to another training run"]),
}

# A `linkedout` process costs seconds (torch and Lightning imports): the real command runs
# one case of each kind of damage; every case also runs in-process, through the TrainedRun
# both commands open a run with.
THROUGH_THE_CLI = [
    ("truncated checkpoint", "evaluate"),
    ("random-bytes checkpoint", "recommend"),
    ("pickled payload", "evaluate"),
    ("corrupt config.json", "evaluate"),
    ("missing catalog", "recommend"),
    ("catalog of a newer format", "recommend"),
    ("unfinished run", "evaluate"),
    ("catalog of another run", "evaluate"),
]


def _damaged_copy(case: str, trained, tmp_path: Path) -> tuple[Path, list[str]]:
    _, one, other = trained
    run = tmp_path / "run"
    shutil.copytree(one, run)
    damage, fragments = DAMAGED[case]
    if damage is None:  # same item count: without run ids it would be ranked, wrongly
        shutil.rmtree(run / "catalog.lance")
        shutil.copytree(other / "catalog.lance", run / "catalog.lance")
    else:
        damage(run, tmp_path)
    return run, fragments


@pytest.mark.parametrize("case, command", THROUGH_THE_CLI)
def test_a_damaged_run_is_one_line_naming_the_file(case, command, trained, tmp_path):
    run, fragments = _damaged_copy(case, trained, tmp_path)
    before = tree_digest(run)
    argv = [command, run] + (["--user", "u3"] if command == "recommend" else [])
    # An explicit weights_only=True must win over the variable that turns it off by default.
    proc = run_linkedout(argv, env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert_one_line_error(proc, *fragments)
    assert tree_digest(run) == before
    assert not (tmp_path / "payload-ran").exists()


@pytest.mark.parametrize("case", list(DAMAGED))
def test_every_damage_is_refused_when_a_run_is_opened(case, trained, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    run, fragments = _damaged_copy(case, trained, tmp_path)
    before = tree_digest(run)
    with pytest.raises(LinkedOutError) as caught:
        TrainedRun(run)
    message = str(caught.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    assert tree_digest(run) == before
    assert not (tmp_path / "payload-ran").exists()


def _train_argv(planted, out: Path, *extra) -> list:
    argv = ["train", "--features", planted.features, "--interactions", planted.interactions]
    argv += ["--out", out, "--d-model", "16", "--dropout", "0.1", "--seed", "1"]
    for key, value in QUICK.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [value])
    return argv + list(extra)


def _user_files(tmp: Path) -> Path:
    folder = tmp / "my-videos"
    folder.mkdir()
    (folder / "holiday.mp4").write_bytes(b"\0" * 100)
    (folder / "config.json.txt").write_text("mine")
    return folder


def _regular_file(tmp: Path) -> Path:
    path = tmp / "notes.txt"
    path.write_text("not a folder")
    return path


def _live_lock(tmp: Path) -> Path:
    out = tmp / "busy"
    out.mkdir()
    # This test's own process: alive, on this host.
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "started": 1.0}
    (out / "train.lock").write_text(json.dumps(lock))
    return out


TRAIN_CASES = {
    "folder of user files": (_user_files, [], ["is not a linkedout run directory", "holiday"]),
    "regular file": (_regular_file, [], ["is a file"]),
    "no gpu": (
        lambda tmp: tmp / "new-run",
        ["--accelerator", "gpu"],
        ["cannot train with --accelerator gpu"],
    ),
    "live lock": (_live_lock, [], ["being trained by another", f"pid {os.getpid()}"]),
    "unfinished run, other settings": (
        "unfinished",
        ["--lr", "0.001"],
        ["--lr 0.001:", "unfinished run", "trained with 0.003"],
    ),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_refuses_an_out_it_must_not_write(case, trained, tmp_path):
    planted, one, _ = trained
    if case == "no gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    make_out, extra, fragments = TRAIN_CASES[case]
    if make_out == "unfinished":
        out = tmp_path / "unfinished"
        shutil.copytree(one, out)
        (out / "metrics.json").unlink()
    else:
        out = make_out(tmp_path)
    before = tree_digest(out)
    proc = run_linkedout(_train_argv(planted, out, *extra))
    assert_one_line_error(proc, *fragments)
    assert tree_digest(out) == before
    if case == "no gpu":
        assert not out.exists()  # refused before the run directory was made
