"""BENCHMARKS.md renders again from a committed results JSON alone (no out/ folder), so a change
to the report reaches the markdown without rerunning the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "benchmarks" / "report.py"


def _latest_results() -> Path:
    return max((REPO / "benchmarks" / "results").glob("20*-*cpu.json"))


def test_the_markdown_renders_again_from_a_results_json(tmp_path):
    results = _latest_results()
    before = results.read_bytes()
    done = subprocess.run(
        [sys.executable, str(REPORT), "--results", str(results), "--into", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    figures = json.loads(before)
    assert f"on {figures['generated']['date']}" in markdown  # the JSON's date, not today's
    main = [r for r in figures["microlens"]["rows"] if r["key"] in ("ids", "moe", "moe+ids")]
    minutes = sum(run["wall_seconds"] for row in main for run in row["runs"]) / 60
    assert f"main rows **{minutes:.0f} min**" in markdown
    assert (tmp_path / "gates.png").stat().st_size > 0
    assert results.read_bytes() == before  # the results JSON is left as it is


def test_a_file_that_is_not_a_results_json_is_one_line(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"storage": {}}')
    done = subprocess.run(
        [sys.executable, str(REPORT), "--results", str(bad), "--into", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"--results {bad}: not written by benchmarks/report.py (no microlens figures)"
    ]
