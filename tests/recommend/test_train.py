"""Training, evaluation and serving on planted-signal data built by the test."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.errors import LinkedOutError
from linkedout.memory import MemoryBudget
from linkedout.recommend.catalog_dataset import CatalogDataset
from linkedout.recommend.evaluate import TrainedRun, evaluate_run
from linkedout.recommend.run import RunDir
from linkedout.service.ranker import Ranker, RankRequest
from linkedout.service.results import user_history
from linkedout.storage import FeatureRow, FeatureStore, FeatureWriter
from linkedout.storage.pins import create_tag
from tests.recommend.planted import make_planted, train_planted, write_new_items

runner = CliRunner()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("planted"))


def _train(planted, root, fusion="moe", ids=False, **kw):
    return train_planted(planted, root / f"run-{fusion}-{ids}", fusion, ids, **kw)


@pytest.fixture(scope="module")
def runs(planted, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        name: _train(planted, root, fusion, ids)
        for name, fusion, ids in [
            ("moe", "moe", False),
            ("last", "last", False),
            ("ids", "none", True),
        ]
    }


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_moe_learns_the_planted_preference_far_above_popularity(runs):
    test = _metrics(runs["moe"])["test"]
    assert test["model"]["HR@10"] > 0.25
    assert test["model"]["HR@10"] > 10 * test["popularity"]["HR@10"]


def test_the_gate_puts_most_weight_on_the_informative_depth(runs, planted):
    gate = _metrics(runs["moe"])["gate"]
    weights = dict(zip(gate["layers"], gate["mean"], strict=True))
    assert max(weights, key=weights.get) == planted.signal_layer
    assert weights[planted.signal_layer] > 0.5
    assert (runs["moe"] / "gates.png").stat().st_size > 10_000


def test_moe_beats_the_last_layer_when_the_signal_is_not_there(runs):
    moe, last = _metrics(runs["moe"])["test"]["model"], _metrics(runs["last"])["test"]["model"]
    assert moe["NDCG@10"] > 2 * last["NDCG@10"]


def test_content_ranks_unseen_items_and_ids_cannot(runs, planted):
    chance = 10 / 240  # HR@10 of a random ranking of the 240 items
    content = _metrics(runs["moe"])["test_cold_start"]["model"]
    ids_only = _metrics(runs["ids"])["test_cold_start"]["model"]
    assert content["users"] == ids_only["users"] >= 100
    assert content["HR@10"] > 4 * chance
    assert ids_only["HR@10"] < 2.5 * chance


def test_the_long_tail_slice_holds_the_test_targets_seen_one_to_five_times(runs):
    split = RunDir(runs["ids"]).split()
    counts = split.train_counts()
    targets = [split.target(u, "test") for u in range(len(split.users))]
    expected = sum(1 <= counts[t] <= 5 for t in targets)
    for name in ("ids", "moe"):
        tail = _metrics(runs[name])["test_long_tail"]
        assert tail["model"]["users"] == tail["popularity"]["users"] == expected > 0


def _full_scores(run: TrainedRun, histories: list[list[int]]) -> torch.Tensor:
    """Every item's score from one product over the whole in-memory catalog (the reference)."""
    h, gate = run.user_states(histories)
    with torch.inference_mode():  # the user side of a score passes through model weights
        scores = run.model.score(h, gate, run.catalog.experts, run.catalog.ids)
        scores[:, 0] = float("-inf")
    return scores


def test_reloaded_run_reproduces_scores_and_recommend_agrees_with_evaluate(runs):
    a, b = TrainedRun(runs["moe"]), TrainedRun(runs["moe"])
    histories = [a.split.history(u, "test") for u in range(5)]
    assert torch.equal(_full_scores(a, histories), _full_scores(b, histories))
    evaluated = evaluate_run(runs["moe"], splits=("test",)).to_json()
    assert evaluated["test"] == _metrics(runs["moe"])["test"]
    assert RunDir(runs["moe"]).metrics().to_json() == _metrics(runs["moe"])
    user = a.split.users[3]
    history = user_history(a, user)
    scores = _full_scores(a, [[a.index[i] for i in history]])[0].clone()
    scores[[a.index[i] for i in history]] = float("-inf")
    (top,) = Ranker(runs["moe"]).rank([RankRequest(history, k=5, explain=True)])
    assert [r.item_id for r in top.items] == [a.item_ids[i - 1] for i in scores.topk(5).indices]
    assert set(top.gate) == {2, 4, 6, 8} and abs(sum(top.gate.values()) - 1) < 1e-5
    for r in top.items:
        assert abs(sum(r.expert_scores) - r.score) < 1e-4 and r.top_expert in top.gate


def test_cli_evaluate_and_recommend(runs):
    result = runner.invoke(app, ["evaluate", str(runs["moe"]), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["test"]["model"]["users"] == 300
    result = runner.invoke(
        app, ["recommend", str(runs["moe"]), "--user", "u3", "--k", "3", "--explain"]
    )
    assert result.exit_code == 0, result.output
    assert "strongest layer" in result.output and "gate over depths" in result.output
    result = runner.invoke(
        app, ["recommend", str(runs["ids"]), "--history", "v0001,v0009", "--json"]
    )
    assert len(json.loads(result.output)["items"]) == 10


def test_explain_on_an_id_only_run_ranks_and_says_there_is_no_depth(runs):
    trained = TrainedRun(runs["ids"])
    history = user_history(trained, trained.split.users[3])
    ranker = Ranker(runs["ids"])
    explained, plain = ranker.rank(
        [RankRequest(history, k=4, explain=True), RankRequest(history, k=4)]
    )
    assert explained.gate == {} and all(r.top_expert is None for r in explained.items)
    assert explained.items == plain.items
    result = runner.invoke(app, ["recommend", str(runs["ids"]), "--user", "u3", "--explain"])
    assert result.exit_code == 0, result.output
    assert "no depths to explain" in result.output and "strongest layer" not in result.output


TRAIN = "train --features {features} --out {tmp}/r --interactions"


@pytest.mark.parametrize(
    "command, message",
    [
        ("recommend {run} --user nobody", "user 'nobody' is not in this run"),
        ("recommend {run} --history x1,x2", "none of the 2 history item(s)"),
        ("recommend {tmp}", "exactly one of --user"),
        ("evaluate {tmp}", "holds no trained run"),
        ("evaluate {run} --catalog-memory-gb -1", "give a size of 0 or more"),
        ("recommend {old} --user u1", "trained by an older linkedout"),
        (f"{TRAIN} {{bad}}", "user column"),
        (f"{TRAIN} {{foreign}}", "have no stored features"),
        (f"{TRAIN} {{interactions}} --fusion layer:3", "depth 3 is not stored"),
        (f"{TRAIN} {{interactions}} --fusion none", "add --ids"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(command, message, runs, planted, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("who,what\nu1,v0001\n")
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("user,item\n" + "".join(f"u{i},x{i}\n" for i in range(50)))
    old = tmp_path / "old-run"  # a run directory from before catalog.lance
    shutil.copytree(runs["moe"], old, ignore=shutil.ignore_patterns("catalog.lance"))
    fill = dict(
        old=old,
        run=runs["moe"],
        tmp=tmp_path,
        features=planted.features,
        bad=bad,
        foreign=foreign,
        interactions=planted.interactions,
    )
    result = runner.invoke(app, command.format(**fill).split())
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_a_run_directory_is_never_overwritten(runs, planted):
    with pytest.raises(LinkedOutError, match="already holds a trained run"):
        _train(planted, runs["moe"].parent, "moe", False)


def test_ctrl_c_keeps_the_best_checkpoint_and_finishes_the_run(planted, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    run = tmp_path / "interrupted"
    linkedout = str(Path(sys.executable).with_name("linkedout"))
    proc = subprocess.Popen(
        [
            linkedout,
            "train",
            "--features",
            str(planted.features),
            "--interactions",
            str(planted.interactions),
            "--out",
            str(run),
            "--epochs",
            "500",
            "--patience",
            "500",
            "--d-model",
            "16",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "best.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # a few more epochs
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "interrupted" in output and "the same command continues training it" in output
    assert json.loads((run / "metrics.json").read_text())["test"]["model"]["users"] == 300
    assert TrainedRun(run).catalog.num_items == 241


def test_a_tiny_memory_budget_streams_features_and_embeddings_with_the_same_results(
    runs, planted, tmp_path
):
    """Budget 0: item tokens stream from the store (so the softmax is sampled: a full one would
    read the whole catalog at every step), validation ranks against embeddings spilled to
    Lance, evaluation reads catalog.lance chunk by chunk; nothing changes."""
    sampled = {"full_softmax_max_items": 0}
    reference = _train(planted, tmp_path / "memory", "moe", False, **sampled)
    streamed = _train(
        planted, tmp_path / "streamed", "moe", False, feature_memory_gb=0.0, **sampled
    )
    assert _metrics(streamed) == _metrics(reference)
    epochs = [json.loads((r / "epochs.json").read_text())["epochs"] for r in (streamed, reference)]
    assert [e["val_NDCG@10"] for e in epochs[0]] == [e["val_NDCG@10"] for e in epochs[1]]
    assert not list(streamed.glob("validation-catalog*"))  # the spill is cleaned up
    on_disk = TrainedRun(streamed, memory_budget=MemoryBudget(0))
    assert on_disk.catalog.__class__.__name__ == "LanceCatalog"
    assert evaluate_run(streamed, memory_budget=MemoryBudget(0)).to_json() == _metrics(reference)
    history = user_history(on_disk, on_disk.split.users[7])
    assert Ranker(streamed).rank([RankRequest(history, k=8, explain=True)]) == Ranker(
        reference
    ).rank([RankRequest(history, k=8, explain=True)])


def test_unmasked_ranking_is_never_better_and_epochs_are_recorded(runs):
    metrics = _metrics(runs["moe"])
    masked, unmasked = metrics["test"]["model"], metrics["test_unmasked"]["model"]
    assert unmasked["users"] == masked["users"]
    assert all(unmasked[k] <= masked[k] for k in ("HR@10", "NDCG@10", "HR@20", "MRR"))
    epochs = json.loads((runs["moe"] / "epochs.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(len(epochs))) and len(epochs) >= 2
    assert all(e["train_seconds"] > 0 and e["train_sequences"] == 300 for e in epochs)
    # The epoch's mean loss over every target (not its last batch): it falls steadily here.
    losses = [e["train_loss"] for e in epochs]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))
    best = max(e["val_NDCG@10"] for e in epochs)
    assert abs(best - metrics["valid"]["model"]["NDCG@10"]) < 1e-4  # the kept checkpoint


def test_training_reads_features_straight_from_s3(runs, planted, s3_bucket, tmp_path):
    from linkedout.storage.share import export

    bucket, options = s3_bucket
    uri = f"s3://{bucket}/planted/features.lance"
    export(planted.features, uri, dest_options=options)
    remote = _train(
        dataclasses.replace(planted, features=uri),
        tmp_path,
        storage_options=options,
    )
    assert _metrics(remote)["test"] == _metrics(runs["moe"])["test"]
    assert json.loads((remote / "config.json").read_text())["train"]["features"] == uri
    # new uploads join the catalog straight from the bucket too
    from linkedout.service.catalog_changes import add_items

    new = write_new_items(tmp_path / "new.lance", planted, cluster=2, n=4)
    export(tmp_path / "new.lance", f"s3://{bucket}/uploads.lance", dest_options=options)
    assert add_items(remote, f"s3://{bucket}/uploads.lance", options).added == 4
    assert set(new) <= CatalogDataset(remote / "catalog.lance").live_ids()


def test_a_run_trained_on_a_tag_reads_that_version_only(planted, tmp_path):
    features = shutil.copytree(planted.features, tmp_path / "features.lance")
    store = FeatureStore.open(features)
    version = create_tag(store.dataset, str(features), "base", None)
    tokens = store.read_tokens([store.ids()[0]])[0]
    with FeatureWriter(store, commit_every=100) as w:  # a later version: 6 more items
        w.extend([FeatureRow(f"later{i}", tokens, f"later{i}") for i in range(6)])
    assert FeatureStore.open(features).version > version
    pinned = dataclasses.replace(planted, features=f"{features}@base")
    train_planted(pinned, tmp_path / "run", epochs=1)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["features_version"] == version
    assert config["train"]["features"] == f"{features}@base"
    live, _ = CatalogDataset(tmp_path / "run" / "catalog.lance").live()
    assert len(live) == 240 and not any(i.startswith("later") for i in live)
