"""Full-ranking evaluation: every item is a candidate, one held-out target per user.

This is the protocol of MicroLens and RecBole's full sort (no sampled negatives). MicroLens also
masks each user's earlier items before ranking; pass them as `exclude` to do the same, or `None`
to rank as RecBole does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

KS = (10, 20)


def rank_of_target(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None
) -> torch.Tensor:
    """1-based rank `[B]` (long) of each row's target among all `N` items.

    rank = 1 + the number of other items, not masked by `exclude`, scoring at least as high as
    the target. Ties count against the target (pessimistic), so a model that scores every item
    alike ranks its targets last, not first. Masked items can never outrank it, and the target
    counts even when `exclude` marks it. A NaN score ranks below every real score, so a
    diverged model cannot place its targets first.
    """
    return target_ranks(scores, targets, exclude)[0]


def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rank_of_target` with `exclude` applied and without it, from one comparison over the
    catalog: ranking is memory-bound, and full evaluation ranks every user several ways."""
    if scores.dim() != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)}")
    column = targets.long()
    target_scores = scores.gather(1, column.unsqueeze(1)).squeeze(1)
    masked, unmasked = count_outranking(scores, target_scores, column, exclude)
    return masked + 1, unmasked + 1


def count_outranking(
    scores: torch.Tensor,
    target_scores: torch.Tensor,
    target_columns: torch.Tensor,
    exclude: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Items of one slice of the catalog `scores [B, C]` that outrank each row's target (score at
    least `target_scores [B]`), counted with `exclude [B, C]` applied and without it. The target's
    own column (`target_columns [B]`, -1 where the target lies outside this slice) never counts.
    Summed over the slices of a catalog, plus one, these are `target_ranks`."""
    if exclude is not None and exclude.shape != scores.shape:
        raise ValueError(f"exclude {tuple(exclude.shape)} differs from scores")
    above = scores >= target_scores[:, None]  # a NaN distractor compares False: it never outranks
    if target_scores.is_floating_point():
        nan_target = target_scores.isnan()
        if nan_target.any():  # a NaN target ranks below everything, NaN distractors included
            above |= nan_target[:, None]
    inside = target_columns >= 0
    if inside.any():  # the target does not outrank itself
        rows = torch.arange(len(scores), device=scores.device)[inside]
        above[rows, target_columns[inside]] = False
    unmasked = _count(above)
    if exclude is None:
        return unmasked, unmasked
    return unmasked - _count(above & exclude), unmasked


def _count(mask: torch.Tensor) -> torch.Tensor:
    """True entries per row, as long: summing the bytes is twice as fast as a bool sum."""
    return mask.view(torch.uint8).sum(dim=1, dtype=torch.int32).long()


def fixed_score_ranks(
    scores: torch.Tensor, targets: torch.Tensor, histories: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`target_ranks` for a ranker that gives every user the same scores `[N]` (popularity),
    with each user's `histories` masked, without a `[B, N]` comparison: one sort of the catalog,
    then a lookup per user and a comparison per history item. Scores must not be NaN."""
    if scores.dim() != 1 or targets.dim() != 1:
        raise ValueError(f"scores {tuple(scores.shape)} must be [N] and targets [B]")
    if scores.isnan().any():
        raise ValueError("fixed_score_ranks needs NaN-free scores: use target_ranks")
    target_scores = scores[targets]
    ordered = scores.sort().values
    # Items scoring at least the target's score, the target itself included: the target's
    # 1-based rank when ties count against it.
    unmasked = len(scores) - torch.searchsorted(ordered, target_scores, side="left")
    rows, cols = history_entries(histories)
    pairs = torch.unique(rows * len(scores) + cols)  # an item watched twice is masked once
    rows, cols = pairs // len(scores), pairs % len(scores)
    hidden = (scores[cols] >= target_scores[rows]) & (cols != targets[rows])
    masked = unmasked - torch.bincount(rows[hidden], minlength=len(targets))
    return masked, unmasked


def history_mask(
    histories: list[list[int]], num_items: int, device: torch.device | str
) -> torch.Tensor:
    """Bool `[B, N]`, True at each user's earlier items (the `exclude` of `rank_of_target`)."""
    mask = torch.zeros(len(histories), num_items, dtype=torch.bool, device=device)
    rows, cols = history_entries(histories, device)
    mask[rows, cols] = True
    return mask


def history_entries(
    histories: list[list[int]], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, item) of every history entry, as two long tensors (repeats kept)."""
    lengths = torch.tensor([len(h) for h in histories], dtype=torch.long, device=device)
    rows = torch.repeat_interleave(torch.arange(len(histories), device=device), lengths)
    cols = torch.tensor([i for h in histories for i in h], dtype=torch.long, device=device)
    return rows, cols


@dataclass
class RankingMetrics:
    """HR@k, NDCG@k and MRR, accumulated as sums and a count so shards merge into the same means."""

    ks: tuple[int, ...] = KS
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def update(self, ranks: torch.Tensor) -> None:
        if ranks.numel() and int(ranks.min()) < 1:
            raise ValueError("ranks are 1-based; got a rank below 1")
        ranks = ranks.detach().double().flatten()
        # One relevant item, so the ideal DCG is 1 and NDCG is its discount at the target's rank.
        gain = 1.0 / torch.log2(ranks + 1)
        for k in self.ks:
            hit = ranks <= k
            self._add(f"HR@{k}", hit.sum().item())
            self._add(f"NDCG@{k}", torch.where(hit, gain, 0.0).sum().item())
        self._add("MRR", (1.0 / ranks).sum().item())
        self.count += ranks.numel()

    def merge(self, other: RankingMetrics) -> None:
        """Fold in another accumulator (e.g. one per process) over the same `ks`."""
        if other.ks != self.ks:
            raise ValueError(f"cannot merge metrics at k={other.ks} into k={self.ks}")
        for name, value in other.sums.items():
            self._add(name, value)
        self.count += other.count

    def names(self) -> list[str]:
        return [f"{m}@{k}" for k in self.ks for m in ("HR", "NDCG")] + ["MRR"]

    def compute(self) -> dict[str, float]:
        """Means over users: `{"HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR", "users"}`."""
        if self.count == 0:
            raise ValueError("no ranks to average: update() was never given a user")
        return {name: self.sums[name] / self.count for name in self.names()} | {"users": self.count}

    def to_tensor(self) -> torch.Tensor:
        """The sums and the count as one float64 vector, to add up across processes."""
        return torch.tensor(
            [self.sums.get(name, 0.0) for name in self.names()] + [self.count], dtype=torch.float64
        )

    @classmethod
    def from_tensor(cls, vector: torch.Tensor, ks: tuple[int, ...] = KS) -> RankingMetrics:
        metrics = cls(ks)
        values = vector.tolist()
        metrics.sums = dict(zip(metrics.names(), values[:-1], strict=True))
        metrics.count = round(values[-1])
        return metrics

    def _add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value


def popularity_scores(train_sequences: list[list[int]], num_items: int) -> torch.Tensor:
    """How often each item occurs in training, `[N]` float: the popularity baseline's scores."""
    flat = torch.tensor([i for seq in train_sequences for i in seq], dtype=torch.long)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_items):
        raise ValueError(f"item indices must lie in [0, {num_items})")
    return torch.bincount(flat, minlength=num_items).float()
