"""Training over several queries of a feature dataset (`linkedout train --queries`): every
(query, depth) pair is an expert, the gate finds the one that carries the users' preferences,
and explanations name its query and depth. Planted data: only the `mood` query's own slots at
depth 4 carry the signal; the shared video slots and the `what` query are noise."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.service.ranker import Ranker, RankRequest
from tests.cli_harness import assert_one_line_error, run_linkedout
from tests.recommend.planted import make_planted, train_planted

runner = CliRunner()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("planted"), queries=("what", "mood"))


def _train(planted, root, queries: list[str], **kw):
    out = root / f"run-{'-'.join(queries)}-{kw.get('slots')}"
    return train_planted(planted, out, queries=queries, **kw)


@pytest.fixture(scope="module")
def runs(planted, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"both": _train(planted, root, ["all"]), "what": _train(planted, root, ["what"])}


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_the_gate_finds_the_query_and_depth_that_carry_the_preference(runs, planted):
    both, what = _metrics(runs["both"]), _metrics(runs["what"])
    assert both["test"]["model"]["HR@10"] > 0.25
    # The first query alone holds no signal: reading it is barely better than popularity.
    assert both["test"]["model"]["HR@10"] > 2 * what["test"]["model"]["HR@10"]
    weights = dict(zip(both["gate"]["layers"], both["gate"]["mean"], strict=True))
    assert list(weights) == [f"{q}:{x}" for q in ("what", "mood") for x in (2, 4, 6, 8)]
    assert max(weights, key=weights.get) == f"mood:{planted.signal_layer}"


def test_explanations_name_the_query_and_the_depth(runs, planted):
    ranker = Ranker(runs["both"])
    (top,) = ranker.rank([RankRequest(user="u3", k=5, explain=True)])
    assert set(top.gate) == {f"{q}:{x}" for q in ("what", "mood") for x in (2, 4, 6, 8)}
    assert all(isinstance(r.top_expert, str) and ":" in r.top_expert for r in top.items)
    result = runner.invoke(app, ["recommend", str(runs["both"]), "--user", "u3", "--explain"])
    assert result.exit_code == 0, result.output
    assert f"mood:{planted.signal_layer}" in result.output


def test_slots_ablate_what_a_query_holds(runs, planted, tmp_path):
    """The video slots every query shares (the first half here) carry nothing in this data:
    a model over them alone ranks far below one over the query's own slots."""
    video = _train(planted, tmp_path, ["mood"], slots=(0, 2))
    own = _train(planted, tmp_path, ["mood"], slots=(2, 4))
    hr = {
        name: _metrics(run)["test"]["model"]["HR@10"]
        for name, run in (("video", video), ("own", own))
    }
    assert hr["own"] > 0.25 and hr["own"] > 2 * hr["video"]
    assert json.loads((video / "config.json").read_text())["slots"] == [0, 2]


def test_a_query_the_dataset_lacks_is_one_line(planted, tmp_path):
    proc = run_linkedout(
        ["train", "--features", planted.features, "--interactions", planted.interactions]
        + ["--out", tmp_path / "run", "--queries", "what,nope", "--quiet"]
    )
    assert_one_line_error(proc, "holds no query 'nope'; its queries: what, mood")
    assert not (tmp_path / "run").exists()
