"""`linkedout catalog add/remove`: new items ranked by content without retraining, withdrawn
ones never returned, evaluation untouched, and a running server swapping versions whole."""

from __future__ import annotations

import json
import time

import pytest
import torch

from linkedout.errors import LinkedOutError
from linkedout.recommend.catalog_dataset import CatalogDataset
from linkedout.recommend.config import ModelConfig
from linkedout.recommend.evaluate import evaluate_run
from linkedout.service.catalog_changes import add_items, remove_items
from linkedout.service.ranker import Ranker, RankRequest
from linkedout.storage import FeatureRow, FeatureStore, FeatureWriter
from tests.cli_harness import assert_one_line_error, run_linkedout, tree_digest
from tests.recommend.planted import write_new_items
from tests.service.conftest import ranking_clients


def _version(run) -> int:
    return CatalogDataset.latest_version(run / "catalog.lance")


def test_added_items_rank_by_their_content_for_the_users_who_like_it(run_copy, planted, tmp_path):
    before = evaluate_run(run_copy, splits=("test",)).to_json()
    a = write_new_items(tmp_path / "a.lance", planted, cluster=0, n=12)
    b = write_new_items(tmp_path / "b.lance", planted, cluster=3, n=12)
    proc = run_linkedout(["catalog", "add", run_copy, "--features", tmp_path / "a.lance"])
    assert proc.returncode == 0, proc.stderr
    assert "12 item(s) added" in proc.stdout and "version 2" in proc.stdout
    # Off a terminal the (transient) bar prints nothing, not even the blank line it leaves.
    assert proc.stdout.startswith(f"{run_copy}: 12 item(s)") and proc.stderr == "", proc.stderr
    assert add_items(run_copy, str(tmp_path / "b.lance")).added == 12
    again = add_items(run_copy, str(tmp_path / "a.lance"))  # nothing new: nothing committed
    assert (again.added, again.already, again.version) == (0, 12, 3)

    ranker = Ranker(run_copy)
    assert ranker.snapshot.size == 240 + 24 and ranker.snapshot.added == 24
    # Users of cluster 0 rank cluster-0 newcomers above cluster-3 ones, and vice versa: the
    # new items carry no ID vector, so only their content can do this.
    for cluster, mine, theirs in ((0, a, b), (3, b, a)):
        users = [u for u in ranker.split.users if planted.cluster_of_user(u) == cluster][:10]
        results = ranker.rank([RankRequest(user=u, k=264) for u in users])
        for result in results:
            rank = {r.item_id: j for j, r in enumerate(result.items)}
            assert sum(rank[i] for i in mine) < sum(rank[i] for i in theirs)
    # Evaluation still ranks the items the run was trained on, exactly as before.
    assert evaluate_run(run_copy, splits=("test",)).to_json() == before

    removed = remove_items(run_copy, [a[0], a[1], "never-there"])
    assert (removed.removed, removed.already, removed.size) == (2, 1, 262)
    ranker = Ranker(run_copy)
    every = ranker.rank([RankRequest(user="u0", k=264)])[0]
    assert not {a[0], a[1]} & {r.item_id for r in every.items}
    gone = run_linkedout(["recommend", run_copy, "--history", f"{a[0]},{a[1]}"])
    assert_one_line_error(gone, "none of the 2 history item(s) is in the catalog")


def test_the_new_item_lift_lifts_exactly_the_items_without_a_trained_id(
    run_copy, planted, tmp_path
):
    """`new_item_lift` adds to the served score of items added after training (and of any
    item training never saw), not of the items the run has ID vectors for."""
    added = set(write_new_items(tmp_path / "a.lance", planted, cluster=0, n=12))
    add_items(run_copy, str(tmp_path / "a.lance"))
    scores, untrained = {}, set()
    for lift in (0.0, 0.5):  # as `serve --new-item-lift` and `recommend` rank
        ranker = Ranker(run_copy, new_item_lift=lift)
        ids = ranker.model.ids.weight
        untrained = {item for item, row in ranker.index.items() if not ids[row].any()}
        (result,) = ranker.rank([RankRequest(user="u0", k=ranker.snapshot.size)])
        scores[lift] = {r.item_id: r.score for r in result.items}
        # u0's ID-score scale: |h_u0| times the trained ID vectors' mean length.
        h, _ = ranker._user_states(
            ranker.snapshot, [[ranker.snapshot.index[i] for i in ranker.history_of("u0")]]
        )
        norms = ids.detach().norm(dim=1)
        scale = float(h.detach().norm() * norms[norms > 0].mean())
    assert Ranker(run_copy).model.config.new_item_lift == ModelConfig().new_item_lift
    assert scores[0.0].keys() == scores[0.5].keys() and added <= scores[0.0].keys()
    assert scale > 0.1
    for item, score in scores[0.0].items():
        lift = 0.5 * scale if item in added | untrained else 0.0
        assert scores[0.5][item] == pytest.approx(score + lift, abs=1e-4)


def test_an_item_added_after_training_scores_as_it_did_when_present_at_training(
    run_copy, planted, tmp_path
):
    """The new-uploads protocol's second check: an item in the features at training but never
    trained on scores the same once removed and added back by `catalog add` (the same content
    vector from the same compressor, no ID vector either way, the same lift)."""
    ranker = Ranker(run_copy)
    ids = ranker.model.ids.weight
    seen = set(ranker.history_of("u0"))  # never ranked for u0
    untrained = (i for i in planted.cold_items if not ids[ranker.index[i]].any())
    cold = sorted(i for i in untrained if i not in seen)[:5]
    assert len(cold) == 5

    def scores(ranker):
        (result,) = ranker.rank([RankRequest(user="u0", k=ranker.snapshot.size)])
        return {r.item_id: r.score for r in result.items}

    before = scores(ranker)
    assert remove_items(run_copy, cold).removed == len(cold)
    assert not set(cold) & scores(Ranker(run_copy)).keys()
    tokens = FeatureStore.open(str(planted.features)).read_tokens(cold)
    back = FeatureStore.create(tmp_path / "back.lance", planted.manifest)
    with FeatureWriter(back, commit_every=1000) as w:
        for item, x in zip(cold, tokens, strict=True):
            w.add(FeatureRow(item, x.half(), content_sha256=item))
    assert add_items(run_copy, str(tmp_path / "back.lance")).added == len(cold)
    after = scores(Ranker(run_copy))
    for item in cold:
        assert after[item] == pytest.approx(before[item], abs=1e-4)


def _another_models_features(planted, path) -> None:
    """One item's features, shaped as the planted ones but from another backbone."""
    other = planted.manifest.__class__(
        backbone="another-model",
        backbone_kind="video-llm",
        layers=planted.manifest.layers,
        tokens_per_layer=planted.manifest.tokens_per_layer,
        hidden_size=planted.manifest.hidden_size,
    )
    store = FeatureStore.create(path, other)
    with FeatureWriter(store, commit_every=10) as w:
        w.add(FeatureRow("x1", torch.zeros(other.shape).half(), content_sha256="x1"))


def test_features_made_another_way_are_refused_with_the_differences(run_copy, planted, tmp_path):
    _another_models_features(planted, tmp_path / "other.lance")
    catalog_before = tree_digest(run_copy / "catalog.lance")
    proc = run_linkedout(["catalog", "add", run_copy, "--features", tmp_path / "other.lance"])
    assert_one_line_error(proc, "was not extracted the way", "backbone: stored 'planted'")
    assert proc.stderr.startswith("error: ")  # the message first, no blank line before it
    assert tree_digest(run_copy / "catalog.lance") == catalog_before
    missing = run_linkedout(["catalog", "add", run_copy, "--features", tmp_path / "nope.lance"])
    assert missing.returncode == 2
    assert tree_digest(run_copy / "catalog.lance") == catalog_before


def test_an_id_only_run_cannot_take_new_items(planted, tmp_path):
    from linkedout.recommend.config import TrainConfig
    from linkedout.recommend.model import ModelConfig
    from linkedout.recommend.train import train

    run = train(
        TrainConfig(
            features=str(planted.features),
            interactions=str(planted.interactions),
            out=str(tmp_path / "ids"),
            model=ModelConfig(d_model=16, fusion="none", ids=True),
            epochs=1,
            quiet=True,
        )
    )
    new = tmp_path / "new.lance"
    write_new_items(new, planted, cluster=1, n=3)
    with pytest.raises(LinkedOutError, match="ranks by item IDs alone"):
        add_items(run, str(new))


def test_a_running_server_swaps_catalog_versions_whole_under_load(
    run_copy, planted, serve, tmp_path
):
    new = write_new_items(tmp_path / "new.lance", planted, cluster=2, n=20)
    server = serve(run_copy, "--poll-seconds", "0.1")
    with ranking_clients([server], per_server=4) as (responses, failures):
        time.sleep(0.5)
        added_at = time.monotonic()
        add_items(run_copy, str(tmp_path / "new.lance"))
        seen_new = None
        while time.monotonic() - added_at < 30 and seen_new is None:
            with server.client() as http:
                body = http.post("/recommend", json={"history": ["v0002"], "k": 1000}).json()
            if body["catalog_version"] == 2:
                seen_new = time.monotonic() - added_at
        remove_items(run_copy, new[:5])
        time.sleep(1.0)
    assert not failures, failures[:3]
    assert seen_new is not None, "the new version was never served"
    versions = {r["catalog_version"] for r in responses}
    assert versions == {1, 2, 3}, versions
    for r in responses:  # every answer is one whole version: all of its items, nothing else
        ids = {i["item_id"] for i in r["items"]}
        expected_new = {1: set(), 2: set(new), 3: set(new[5:])}[r["catalog_version"]]
        assert ids & set(new) == expected_new
        assert len(ids) == 239 + len(expected_new)  # everything but the history item
    with server.client() as http:
        meta = http.get("/metadata").json()
        assert meta["catalog"] == {"version": 3, "size": 255, "added": 15}
    assert json.loads((run_copy / "metrics.json").read_text())  # the run is intact


def test_a_catalog_change_waits_for_training_and_for_another_change(run_copy, planted, tmp_path):
    from linkedout.recommend.run import RunDir
    from linkedout.recommend.run_lock import RunLock

    new = tmp_path / "new.lance"
    write_new_items(new, planted, cluster=2, n=3)
    lock_file = RunDir(run_copy).lock_file
    before = tree_digest(run_copy / "catalog.lance")
    for command, message in (
        ("catalog add", "is being changed by `linkedout catalog add` \\(pid"),
        ("train", "is being trained \\(pid"),
    ):
        holder = RunLock(lock_file, command)  # held by a live process: this one
        holder.acquire()
        try:
            with pytest.raises(LinkedOutError, match=message):
                add_items(run_copy, str(new))
            with pytest.raises(LinkedOutError, match=message):
                remove_items(run_copy, ["v0001"])
        finally:
            holder.release()
        assert tree_digest(run_copy / "catalog.lance") == before
    assert add_items(run_copy, str(new)).added == 3
    assert not lock_file.exists()  # the change released its lock


def _train_with_catalog_features(planted, out, *uris):
    """A short content + IDs run trained with --catalog-features `uris`."""
    from linkedout.recommend.config import TrainConfig
    from linkedout.recommend.train import train

    return train(
        TrainConfig(
            features=str(planted.features),
            interactions=str(planted.interactions),
            out=str(out),
            model=ModelConfig(d_model=32, fusion="moe", ids=True),
            epochs=2,
            batch_size=64,
            quiet=True,
            catalog_features=[str(u) for u in uris],
        )
    )


def test_a_retrained_run_keeps_the_items_given_as_catalog_features(planted, tmp_path, capsys):
    """Items added to an earlier run's catalog join the new run's when training ends, as
    `catalog add` would add them; evaluation still ranks the interactions' items."""
    a = write_new_items(tmp_path / "a.lance", planted, cluster=0, n=12)
    b = write_new_items(tmp_path / "b.lance", planted, cluster=3, n=5)
    run = _train_with_catalog_features(
        planted, tmp_path / "run", tmp_path / "a.lance", tmp_path / "b.lance"
    )
    said = capsys.readouterr().err
    assert "catalog: 12 item(s) of" in said and "catalog: 5 item(s) of" in said
    catalog = CatalogDataset(run / "catalog.lance")
    ids, experts = catalog.live()
    trained = CatalogDataset(run / "catalog.lance", version=1).live()[0]
    assert catalog.version == 3 and ids == trained + a + b
    metrics = json.loads((run / "metrics.json").read_text())
    assert evaluate_run(run).to_json() == metrics  # version 1, the interactions' items
    ranker = Ranker(run)
    assert ranker.snapshot.added == 17 and set(a) <= set(ranker.snapshot.index)
    # The same vectors `catalog add` gives them: withdrawn, then added again.
    remove_items(run, a)
    assert add_items(run, str(tmp_path / "a.lance")).added == 12
    again_ids, again = CatalogDataset(run / "catalog.lance").live()
    assert again_ids[-12:] == a
    assert torch.equal(again[-12:], experts[len(trained) : len(trained) + 12])


def test_catalog_features_made_another_way_are_refused_before_training(planted, tmp_path):
    from linkedout.errors import SettingError
    from linkedout.recommend.config import TrainConfig

    _another_models_features(planted, tmp_path / "other.lance")
    with pytest.raises(LinkedOutError) as caught:
        _train_with_catalog_features(planted, tmp_path / "run", tmp_path / "other.lance")
    message = str(caught.value)
    assert "other.lance was not extracted the way" in message and "\n" not in message
    assert "backbone: stored 'planted'" in message
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(SettingError, match="cannot rank items it was not trained on"):
        TrainConfig(
            features="f.lance",
            interactions="p.tsv",
            out="run",
            model=ModelConfig(fusion="none", ids=True),
            catalog_features=[str(tmp_path / "other.lance")],
        )
