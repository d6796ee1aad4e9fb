"""`linkedout extract --videos` end to end: real clips, tiny Qwen checkpoints loaded by path."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.storage import FeatureStore
from linkedout.testing.tiny_qwen import FAMILIES, LAYOUTS, QWEN3
from tests.conftest import shared_data
from tests.factories import clips_folder

REPO = Path(__file__).resolve().parents[2]
LINKEDOUT = str(Path(sys.executable).with_name("linkedout"))
# Small frames keep every forward tiny: at most 12 merged tokens per temporal patch.
FAST = ["--frames", "4", "--max-pixels", str(28 * 28 * 12), "--layers", "all", "--quiet"]
# Small clips, plus two long HEVC ones (seconds to decode) that keep a run going long enough
# to be killed half-way.
SMALL_CLIPS = (
    "carphone_pristine.mp4",
    "tests_data_test.avi",
    "bikes.mp4",
    "chaplin.mp4",
    "nasa_13013.mp4",
    "popeye_T00-1.mkv",
    "popeye_T01-2.mkv",
)

runner = CliRunner()


def _extract(*args: str) -> None:
    result = runner.invoke(app, ["extract", *args])
    assert result.exit_code == 0, result.output + str(result.exception)


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [LINKEDOUT, "extract", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )


def _rows(uri: Path) -> dict[str, torch.Tensor]:
    store = FeatureStore.open(uri)
    ids = sorted(store.ids())
    return dict(zip(ids, store.read_tokens(ids), strict=True))


def _assert_same_rows(a: Path, b: Path) -> None:
    rows_a, rows_b = _rows(a), _rows(b)
    assert sorted(rows_a) == sorted(rows_b)
    for item_id, tokens in rows_a.items():
        assert torch.equal(tokens.view(torch.int16), rows_b[item_id].view(torch.int16)), item_id


@pytest.fixture(scope="module")
def qwen25(checkpoints) -> str:
    return str(checkpoints["qwen2_5_vl"])


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory) -> Path:
    folder = clips_folder(tmp_path_factory.mktemp("small_videos"), SMALL_CLIPS)
    return folder


@pytest.fixture(scope="module")
def reference(qwen25, small_videos, tmp_path_factory) -> Path:
    """One uninterrupted, unsharded run (in its own process, like the runs it is compared to)."""
    out = tmp_path_factory.mktemp("reference") / "features.lance"
    proc = _cli("--videos", str(small_videos), "--model", qwen25, "--out", str(out), *FAST)
    assert proc.wait(300) == 0, proc.stdout.read()
    return out


def _extract_and_check(videos: Path, folder: Path, family: str, tmp_path: Path) -> None:
    out = tmp_path / "features.lance"
    _extract(
        "--videos",
        str(videos),
        "--model",
        str(folder),
        "--out",
        str(out),
        "--batch-size",
        "2",
        *FAST,
    )
    store = FeatureStore.open(out)
    clips = sorted(
        p.stem for p in videos.iterdir() if p.suffix in {".mp4", ".mkv", ".webm", ".avi"}
    )
    assert store.failures() == []
    assert sorted(store.ids()) == clips
    m = store.manifest
    assert (m.backbone_kind, m.layers, m.frames_per_video) == ("video-llm", (0, 1, 2, 3, 4), 4)
    assert m.backbone == str(folder) and m.backbone_revision
    assert ("timestamp" in m.pooling) == (family in QWEN3)
    rows = store.dataset.to_table(columns=["item_id", "frame_indices", "token_counts"]).to_pylist()
    for row in rows:
        assert len(row["frame_indices"]) == 4
        assert row["token_counts"]["video"] > 0 and row["token_counts"]["prompt"] > 0


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])  # per-frame and per-clip budgets
def test_every_shared_clip_extracts(checkpoints, family, tmp_path):
    _extract_and_check(shared_data("videos"), checkpoints[family], family, tmp_path)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_and_layout_extracts(checkpoints, saved_checkpoints, family, layout, tmp_path):
    """Two codecs and containers per checkpoint; all clips and codecs are read above."""
    (tmp_path / "videos").mkdir()
    videos = clips_folder(tmp_path / "videos", ["bikes.mp4", "flipping_a_pancake.mkv"])
    folder = (checkpoints if layout == "hub" else saved_checkpoints)[family]
    _extract_and_check(videos, folder, family, tmp_path)


def test_broken_files_become_failures_and_the_rest_is_stored(qwen25, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(shared_data("videos", "carphone_pristine.mp4"), videos / "good.mp4")
    whole = shared_data("videos", "bikes.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(whole[: len(whole) // 5])
    (videos / "notes.mp4").write_text("this is not a video")
    out = tmp_path / "features.lance"
    _extract("--videos", str(videos), "--model", qwen25, "--out", str(out), *FAST)
    store = FeatureStore.open(out)
    assert store.ids() == ["good"]
    reasons = {f.item_id: f.error for f in store.failures()}
    assert set(reasons) == {"truncated", "notes"}
    assert "not a readable video" in reasons["notes"]


def test_the_same_video_twice_gives_bitwise_equal_rows(qwen25, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(shared_data("videos", "chaplin.mp4"), videos / name)
    out = tmp_path / "features.lance"
    _extract(
        "--videos", str(videos), "--model", qwen25, "--out", str(out), "--batch-size", "2", *FAST
    )
    rows = _rows(out)
    assert torch.equal(rows["a"].view(torch.int16), rows["b"].view(torch.int16))


def _stored_rows(uri: Path) -> int:
    """Rows committed so far; 0 while the writer has not committed its first batch."""
    try:
        return FeatureStore.open(uri).dataset.count_rows()
    except Exception:  # the folder exists before its first commit is readable
        return 0


def test_a_killed_run_resumes_to_the_same_dataset(qwen25, small_videos, reference, tmp_path):
    out = tmp_path / "features.lance"
    args = ["--videos", str(small_videos), "--model", qwen25, "--out", str(out), *FAST]
    first = _cli(*args, "--commit-every", "2")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if _stored_rows(out) >= 2:
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    stored = _stored_rows(out)
    assert first.returncode == -signal.SIGKILL, "the first run ended before it was killed"
    assert 2 <= stored < len(SMALL_CLIPS)
    second = _cli(*args)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    assert f"{stored} skipped" in output
    _assert_same_rows(out, reference)


def test_two_shards_together_equal_one_unsharded_run(qwen25, small_videos, reference, tmp_path):
    out = tmp_path / "features.lance"
    shards = [
        _cli(
            "--videos",
            str(small_videos),
            "--model",
            qwen25,
            "--out",
            str(out),
            "--shard",
            f"{i}/2",
            *FAST,
        )
        for i in range(2)
    ]
    for proc in shards:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
    _assert_same_rows(out, reference)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--videos", "{tmp}/nowhere"], "no such directory"),
        (["--videos", "{tmp}"], "no video"),
        (["--videos", "{videos}", "--model", "{tmp}/missing-model"], "no such folder"),
        (["--videos", "{videos}", "--model", "nobody/no-such-model"], "cannot load model"),
        (["--videos", "{videos}", "--model", "{bert}"], "not a supported Video LLM"),
        (["--videos", "{videos}", "--model", "{qwen}", "--layers", "2,9"], "must lie in 0..4"),
        (["--videos", "{videos}", "--model", "{qwen}", "--frames", "0"], "--frames 0"),
        (["--videos", "{videos}", "--model", "{qwen}", "--titles", "{titles}"], "title"),
        (["--videos", "{videos}", "--model", "{qwen}", "--shard", "2/2"], "need 0 <= I < N"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    args, message, qwen25, small_videos, tmp_path, monkeypatch
):
    # The hub library reads HF_HUB_OFFLINE once, at import; without its constant set it retries
    # an unreachable hub for ~20 s before giving up.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    titles = tmp_path / "titles.csv"
    titles.write_text("video,caption_id\nx,1\n")
    fill = dict(tmp=tmp_path, videos=small_videos, qwen=qwen25, bert=bert, titles=titles)
    out = tmp_path / "out.lance"
    result = runner.invoke(
        app, ["extract", *[a.format(**fill) for a in args], "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists() or FeatureStore.open(out).dataset.count_rows() == 0


def test_changing_the_recipe_on_an_existing_dataset_is_refused(qwen25, reference, small_videos):
    before = FeatureStore.open(reference).version
    result = runner.invoke(
        app,
        [
            "extract",
            "--videos",
            str(small_videos),
            "--model",
            qwen25,
            "--out",
            str(reference),
            "--frames",
            "8",
            "--quiet",
        ],
    )
    assert result.exit_code == 2
    assert "made another way" in result.stderr and "frames_per_video" in result.stderr
    assert FeatureStore.open(reference).version == before


def test_new_tokens_are_generated_and_pooled(qwen25, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(shared_data("videos", "carphone_pristine.mp4"), videos / "clip.mp4")
    out = tmp_path / "features.lance"
    _extract(
        "--videos", str(videos), "--model", qwen25, "--out", str(out), "--new-tokens", "2", *FAST
    )
    store = FeatureStore.open(out)
    assert "generated mean" in store.manifest.pooling
    assert store.manifest.recipe["new_tokens"] == "2"
    row = store.dataset.to_table(columns=["token_counts"]).to_pylist()[0]
    assert 1 <= row["token_counts"]["generated"] <= 2
