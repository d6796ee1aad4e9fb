"""A run killed on the way (SIGKILL, nothing saved on exit) resumes from its last checkpoint
and ends where the uninterrupted run ends: same epochs, same best epoch, same metrics.json."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from linkedout.errors import LinkedOutError, SettingError
from linkedout.recommend.config import TrainConfig
from linkedout.recommend.evaluate import TrainedRun
from linkedout.recommend.model import ModelConfig
from linkedout.recommend.run import RunDir, read_checkpoint
from linkedout.recommend.train import train
from tests.recommend.planted import make_planted

SETTINGS = dict(epochs=6, batch_size=64, lr=3e-3, patience=6, quiet=True)
MODEL = dict(d_model=16, dropout=0.1)
KILLED_AFTER = 2
"""The epoch whose checkpoints are the last the killed run writes."""

# The child trains the same run and stops dead after epoch KILLED_AFTER's checkpoints: it tells
# the test (a marker file) and waits to be killed, so the kill lands at a known epoch however
# fast or slow this machine is.
CHILD = """
import json, os, signal, sys, time
from pathlib import Path
from lightning.pytorch.callbacks import ModelCheckpoint
from linkedout.recommend.config import SplitConfig, TrainConfig
from linkedout.recommend.model import ModelConfig
from linkedout.recommend.train import train

kwargs, stop_after, marker = json.loads(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
ctrl_c = sys.argv[4] == "ctrl-c"
save = ModelCheckpoint.on_train_epoch_end

def save_then_wait(self, trainer, module):
    save(self, trainer, module)
    if trainer.current_epoch == stop_after:
        marker.write_text("saved")
        if ctrl_c:  # what Ctrl-C in a terminal sends, raised here as KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(600)

ModelCheckpoint.on_train_epoch_end = save_then_wait
kwargs["model"] = ModelConfig(**kwargs["model"])
kwargs["split"] = SplitConfig(**kwargs["split"])
train(TrainConfig(**kwargs))
"""


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("planted"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The killed run trains in a one-thread child: the same float sums here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(planted, out: Path, **changes) -> TrainConfig:
    settings = {**SETTINGS, **changes}
    model = ModelConfig(**{**MODEL, **settings.pop("model", {})})
    return TrainConfig(
        features=str(planted.features),
        interactions=str(planted.interactions),
        out=str(out),
        model=model,
        **settings,
    )


def _kill_after_checkpoint(config: TrainConfig, root: Path) -> None:
    child = _child(config, root / "checkpointed", "kill")
    marker = root / "checkpointed"
    deadline = time.monotonic() + 120
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the child stopped before its checkpoint:\n{child.communicate()[1]}")
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL


def _child(config: TrainConfig, marker: Path, how: str) -> subprocess.Popen:
    kwargs = asdict(config)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(kwargs), str(KILLED_AFTER), str(marker), how],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _epochs(run: Path) -> list[dict]:
    epochs = json.loads((run / "epochs.json").read_text())["epochs"]
    # Seconds differ from run to run; everything computed must not.
    return [{k: v for k, v in e.items() if "seconds" not in k} for e in epochs]


def _csv_log(run: Path) -> list[tuple[str, str]]:
    with open(run / "logs" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [(r["epoch"], r["val_NDCG@10"]) for r in rows if r.get("val_NDCG@10")]


@pytest.fixture(scope="module")
def runs(planted, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    reference = train(_config(planted, root / "reference"))
    killed = root / "killed"
    _kill_after_checkpoint(_config(planted, killed), root)
    unfinished = root / "unfinished"  # a copy of the killed run, never resumed
    shutil.copytree(killed, unfinished)
    return reference, killed, unfinished


def test_the_killed_run_left_an_unfinished_run_with_a_stale_lock(runs):
    _, killed, _ = runs
    run = RunDir(killed)
    assert run.last_checkpoint.exists() and run.lock_file.exists()
    assert not run.metrics_file.exists() and not run.catalog_file.exists()
    assert [e["epoch"] for e in _epochs(killed)] == list(range(KILLED_AFTER + 1))
    assert read_checkpoint(run.last_checkpoint)["epoch"] == KILLED_AFTER


def test_evaluating_an_unfinished_run_says_how_to_resume_it(runs):
    _, _, unfinished = runs
    with pytest.raises(LinkedOutError, match="unfinished run.*re-run the same `linkedout train`"):
        TrainedRun(unfinished)


def test_other_settings_are_refused_naming_the_difference(runs, planted):
    _, _, unfinished = runs
    with pytest.raises(SettingError, match=r"lr=0.001: .* trained with 0.003") as caught:
        train(_config(planted, unfinished, lr=1e-3))
    assert caught.value.setting == "lr"
    with pytest.raises(SettingError, match=r"epochs=7: .*trained with 6 \(and `d_model` 16\)"):
        train(_config(planted, unfinished, epochs=7, model={"d_model": 32}))
    assert not RunDir(unfinished).metrics_file.exists()  # nothing was trained


def test_a_resumed_run_ends_where_the_uninterrupted_run_ends(runs, planted, capsys):
    reference, killed, _ = runs
    resumed = train(_config(planted, killed))
    err = capsys.readouterr().err
    assert "took over the stale lock" in err and "resuming" in err
    assert _epochs(resumed) == _epochs(reference)
    assert [e["epoch"] for e in _epochs(resumed)] == list(range(SETTINGS["epochs"]))
    assert json.loads((resumed / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text()
    )
    # Lightning's CSV log starts afresh on resume: the earlier epochs' rows are put back.
    assert _csv_log(resumed) == _csv_log(reference)
    run = RunDir(resumed)
    assert not run.lock_file.exists()
    run_id = run.config().run_id
    assert run_id and read_checkpoint(run.best_checkpoint)["linkedout"]["run_id"] == run_id
    assert TrainedRun(resumed).catalog.run_id == run_id
    with pytest.raises(LinkedOutError, match="already holds a trained run"):
        train(_config(planted, killed))


def test_ctrl_c_finishes_a_usable_run_that_the_same_command_continues(runs, planted, tmp_path):
    """Ctrl-C after an epoch: the run is finished from its best checkpoint so far (exit 0, a
    usable run), and the same command then continues it to where the uninterrupted run ends."""
    reference, _, _ = runs
    out = tmp_path / "ctrl-c"
    child = _child(_config(planted, out), tmp_path / "checkpointed", "ctrl-c")
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    assert "the same command continues training it" in err, err
    run = RunDir(out)
    assert run.is_finished() and run.continues()
    assert len(_epochs(out)) == KILLED_AFTER + 1  # epochs 0..2, then the interrupt
    TrainedRun(out)  # usable as it is: evaluate, recommend, serve read it
    continued = train(_config(planted, out))
    assert _epochs(continued) == _epochs(reference)
    assert json.loads((continued / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text()
    )
    assert not run.interrupted_file.exists()
    with pytest.raises(LinkedOutError, match="already holds a trained run"):
        train(_config(planted, out))


def test_a_run_moved_before_it_resumes_ends_the_same(runs, planted, tmp_path):
    reference, _, unfinished = runs
    moved = tmp_path / "moved"  # another path: Lightning's checkpoint callback saw another
    shutil.copytree(unfinished, moved)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(_config(planted, moved))
    # Lightning drops the best score so far when the folder moved, unless told where it went.
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    assert _epochs(moved) == _epochs(reference)
    assert json.loads((moved / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text()
    )


def test_a_run_killed_while_finishing_writes_only_what_is_missing(runs, planted, tmp_path):
    reference, _, _ = runs
    finishing = tmp_path / "finishing"  # trained to the end, killed before metrics.json
    shutil.copytree(reference, finishing)
    (finishing / "metrics.json").unlink()
    shutil.rmtree(finishing / "catalog.lance")
    before = (finishing / "checkpoints" / "last.ckpt").read_bytes()
    train(_config(planted, finishing))
    assert (finishing / "checkpoints" / "last.ckpt").read_bytes() == before  # no epoch more
    assert json.loads((finishing / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text()
    )


def test_a_lock_is_taken_over_only_from_a_dead_process_on_this_host(tmp_path):
    import socket

    from linkedout.recommend.run import RunLock

    run = RunDir(tmp_path / "locked")
    run.path.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    for host, pid, taken in [
        (socket.gethostname(), os.getpid(), False),  # alive: this very process
        ("elsewhere", int(dead.stdout), False),  # cannot be told from here
        (socket.gethostname(), int(dead.stdout), True),  # gone: stale
    ]:
        run.lock_file.write_text(json.dumps({"pid": pid, "host": host, "started": 0}))
        lock = RunLock(run.lock_file)
        if taken:
            assert "stale lock of pid" in lock.acquire()
            assert json.loads(run.lock_file.read_text())["pid"] == os.getpid()
            lock.release()
            assert not run.lock_file.exists()
        else:
            with pytest.raises(LinkedOutError, match=f"pid {pid} on {host}"):
                lock.acquire()
