"""`recommend(run, history) -> top-k`: one sequence forward, then the best items of each chunk
of the catalog, merged."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from linkedout.errors import LinkedOutError
from linkedout.recommend.evaluate import TrainedRun
from linkedout.recommend.ranking import top_items


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    top_layer: int | None = None
    """The depth whose expert contributed most to this item's score (with explain)."""
    layer_scores: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Recommendations:
    items: list[Recommendation]
    history: list[str]
    gate: dict[int, float] = field(default_factory=dict)
    """The user's weight on each depth (with explain)."""
    unknown: list[str] = field(default_factory=list)
    """History ids the run does not know (ignored)."""


def user_history(run: TrainedRun, user: str) -> list[str]:
    """Everything the run saw of a training user (train, valid and test items)."""
    if user not in run.user_index:
        raise LinkedOutError(
            f"user {user!r} is not in this run's interactions ({len(run.user_index):,} users): "
            "pass --history ID,ID,... instead"
        )
    u = run.user_index[user]
    items = run.split.history(u, "test") + [run.split.test[u]]
    return [run.item_ids[i - 1] for i in items]


@torch.inference_mode()
def recommend(
    run: TrainedRun, history: list[str], k: int = 10, explain: bool = False
) -> Recommendations:
    if k < 1:
        raise LinkedOutError(f"--k {k}: ask for at least 1 item")
    if not history:
        raise LinkedOutError("the history lists no item ids: pass the ids watched, oldest first")
    known = [run.index[i] for i in history if i in run.index]
    unknown = [i for i in history if i not in run.index]
    if not known:
        raise LinkedOutError(
            f"none of the {len(history)} history item(s) is in this run's catalog "
            f"(e.g. {history[0]!r}): pass item ids the features hold"
        )
    h, gate = run.user_states([known])
    # Never recommend what the user already watched.
    items, scores = top_items(run.module.model, run.catalog, h, gate, [known], k)
    found = torch.isfinite(scores[0])
    items, scores = items[0][found], scores[0][found]
    contributions = None
    if explain and run.module.model.content:
        experts = run.catalog.experts_of(items)
        contributions = run.module.model.layer_contributions(h, gate, experts)[0]
    out = []
    for j, (item, score) in enumerate(zip(items.tolist(), scores.tolist(), strict=True)):
        if contributions is not None:
            per_layer = contributions[j].tolist()
            best = max(range(len(per_layer)), key=per_layer.__getitem__)
            out.append(Recommendation(run.item_ids[item - 1], score, run.layers[best], per_layer))
        else:
            out.append(Recommendation(run.item_ids[item - 1], score))
    # An ID-only run has no depths: its one fixed gate weight explains nothing.
    explained = explain and run.module.model.content
    gates = dict(zip(run.layers, gate[0].tolist(), strict=True)) if explained else {}
    return Recommendations(out, history, gates, unknown)
