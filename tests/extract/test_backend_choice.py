"""`linkedout extract --backend`: what a user meets when the choice cannot run here."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from linkedout.cli import app
from tests.conftest import shared_data

runner = CliRunner()


def _one_line_error(args: list[str]) -> str:
    result = runner.invoke(app, ["extract", *args, "--quiet"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_without_vllm_the_backend_says_how_to_get_it(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` meets where it is absent
    videos = shared_data("videos", "bikes.mp4").parent
    out = tmp_path / "features.lance"
    args = ["--videos", str(videos), "--model", str(checkpoints["qwen2_vl"]), "--out", str(out)]
    line = _one_line_error([*args, "--backend", "vllm", "--limit", "1"])
    assert "linkedout[vllm]" in line and "make vllm-env" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backend", "tensorrt"], "--backend 'tensorrt': use transformers, vllm"),
        (
            ["--backend", "vllm", "--model", "sentence-transformers/all-MiniLM-L6-v2"],
            "serves qwen2_vl, qwen2_5_vl, qwen3_vl only",
        ),
    ],
)
def test_a_backend_that_cannot_serve_the_run_is_refused(extra, message, tmp_path):
    texts = tmp_path / "titles.csv"
    texts.write_text("item_id,title\na,a dog\n")
    out = tmp_path / "features.lance"
    line = _one_line_error(["--texts", str(texts), "--out", str(out), *extra])
    assert message in line
    assert not out.exists()


def test_vllm_refuses_a_family_whose_rows_it_cannot_match(checkpoints, tmp_path):
    """The pinned vLLM cannot load Qwen3-VL-MoE beside its transformers: refused, with why."""
    videos = shared_data("videos", "bikes.mp4").parent
    out = tmp_path / "features.lance"
    model = checkpoints["qwen3_vl_moe"]
    args = ["--videos", str(videos), "--model", str(model), "--out", str(out)]
    line = _one_line_error([*args, "--backend", "vllm", "--limit", "1"])
    assert "serves qwen2_vl, qwen2_5_vl, qwen3_vl only" in line and "qwen3_vl_moe" in line
    assert "norm_topk_prob" in line and "--backend transformers" in line
    assert not out.exists()
