"""Issue 16, item 6: interactions with items without features are dropped, and said so."""

from __future__ import annotations

import logging

import pytest

from linkedout.errors import LinkedOutError
from linkedout.recommend.config import SplitConfig
from linkedout.recommend.interactions import InteractionLog
from linkedout.recommend.split import SplitReport, build_split

CATALOG = [f"v{i}" for i in range(1000)]
# Enough users and items with features that one item without is under 1% of them.
FILLER = [[f"v{100 + 6 * u + i}" for i in range(6)] for u in range(100)]


def _log(*sequences: list[str]) -> InteractionLog:
    return InteractionLog([f"u{u}" for u in range(len(sequences))], list(sequences), "log.csv")


def _seq(start: int, n: int = 6) -> list[str]:
    return [f"v{start + i}" for i in range(n)]


def test_dropped_interactions_are_counted_and_logged_every_time(caplog):
    log = _log(
        _seq(0) + ["ghost"],  # test target moves from ghost to v5
        _seq(10)[:3] + ["ghost"] + _seq(10)[3:],  # dropped mid-sequence: targets unchanged
        ["v20", "ghost", "v21", "ghost", "ghost"],  # left with 2: the user is dropped
        *FILLER,
    )
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="linkedout.recommend.data"):
            split = build_split(log, CATALOG, SplitConfig(min_interactions=3))
        [record] = caplog.records
        assert record.levelno == logging.WARNING
    r = split.report
    assert (r.items_missing_features, r.interactions_dropped, r.users_with_dropped) == (1, 5, 3)
    assert (r.targets_moved, r.users_dropped_missing, r.users_dropped) == (1, 1, 1)
    assert split.test[0] == CATALOG.index("v5") + 1
    message = record.getMessage()
    assert message.startswith("warning: log.csv: 1 item(s) without stored features (e.g. ghost)")
    assert "5 interaction(s) of 3 user(s) dropped" in message
    assert "the valid/test target of 1 user(s) moved to an earlier item" in message
    assert "1 user(s) left with too few interactions were dropped" in message
    assert "--allow-missing --ids" in message
    assert "5 interaction(s)" in r.line()


def test_nothing_is_logged_when_every_item_has_features_or_is_kept(caplog):
    with caplog.at_level(logging.WARNING, logger="linkedout.recommend.data"):
        build_split(_log(_seq(0), *FILLER), CATALOG, SplitConfig())
        log = _log(_seq(0), _seq(10) + ["ghost"], *FILLER)
        kept = build_split(log, CATALOG, SplitConfig(allow_missing=True))
    assert caplog.records == []
    assert kept.report.interactions_dropped == 0
    assert "kept, served by their ID embedding" in kept.report.line()


def test_more_than_one_percent_missing_still_stops():
    with pytest.raises(LinkedOutError, match="have no stored features"):
        build_split(_log(_seq(0) + ["ghost"]), CATALOG, SplitConfig())


def test_reports_written_before_these_counts_still_load():
    old = {"users": 3, "users_dropped": 0, "items_missing_features": 1, "interactions_dropped": 2}
    assert SplitReport(**old).targets_moved == 0
