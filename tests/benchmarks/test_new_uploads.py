"""The new-uploads protocol: which items are new, what is trained on, what is ranked."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest

from benchmarks import new_uploads as nu
from tests.recommend.planted import make_planted, train_planted

ITEMS = [f"i{k:03d}" for k in range(100)]


def test_the_new_sets_are_disjoint_seeded_and_independent_of_order():
    new = nu.choose(ITEMS, 0.2, 0.1, seed=3)
    assert len(new.test) == 20 and len(new.valid) == 10 and not new.test & new.valid
    assert nu.choose(list(reversed(ITEMS)), 0.2, 0.1, seed=3) == new
    assert nu.choose(ITEMS, 0.2, 0.1, seed=4).test != new.test


@pytest.mark.parametrize(
    ("fraction", "valid", "words"),
    [(0.0, 0.1, "(0, 1)"), (1.0, 0.1, "(0, 1)"), (0.2, 1.5, "(0, 1)"), (0.6, 0.5, "below 1")],
)
def test_fractions_outside_the_unit_interval_are_refused(fraction, valid, words):
    with pytest.raises(nu.ProtocolError, match=words.replace("(", r"\(").replace(")", r"\)")):
        nu.choose(ITEMS, fraction, valid)


def test_targets_are_each_users_last_new_item_after_a_history_without_new_items():
    new = nu.NewUploads(valid=frozenset({"v"}), test=frozenset({"t1", "t2"}), seed=0)
    sequences = {
        "a": ["x", "t1", "y", "v", "z", "t2", "w"],  # last test-new item: t2
        "b": ["t1", "x"],  # its only new item comes first: no history
        "c": ["x", "y"],  # watched no new item
        "d": ["x", "v", "y"],
    }
    test, empty = nu.targets(sequences, new, nu.TEST)
    assert [(t.user, t.history, t.item) for t in test] == [("a", ["x", "y", "z"], "t2")]
    assert empty == 1
    valid, empty = nu.targets(sequences, new, nu.VALIDATION)
    assert [(t.user, t.history, t.item) for t in valid] == [
        ("a", ["x", "y"], "v"),
        ("d", ["x"], "v"),
    ]
    assert empty == 0
    trained = nu.training_sequences({**sequences, "e": ["t1", "v"]}, new)
    assert trained == {"a": ["x", "y", "z", "w"], "b": ["x"], "c": ["x", "y"], "d": ["x", "y"]}
    with pytest.raises(nu.ProtocolError, match="no user has a test new-upload target"):
        nu.targets({"c": ["x", "y"]}, new, nu.TEST)


def _new_uploads_log(planted, tmp_path):
    """The planted log with 20% of its items new for the test (10% for validation)."""
    with open(planted.interactions, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: (r["user_id"], int(r["timestamp"])))
    sequences: dict[str, list[str]] = {}
    for r in rows:
        sequences.setdefault(r["user_id"], []).append(r["item_id"])
    items = sorted({i for seq in sequences.values() for i in seq})
    new = nu.choose(items, 0.2, 0.1, seed=0)
    trained_on = nu.write_pairs(nu.training_sequences(sequences, new), tmp_path / "pairs.tsv")
    assert not new.held_out & {i for seq in nu.read_pairs(trained_on).values() for i in seq}
    test, _ = nu.targets(sequences, new, nu.TEST)
    return replace(planted, interactions=trained_on), test


def test_a_content_model_ranks_new_items_it_never_trained_on(tmp_path):
    """Planted data: the new items' features sit in their cluster, none of their interactions
    is trained on, and the content-only model still ranks them far above chance."""
    planted, test = _new_uploads_log(make_planted(tmp_path / "data"), tmp_path)
    run = train_planted(planted, tmp_path / "run")
    figures = nu.evaluate(run, test)
    catalog = 240  # every item with features is a candidate, the new ones included
    assert figures["users"] == len(test)
    assert figures["HR@10"] > 5 * 10 / catalog, figures


def test_the_new_item_lift_brings_new_items_into_the_fused_models_top_10(tmp_path):
    """Content + IDs: without the lift, warm items' ID terms keep new items out of the top
    10; a lift ranks them by content against the warm items (0.5: the planted catalog's
    content is sharper than MicroLens', whose validation chose the default)."""
    planted, test = _new_uploads_log(make_planted(tmp_path / "data"), tmp_path)
    run = train_planted(planted, tmp_path / "run", ids=True)
    lifted = nu.evaluate(run, test, new_item_lift=0.5)
    plain = nu.evaluate(run, test, new_item_lift=0.0)
    assert lifted["HR@10"] > max(2 * plain["HR@10"], 5 * 10 / 240), (lifted, plain)
