"""The same `linkedout extract` started twice on one `--out` (issue 16, item 1): both finish and
the dataset holds one row per item, whichever process commits an item first."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import lance
import pyarrow.compute as pc

from linkedout.storage import FeatureStore
from tests.cli_harness import LINKEDOUT

CLIPS = Path(__file__).resolve().parents[2] / "examples" / "clips"
# Two frames are one time step: 6 slots (4 video bins of one step, 2 prompt) hold no copies.
FAST = ["--frames", "2", "--max-pixels", str(28 * 28 * 4), "--tokens-per-layer", "6"]
FAST += ["--layers", "all", "--quiet"]


def test_two_unsharded_runs_on_one_dataset_leave_one_row_per_item(checkpoints, tmp_path):
    videos = tmp_path / "conc"
    videos.mkdir()
    for i in range(7):  # the same small clip under seven ids: the test is about the writes
        shutil.copy(CLIPS / "tests_data_test.avi", videos / f"clip{i}.avi")
    out = tmp_path / "conc.lance"
    command = [
        LINKEDOUT,
        "extract",
        "--videos",
        str(videos),
        "--out",
        str(out),
        "--model",
        str(checkpoints["qwen2_vl"]),
        "--commit-every",
        "1",
        *FAST,
    ]
    env = {"OMP_NUM_THREADS": "1", "PATH": ""}
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) for _ in "ab"]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors

    ids = lance.dataset(str(out)).to_table(columns=["item_id"]).column("item_id")
    assert len(ids) == 7 and len(pc.unique(ids)) == 7, ids.to_pylist()
    store = FeatureStore.open(out)
    assert store.info().duplicates == 0 and store.failures() == []
    assert store.load()[1].shape[0] == 7  # what `train` reads
