"""The new-uploads protocol: how well a trained run ranks videos nobody watched in training.

A seeded random `fraction` of the items (default 20%) are new uploads for the test, and a disjoint
seeded `valid_fraction` (default 10%) for validation. None of their interactions is trained on:
the run trains on the log without them, while their features stay in the feature dataset, which
is how a new upload reaches a model in production (present in the features, absent from the
interactions). Every user who watched a test-new item gets, as test target, the last one they
watched; their history is what they watched before it, with every new item (of either set)
dropped. Validation does the same with its own items, and settings are chosen on it. A target
whose history is empty once new items are dropped cannot be read by a sequence model and is
left out (counted). Ranking is the leave-one-out table's: every item with features is a
candidate, the user's history is masked, ties count against the target.

    python benchmarks/new_uploads.py OUT [--fraction 0.2] [--valid-fraction 0.1] [--seed 0]

reads OUT/new-uploads/ (written by `benchmarks/microlens.py --new-uploads`) and prints each
finished run's new-uploads metrics; `microlens.py` calls the same functions for its report.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

VALIDATION, TEST = "valid", "test"


@dataclass(frozen=True)
class NewUploads:
    """The items held out of training: one set whose targets validate, one that tests."""

    valid: frozenset[str]
    test: frozenset[str]
    seed: int

    @property
    def held_out(self) -> frozenset[str]:
        return self.valid | self.test


class ProtocolError(ValueError):
    """Settings or data the protocol cannot run on (one line: what is wrong, what to do)."""


def choose(
    items: list[str], fraction: float = 0.2, valid_fraction: float = 0.1, seed: int = 0
) -> NewUploads:
    """Two disjoint seeded random sets of `items`: `fraction` of them new for the test and
    `valid_fraction` for validation. The draw depends on the set of items and the seed only,
    not on their order."""
    check_fractions(fraction, valid_fraction)
    order = sorted(set(items))
    random.Random(seed).shuffle(order)
    n_test = round(len(order) * fraction)
    n_valid = round(len(order) * valid_fraction)
    if not n_test or not n_valid:
        raise ProtocolError(
            f"{len(order)} items at fractions {fraction} and {valid_fraction} give an empty set "
            "of new items: raise the fractions"
        )
    return NewUploads(
        valid=frozenset(order[n_test : n_test + n_valid]),
        test=frozenset(order[:n_test]),
        seed=seed,
    )


def check_fractions(fraction: float, valid_fraction: float) -> None:
    """Refuse shares of new items the protocol cannot run with (before any training)."""
    for name, value in (("fraction", fraction), ("valid fraction", valid_fraction)):
        if not 0 < value < 1:
            raise ProtocolError(f"new-uploads {name} {value} must lie in (0, 1), e.g. 0.2")
    if fraction + valid_fraction >= 1:
        raise ProtocolError(
            f"new-uploads fractions {fraction} + {valid_fraction} leave no item to train on: "
            "keep their sum below 1"
        )


def training_sequences(sequences: dict[str, list[str]], new: NewUploads) -> dict[str, list[str]]:
    """Every user's items with the new ones dropped (users left with none are dropped)."""
    held = new.held_out
    kept = {user: [i for i in seq if i not in held] for user, seq in sequences.items()}
    return {user: seq for user, seq in kept.items() if seq}


@dataclass(frozen=True)
class Target:
    user: str
    history: list[str]
    """What the user watched before the target, new items dropped, oldest first."""
    item: str


def targets(
    sequences: dict[str, list[str]], new: NewUploads, split: str
) -> tuple[list[Target], int]:
    """Each user's last new item of `split`'s set, with the history before it; and how many
    users who watched one were left out for an empty history."""
    own = new.test if split == TEST else new.valid
    held = new.held_out
    out, empty = [], 0
    for user, seq in sequences.items():
        last = max((k for k, item in enumerate(seq) if item in own), default=None)
        if last is None:
            continue
        history = [item for item in seq[:last] if item not in held]
        if not history:
            empty += 1
            continue
        out.append(Target(user, history, seq[last]))
    if not out:
        raise ProtocolError(
            f"no user has a {split} new-upload target with a history (seed {new.seed}): "
            "raise the fractions or use another seed"
        )
    return out, empty


def write_pairs(sequences: dict[str, list[str]], path: Path) -> Path:
    """The MicroLens pairs format (`user<TAB>item item ...`), which `linkedout train` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{u}\t{' '.join(seq)}\n" for u, seq in sequences.items()))
    return path


def read_pairs(path: Path) -> dict[str, list[str]]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            user, items = line.split("\t", 1)
            out[user] = items.split()
    return out


def rankable(trained, chosen: list[Target]):
    """`chosen` in a trained run's model indices: each user's history (items the run does not
    know dropped, the last `max_len` kept), the target items as a tensor, and how many
    histories lost unknown items."""
    import torch

    index = trained.index
    unknown = [t.item for t in chosen if t.item not in index]
    if unknown:
        raise ProtocolError(
            f"{trained.path}: {len(unknown)} new-upload targets have no features in the run's "
            f"catalog, e.g. {unknown[0]}: train on the feature dataset that holds every item"
        )
    histories, short = [], 0
    for t in chosen:
        known = [index[i] for i in t.history if i in index]
        short += len(known) < len(t.history)
        histories.append(known[-trained.max_len :] or [0])
    return histories, torch.tensor([index[t.item] for t in chosen]), short


def evaluate(
    run,
    chosen: list[Target],
    batch_size: int = 1024,
    new_item_lift: float | None = None,
) -> dict:
    """HR@10/20, NDCG@10/20 and MRR of the run's ranking of `chosen` targets over its whole
    catalog (version 1: every item with features), histories masked; and how many targets
    had history items the run does not know (dropped from their history). `run`: a run
    directory, or a `TrainedRun` already loaded (several target sets, one load);
    `new_item_lift`: rank with it instead of the run's own (a directory only)."""
    import torch

    from linkedout.recommend.evaluate import TrainedRun, states
    from linkedout.recommend.metrics import RankingMetrics
    from linkedout.recommend.ranking import rank_targets

    trained = run if isinstance(run, TrainedRun) else TrainedRun(run, new_item_lift=new_item_lift)
    histories, items, short = rankable(trained, chosen)
    with torch.inference_mode():
        h, gate = states(trained, histories, batch_size)
        ranks, _ = rank_targets(
            trained.model, trained.catalog, h, gate, items, histories, batch_size
        )
    metrics = RankingMetrics()
    metrics.update(ranks)
    return metrics.compute() | {"histories_with_unknown_items": short}


def main() -> None:
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the benchmark's output folder")
    args = parser.parse_args()
    figures = args.out / "new-uploads.json"
    if not figures.exists():
        sys.exit(f"{figures} is missing: run benchmarks/microlens.py --new-uploads first")
    for row in json.loads(figures.read_text())["rows"]:
        for run in row["runs"]:
            print(row["name"], run["seed"], json.dumps(run["new_uploads"]))


if __name__ == "__main__":
    main()
