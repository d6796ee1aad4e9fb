"""`linkedout extract` refusing bad input through the real command (issue 16, items 5 and 7).

Every refusal is one `error:` line on stderr, exit code 2, no traceback, and the dataset named by
`--out` unchanged; broken files among good ones are stored as failures while the rest are
extracted; a run in which every item failed stores the failures, then exits 2.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.storage import FeatureStore
from tests.cli_harness import assert_one_line_error, run_linkedout, tree_digest
from tests.factories import two_example_clips

REPO = Path(__file__).resolve().parents[2]
CLIPS = REPO / "examples" / "clips"
FAST = ["--frames", "4", "--max-pixels", str(28 * 28 * 12), "--layers", "all", "--quiet"]


@pytest.fixture(scope="module")
def qwen(checkpoints) -> Path:
    return checkpoints["qwen2_5_vl"]


@pytest.fixture(scope="module")
def short_context(qwen, tmp_path_factory) -> Path:
    """The tiny checkpoint with a 64-position decoder: 4 frames fit it, 200 never do."""
    folder = tmp_path_factory.mktemp("short_context") / "qwen"
    shutil.copytree(qwen, folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return two_example_clips(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def dataset(qwen, videos, tmp_path_factory) -> Path:
    """A dataset the refused runs point at: they must leave every byte of it as it was."""
    out = tmp_path_factory.mktemp("stored") / "features.lance"
    one = tmp_path_factory.mktemp("one")
    shutil.copy(videos / "bikes.mp4", one / "bikes.mp4")
    proc = run_linkedout(["extract", "--videos", one, "--model", qwen, "--out", out, *FAST])
    assert proc.returncode == 0, proc.stderr
    return out


CASES = {
    "frames above the hard limit": (["--frames", "100000"], ["--frames 100000", "at most 768"]),
    "frames beyond the model's positions": (
        ["--model", "{short}", "--frames", "200"],
        ["--frames 200", "holds 64 positions", "--frames 30 or fewer"],
    ),
    "limit 0": (["--limit", "0"], ["--limit 0", "at least 1 item"]),
    "more token slots than the video has": (
        ["--tokens-per-layer", "100000"],  # 4 frames: 2 time steps of at most 12 tokens
        ["--tokens-per-layer 100000", "would only repeat others", "--tokens-per-layer 10 or"],
    ),
    "empty prompt": (["--prompt", ""], ["--prompt ''", "is empty"]),
    "prompt empty for every untitled video": (
        ["--prompt", "{title}"],
        ["--prompt '{title}'", "empty for every video", "add a line without {title}"],
    ),
    "a Video LLM given texts": (
        ["--texts", "{texts}", "--videos", None],
        ["a Video LLM", "--videos DIR"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_extract_input_is_refused_before_any_item(
    case, qwen, short_context, videos, dataset, tmp_path
):
    changes, fragments = CASES[case]
    texts = tmp_path / "texts.csv"
    texts.write_text("item,title\na,a dog eats\n")
    values = {"--videos": str(videos), "--model": str(qwen), "--out": str(dataset)}
    extra: list[str] = []
    for flag, value in zip(changes[::2], changes[1::2], strict=True):
        if value is not None:
            value = value.replace("{short}", str(short_context)).replace("{texts}", str(texts))
        if flag in values:
            values[flag] = value
        else:
            extra += [flag, value]
    argv = ["extract"]
    for flag, value in values.items():
        if value is not None:
            argv += [flag, value]
    before = tree_digest(dataset)
    proc = run_linkedout([*argv, *FAST, *extra])
    assert_one_line_error(proc, *fragments)
    assert tree_digest(dataset) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_a_read_only_dataset_is_one_line_and_keeps_its_rows(qwen, videos, dataset, tmp_path):
    out = tmp_path / "features.lance"
    shutil.copytree(dataset, out)
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        before = tree_digest(out)
        proc = run_linkedout(["extract", "--videos", videos, "--model", qwen, "--out", out, *FAST])
        assert_one_line_error(proc, f"cannot write the dataset {out}", "Permission denied")
        assert tree_digest(out) == before
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert FeatureStore.open(out).ids() == ["bikes"]


@pytest.mark.parametrize(
    "error, shown",
    [
        # How Lance reports a full disk: a plain OSError quoting the OS error.
        (
            OSError("LanceError(IO): No space left on device (os error 28), writer.rs:254:9"),
            ["No space left on device (ENOSPC)", "free some space"],
        ),
        (OSError(errno.EROFS, "Read-only file system"), ["(EROFS)", "make it writable"]),
    ],
)
def test_write_errors_name_the_dataset_and_keep_what_was_committed(
    error, shown, qwen, videos, dataset, tmp_path, monkeypatch
):
    out = tmp_path / "features.lance"
    shutil.copytree(dataset, out)
    calls = []

    def full(self, table):
        calls.append(len(table))
        raise error

    monkeypatch.setattr(FeatureStore, "append", full)
    result = CliRunner().invoke(
        app, ["extract", "--videos", str(videos), "--model", str(qwen), "--out", str(out), *FAST]
    )
    assert calls and result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write the dataset {out}:")
    assert all(fragment in lines[0] for fragment in shown), lines[0]
    monkeypatch.undo()
    assert FeatureStore.open(out).ids() == ["bikes"]


def test_dangling_links_fifos_and_untitled_items_fail_alone(qwen, videos, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(videos, folder)
    (folder / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    os.mkfifo(folder / "pipe.mp4")  # opening it to read would block forever
    shutil.copy(videos / "bikes.mp4", folder / "untitled.mp4")
    titles = tmp_path / "titles.csv"
    titles.write_text("item,title\navi_clip,a clip\nbikes,bike tricks\n")
    out = tmp_path / "features.lance"
    proc = run_linkedout(
        ["extract", "--videos", folder, "--model", qwen, "--out", out, *FAST]
        + ["--titles", titles, "--prompt", "Describe: {title}"],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 new, 0 replaced, 0 skipped (already stored), 3 failed" in proc.stdout
    store = FeatureStore.open(out)
    assert sorted(store.ids()) == ["avi_clip", "bikes"]
    reasons = {f.item_id: f.error for f in store.failures()}
    assert reasons.keys() == {"gone", "pipe", "untitled"}
    assert "dangling symlink" in reasons["gone"]
    assert "named pipe (FIFO)" in reasons["pipe"]
    assert "the prompt is empty for this video" in reasons["untitled"]


def test_a_run_where_every_item_failed_stores_them_and_exits_2(qwen, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mkv"):
        (folder / name).symlink_to(tmp_path / f"deleted-{name}")
    out = tmp_path / "features.lance"
    proc = run_linkedout(["extract", "--videos", folder, "--model", qwen, "--out", out, *FAST])
    assert_one_line_error(
        proc,
        "all 3 items failed (3x: dangling symlink",
        f"see `linkedout info {out} --failures 3`",
    )
    assert sorted(f.item_id for f in FeatureStore.open(out).failures()) == ["a", "b", "c"]

    # The same command again (a nightly job): the same bytes would fail the same way, so they
    # are skipped and counted, and the run succeeds.
    again = run_linkedout(["extract", "--videos", folder, "--model", qwen, "--out", out, *FAST])
    assert again.returncode == 0, again.stderr
    assert "3 known failure(s) skipped" in again.stdout and "--retry-failed" in again.stdout
    # Asked to retry, it tries them: they fail as before, which is no error either.
    retried = run_linkedout(
        ["extract", "--videos", folder, "--model", qwen, "--out", out, *FAST, "--retry-failed"]
    )
    assert retried.returncode == 0, retried.stderr
    assert "3 failed (3 of them failed before with the same bytes)" in retried.stdout
    # A new broken file is no known failure: a run where all it tried failed is still exit 2.
    (folder / "d.mp4").symlink_to(tmp_path / "deleted-d.mp4")
    fresh = run_linkedout(["extract", "--videos", folder, "--model", qwen, "--out", out, *FAST])
    assert_one_line_error(fresh, "all 1 items failed (1x: dangling symlink")
