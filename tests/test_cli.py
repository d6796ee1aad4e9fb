from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.storage import FailedItem, FeatureStore, FeatureWriter
from linkedout.testing.factories import make_manifest, make_rows

runner = CliRunner()
LINKEDOUT = str(Path(sys.executable).with_name("linkedout"))


@pytest.fixture
def store(tmp_path):
    s = FeatureStore.create(tmp_path / "f.lance", make_manifest())
    with FeatureWriter(s) as w:
        w.extend(make_rows(4, s.manifest))
        w.add(FailedItem("broken", "no video stream", "h", "/v/broken.avi"))
    return s


def test_info_shows_the_manifest_and_counts(store):
    result = runner.invoke(app, ["info", store.uri])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "4 with features, 1 failed" in out
    assert "[layers, tokens, dim] = [3, 4, 8] float16" in out
    assert "tests/tiny-qwen2-vl" in out and "0, 2, 4" in out
    assert "broken" in out and "no video stream" in out


def test_info_json_is_machine_readable(store):
    result = runner.invoke(app, ["info", store.uri, "--json"])
    data = json.loads(result.output)
    assert data["rows"] == 4 and data["failures"] == 1
    assert data["manifest"]["layers"] == [0, 2, 4]
    assert data["failed_items"] == [
        {"item_id": "broken", "source": "/v/broken.avi", "error": "no video stream"}
    ]


def test_export_command_writes_copy_and_card(store, tmp_path):
    result = runner.invoke(app, ["export", store.uri, str(tmp_path / "copy.lance")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "copy.lance" / "README.md").exists()
    assert len(FeatureStore.open(tmp_path / "copy.lance")) == 4


def test_export_and_info_over_s3_with_storage_options(store, s3_bucket):
    bucket, options = s3_bucket
    flags = [x for k, v in options.items() for x in ("--storage-option", f"{k}={v}")]
    dest = f"s3://{bucket}/cli.lance"
    assert runner.invoke(app, ["export", store.uri, dest, *flags]).exit_code == 0
    result = runner.invoke(app, ["info", dest, "--json", *flags])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "{tmp}/missing.lance"], "the path does not exist"),
        (["info", "{tmp}", "--storage-option", "novalue"], "is not KEY=VALUE"),
        (["export", "{store}", "{store}"], "already holds a Lance dataset"),
    ],
)
def test_bad_input_gets_one_line_and_exit_code_2(store, tmp_path, args, message):
    argv = [a.format(tmp=tmp_path, store=store.uri) for a in args]
    proc = subprocess.run([LINKEDOUT, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert len(FeatureStore.open(store.uri)) == 4  # nothing stored was touched


def test_version_and_help():
    assert runner.invoke(app, ["--version"]).output.startswith("linkedout ")
    assert "Copy a feature dataset" in runner.invoke(app, ["--help"]).output


def test_extract_help_lists_every_supported_video_family():
    from linkedout.extract.backbones import VIDEO_FAMILIES

    output = runner.invoke(app, ["extract", "--help"], terminal_width=200).output
    missing = [family for family in VIDEO_FAMILIES if family not in output]
    assert not missing, f"`extract --help` does not name {missing}"
