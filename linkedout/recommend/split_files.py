"""A run's split as plain files: any other library can train and rank on exactly the users,
items and held-out targets LinkedOut used, and the digest proves two runs shared one split.

    split/interactions.tsv  user, item, position, split: one row per kept interaction, grouped by
                            user in run order; position 0..n-1 is chronological; the last row
                            of a user is `test`, the one before `valid`, the rest `train`
    split/items.tsv         the ranking catalog (every candidate item), in model order
    split/split.json        format, counts, protocol, split report, sha256 of the two files
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from linkedout.errors import LinkedOutError
from linkedout.recommend.split import SequenceSplit, SplitReport

FORMAT = "linkedout-split/1"
PROTOCOL = (
    "chronological leave-one-out: each user's last interaction is the test target, the one "
    "before it the validation target, the rest training; full ranking over items.tsv"
)


def render(split: SequenceSplit) -> tuple[str, str]:
    """The text of interactions.tsv and items.tsv."""
    ids = split.item_ids
    bad = next((x for x in (*split.users, *ids) if "\t" in x or "\n" in x), None)
    if bad is not None:
        raise LinkedOutError(f"id {bad!r} holds a tab or a newline: split files cannot hold it")
    rows = ["user\titem\tposition\tsplit"]
    for u, user in enumerate(split.users):
        sequence = split.train[u] + [split.valid[u], split.test[u]]
        last = len(sequence) - 1
        for position, item in enumerate(sequence):
            part = "test" if position == last else "valid" if position == last - 1 else "train"
            rows.append(f"{user}\t{ids[item - 1]}\t{position}\t{part}")
    return "\n".join(rows) + "\n", "item\n" + "".join(f"{item}\n" for item in ids)


def digest(split: SequenceSplit) -> str:
    interactions, items = render(split)
    return _digest(interactions, items)


def write_split(split: SequenceSplit, directory: Path) -> str:
    """Write the split files; returns their sha256 (also in split.json)."""
    interactions, items = render(split)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "interactions.tsv").write_text(interactions, encoding="utf-8")
    (directory / "items.tsv").write_text(items, encoding="utf-8")
    sha = _digest(interactions, items)
    meta = {
        "format": FORMAT,
        "users": len(split.users),
        "items": len(split.item_ids),
        "items_with_features": split.num_with_features,
        "interactions": sum(len(t) + 2 for t in split.train),
        "protocol": PROTOCOL,
        "report": asdict(split.report),
        "sha256": sha,
    }
    (directory / "split.json").write_text(json.dumps(meta, indent=2) + "\n")
    return sha


def read_split(directory: Path) -> SequenceSplit:
    try:
        meta = json.loads((directory / "split.json").read_text())
        item_ids = (directory / "items.tsv").read_text(encoding="utf-8").splitlines()[1:]
        index = {item: i + 1 for i, item in enumerate(item_ids)}
        users: list[str] = []
        sequences: list[list[int]] = []
        with open(directory / "interactions.tsv", encoding="utf-8") as f:
            next(f)
            for line in f:
                user, item, _, _ = line.rstrip("\n").split("\t")
                if not users or users[-1] != user:
                    users.append(user)
                    sequences.append([])
                sequences[-1].append(index[item])
    except (OSError, ValueError, KeyError) as e:
        raise LinkedOutError(
            f"{directory} is not a readable split ({e}): train the run again"
        ) from None
    if meta.get("format") != FORMAT:
        raise LinkedOutError(f"{directory}: split format {meta.get('format')!r}, not {FORMAT}")
    return SequenceSplit(
        item_ids=item_ids,
        num_with_features=meta["items_with_features"],
        users=users,
        train=[s[:-2] for s in sequences],
        valid=[s[-2] for s in sequences],
        test=[s[-1] for s in sequences],
        report=SplitReport(**meta["report"]),
    )


def _digest(interactions: str, items: str) -> str:
    sha = hashlib.sha256(interactions.encode())
    sha.update(b"\0")
    sha.update(items.encode())
    return sha.hexdigest()
