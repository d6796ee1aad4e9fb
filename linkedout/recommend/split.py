"""Interactions -> chronological leave-one-out split (`build_split`), and what it dropped.

Item index 0 is padding; items with stored features take indices 1..F in the store's order,
items without features (kept only with `allow_missing`) follow. Plain Python and torch: reading
a run's split (evaluate, recommend) does not load Lightning.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch

from linkedout.errors import LinkedOutError
from linkedout.recommend.config import SplitConfig
from linkedout.recommend.interactions import InteractionLog

_log = logging.getLogger(__name__)

MISSING_LIMIT = 0.01  # above this share of items without features, stop unless allow_missing


def left_pad(seq: list[int], length: int) -> list[int]:
    """The last `length` items of `seq`, padded with 0 on the left to `length`."""
    seq = seq[-length:]
    return [0] * (length - len(seq)) + seq


@dataclass
class SplitReport:
    users: int = 0
    users_dropped: int = 0
    """Users left out for too few interactions (those of `users_dropped_missing` included)."""
    items_missing_features: int = 0
    interactions_dropped: int = 0
    """Interactions with items without features, left out of the sequences."""
    users_with_dropped: int = 0
    """Users who lost at least one interaction that way."""
    targets_moved: int = 0
    """Kept users whose valid or test target is not their last-but-one or last logged
    interaction, because a later one was left out."""
    users_dropped_missing: int = 0
    """Users left out only because their interactions without features were."""
    example_missing: list[str] = field(default_factory=list)
    """A few of the items without features."""

    def line(self) -> str:
        parts = [f"{self.users:,} users"]
        if self.users_dropped:
            parts.append(f"{self.users_dropped:,} dropped (too few interactions)")
        if self.items_missing_features and not self.interactions_dropped:
            parts.append(
                f"{self.items_missing_features:,} items without features "
                "(kept, served by their ID embedding)"
            )
        elif self.items_missing_features:
            parts.append(self.dropped_line())
        return ", ".join(parts)

    def dropped_line(self) -> str:
        """What leaving out the interactions with items without features did to the split."""
        examples = ", ".join(self.example_missing[:3])
        moved = (
            f"; the valid/test target of {self.targets_moved:,} user(s) moved to an earlier item"
            if self.targets_moved
            else "; no user's valid or test target changed"
        )
        lost = (
            f"; {self.users_dropped_missing:,} user(s) left with too few interactions were dropped"
            if self.users_dropped_missing
            else ""
        )
        return (
            f"{self.items_missing_features:,} item(s) without stored features"
            f"{f' (e.g. {examples})' if examples else ''}: "
            f"{self.interactions_dropped:,} interaction(s) of {self.users_with_dropped:,} "
            f"user(s) dropped{moved}{lost}"
        )


@dataclass
class SequenceSplit:
    """Leave-one-out: each user's last item is the test target, the one before it validation."""

    item_ids: list[str]
    """Model index i + 1 is item_ids[i]."""
    num_with_features: int
    users: list[str]
    train: list[list[int]]
    valid: list[int]
    test: list[int]
    report: SplitReport = field(default_factory=SplitReport)

    @property
    def num_items(self) -> int:
        """Vocabulary size including the padding index 0."""
        return len(self.item_ids) + 1

    def history(self, user: int, split: str) -> list[int]:
        """What the model may see before the `split` target."""
        return self.train[user] if split == "valid" else self.train[user] + [self.valid[user]]

    def target(self, user: int, split: str) -> int:
        return self.valid[user] if split == "valid" else self.test[user]

    def train_counts(self) -> torch.Tensor:
        """How often each item occurs in the training sequences ([num_items], index 0 = 0)."""
        counts = torch.zeros(self.num_items)
        for item, n in Counter(i for seq in self.train for i in seq).items():
            counts[item] = n
        return counts


def build_split(log: InteractionLog, catalog: list[str], config: SplitConfig) -> SequenceSplit:
    """`catalog`: ids of the items with features, in store order."""
    index = {item: i + 1 for i, item in enumerate(catalog)}
    logged = {item for seq in log.sequences for item in seq}
    missing = sorted(logged - index.keys())
    report = SplitReport(items_missing_features=len(missing))
    share = len(missing) / max(len(logged), 1)
    if missing and share > MISSING_LIMIT and not config.allow_missing:
        raise LinkedOutError(
            f"{len(missing):,} of {len(logged):,} items in {log.source} ({share:.1%}) have no "
            f"stored features, e.g. {', '.join(missing[:3])}: extract them, or pass "
            "--allow-missing to serve them by their ID embedding only"
        )
    item_ids = list(catalog)
    if config.allow_missing:
        for item in missing:
            index[item] = len(item_ids) + 1
            item_ids.append(item)
    report.example_missing = missing[:3]
    users, train, valid, test = [], [], [], []
    least = max(config.min_interactions, 3)
    for user, seq in zip(log.users, log.sequences, strict=True):
        kept = [index[i] for i in seq if i in index]
        lost = len(seq) - len(kept)
        if lost:
            report.interactions_dropped += lost
            report.users_with_dropped += 1
        if len(kept) < least:
            report.users_dropped += 1
            report.users_dropped_missing += int(lost > 0 and len(seq) >= least)
            continue
        if lost and not all(i in index for i in seq[-2:]):
            report.targets_moved += 1
        users.append(user)
        train.append(kept[:-2])
        valid.append(kept[-2])
        test.append(kept[-1])
    report.users = len(users)
    if report.interactions_dropped:
        # Said every time: a few missing items change what every affected user is tested on.
        _log.warning(
            "warning: %s: %s (extract those items, or pass --allow-missing --ids to keep them)",
            log.source,
            report.dropped_line(),
        )
    if not users:
        raise LinkedOutError(
            f"no user in {log.source} has {config.min_interactions}+ interactions with items "
            "that have features: check that the interactions and the features use the same ids"
        )
    return SequenceSplit(item_ids, len(catalog), users, train, valid, test, report)
