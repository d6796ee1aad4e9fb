"""What a ranking returns, as `linkedout recommend --json` prints it and the service sends it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    top_expert: int | str | None = None
    """The depth (query:depth for runs over several queries) whose expert contributed most to
    this item's score (with explain)."""
    expert_scores: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Recommendations:
    items: list[Recommendation]
    history: list[str]
    gate: dict[int | str, float] = field(default_factory=dict)
    """The user's weight on each depth, or query:depth (with explain)."""
    unknown: list[str] = field(default_factory=list)
    """History ids the run does not know (ignored)."""


RENAMED = {"top_layer": "top_expert", "layer_scores": "expert_scores"}
"""Item keys renamed in 0.2 (an expert is a (query, depth) pair, not always a layer): JSON
answers carry both names until 0.3, so clients reading the old ones keep working meanwhile."""


def recommendations_json(result: Recommendations) -> dict:
    """`result` as `linkedout recommend --json` prints it and the service sends it (the service
    drops `history`): each item under its names, old ones included (`RENAMED`). Built field by
    field rather than with `asdict` (a deep copy), which cost the service more than a ranking."""
    return {
        "items": [_item_json(item) for item in result.items],
        "history": result.history,
        "gate": {str(k): v for k, v in result.gate.items()},
        "unknown": result.unknown,
    }


def _item_json(item: Recommendation) -> dict:
    data = {
        "item_id": item.item_id,
        "score": item.score,
        "top_expert": item.top_expert,
        "expert_scores": item.expert_scores,
    }
    for old, new in RENAMED.items():
        data[old] = data[new]
    return data


def user_history(run, user: str) -> list[str]:
    """Everything the run saw of a training user (train, valid and test items); `run` has
    the split, its `user_index` and `item_ids` (a TrainedRun or a Ranker, which checks the
    user first: `Ranker.history_of`)."""
    u = run.user_index[user]
    items = run.split.history(u, "test") + [run.split.test[u]]
    return [run.item_ids[i - 1] for i in items]
