from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from linkedout.storage import FeatureStore
from linkedout.testing.factories import item_tokens

REPO = Path(__file__).resolve().parents[2]


def _job(uri: Path, n: int, batch: int, pause: float) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.storage._writer_job",
            str(uri),
            str(n),
            str(batch),
            str(pause),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_writer_killed_mid_run_resumes_with_nothing_lost_or_duplicated(tmp_path):
    uri = tmp_path / "features.lance"
    first = _job(uri, n=200, batch=10, pause=0.3)
    for line in first.stdout:
        if line.startswith("committed 3"):
            break
    first.send_signal(signal.SIGKILL)  # no chance to flush or clean up
    first.wait(30)
    committed = FeatureStore.open(uri).dataset.count_rows()
    assert 30 <= committed < 200

    second = _job(uri, n=200, batch=10, pause=0.0)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    assert f"written={200 - committed} skipped={committed}" in out

    store = FeatureStore.open(uri)
    ids = store.dataset.to_table(columns=["item_id"]).column(0).to_pylist()
    assert len(ids) == len(set(ids)) == 200
    want = [f"item{i:05d}" for i in range(200)]
    got = store.read_tokens(want)
    assert all(torch.equal(got[i], item_tokens(want[i], store.manifest)) for i in range(200))
