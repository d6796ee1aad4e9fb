"""The exact top-k scan of a catalog, in bfloat16 where the CPU multiplies it natively.

Ranking a user is one product of their vector with every item's key. In float32 that product
reads 4 bytes a number and, on a CPU with AVX512-BF16 or AMX, runs at a fraction of the
bfloat16 rate: a batch of 64 users over 19,220 keys took 8.7 ms in float32 and 2.4 ms in
bfloat16 on one core (and a million-item catalog is bound by the bytes it reads). So the scan
runs in two passes:

1. bfloat16 scores of every item; the `k + margin` best of them are the candidates;
2. the candidates scored again in float32, the best k of those returned.

Exact, not approximate. Write q~, k~ for the bfloat16 roundings and dq = q - q~, dk = k - k~
(both known exactly): q.k - q~.k~ = q.dk + dq.k~, so the product's inputs cost at most
`|q| max|dk| + |dq| max|k~|` (Cauchy-Schwarz, over the catalog's items), and the product's
result, rounded once to bfloat16, at most 2^-8 of itself. An item outside the candidates scored
at most the last candidate's bfloat16 score t, so at most t plus that slack in float32: when
the k-th float32 score beats it, no item outside can enter the top k. Users for whom that does
not hold (a flat score list) are scanned again in float32, so the answer is always the float32
scan's (up to ties and float32's own rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from linkedout.recommend.softmax import product_dtype

RESULT_ROUNDING = 2.0**-8 * 1.01
"""A bfloat16 result is within 2^-8 of itself (8 significant bits, round to nearest)."""

ACCUMULATION = 2.0**-16
"""Float32 accumulation of the product's terms (a width of hundreds: under 2^-16 of |q||k|)."""

MARGIN = 32
"""Candidates beyond k rescored in float32 (cheap: a gather of that many keys per user)."""

CHUNK = 8192
"""Keys rounded and measured at a time when a scan is built."""


@dataclass(frozen=True)
class Scan:
    """A catalog's keys `[N, W]` (float32), with a bfloat16 copy where it pays."""

    keys: torch.Tensor
    low: torch.Tensor | None
    """The keys in bfloat16 (None: this CPU multiplies bfloat16 slowly, scan in float32)."""
    max_norm: torch.Tensor
    """The largest key's length (of the bfloat16 keys where they are used: at least the
    float32 ones' within rounding)."""
    max_error: torch.Tensor
    """The largest |k - k~| over items: what rounding the keys to bfloat16 moved them."""

    @classmethod
    def of(cls, keys: torch.Tensor, low: bool | None = None) -> Scan:
        """`low`: scan in bfloat16 first (None: where the CPU multiplies it natively)."""
        keys = keys.float().contiguous()
        if low is None:
            low = product_dtype(keys.device) == torch.bfloat16
        if not (low and len(keys)):
            zero = torch.tensor(0.0)
            return cls(keys=keys, low=None, max_norm=zero, max_error=zero)
        rounded = torch.empty_like(keys, dtype=torch.bfloat16)
        error = norm = torch.tensor(0.0)
        # In chunks that stay in cache: at a million keys, whole-table temporaries (float32
        # copies of the rounded keys, their differences) made a catalog swap take seconds.
        for start in range(0, len(keys), CHUNK):
            part = keys[start : start + CHUNK]
            low = rounded[start : start + CHUNK]
            low.copy_(part)
            back = low.float()
            error = torch.maximum(error, (part - back).norm(dim=1).max())
            norm = torch.maximum(norm, torch.maximum(back.norm(dim=1), part.norm(dim=1)).max())
        return cls(keys=keys, low=rounded, max_norm=norm, max_error=error)

    def top(
        self,
        users: torch.Tensor,
        k: int,
        masked: list[list[int]],
        offsets: torch.Tensor | None = None,
        lifted: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The `k` best items of each user `[B, W]`: (scores, rows), each `[B, k]`, best first.
        `masked[b]`: rows user b must not get (scored -inf; they come last when fewer than k
        items are left). `offsets [B]` x `lifted [N]`: added to the scores (the new-item lift)."""
        k = min(k, len(self.keys))
        if self.low is None or k + MARGIN >= len(self.keys):
            return self._full(users, k, masked, offsets, lifted)
        rounded = users.bfloat16()
        lo = (rounded @ self.low.T).float()
        _add_masked(lo, masked, offsets, lifted)
        approx, cand = lo.topk(k + MARGIN, dim=1)
        exact = torch.einsum("bw,bmw->bm", users, self.keys[cand])
        if offsets is not None:
            exact += offsets[:, None] * lifted[cand]
        exact.masked_fill_(approx == float("-inf"), float("-inf"))
        scores, at = exact.topk(k, dim=1)
        rows = cand.gather(1, at)
        last = approx[:, -1]
        size = users.norm(dim=1)
        slack = (
            size * self.max_error
            + (users - rounded.float()).norm(dim=1) * self.max_norm
            + ACCUMULATION * size * self.max_norm
            + RESULT_ROUNDING * last.abs()
        )
        if offsets is not None:  # the lift is added in float32 to both: no error of its own,
            slack = slack + RESULT_ROUNDING * offsets.abs()  # but it moved t off the product
        # All unmasked items were candidates (last is -inf), or no item outside can get in.
        unsure = (scores[:, -1] <= last + slack) & (last > float("-inf"))
        again = unsure.nonzero()[:, 0]
        rank_again(self._full, again, users, k, masked, offsets, lifted, scores, rows)
        return scores, rows

    def _full(self, users, k, masked, offsets, lifted) -> tuple[torch.Tensor, torch.Tensor]:
        """The float32 scan of every item."""
        scores = users @ self.keys.T
        _add_masked(scores, masked, offsets, lifted)
        return scores.topk(k, dim=1)


def rank_again(top, which, users, k, masked, offsets, lifted, scores, rows) -> None:
    """Ranks users `which` (indices into the batch) again with `top` (a scan's) and writes
    their answers into `scores` and `rows` `[B, k]` in place; nothing when `which` is empty."""
    if len(which):
        chosen_offsets = None if offsets is None else offsets[which]
        found = top(users[which], k, [masked[int(b)] for b in which], chosen_offsets, lifted)
        scores[which], rows[which] = found


def _add_masked(
    scores: torch.Tensor,
    masked: list[list[int]],
    offsets: torch.Tensor | None,
    lifted: torch.Tensor | None,
) -> None:
    """Adds the lift and sets masked rows to -inf, in place, in one indexed write."""
    if offsets is not None:
        scores.addr_(offsets.to(scores.dtype), lifted.to(scores.dtype))
    users = [b for b, rows in enumerate(masked) for _ in rows]
    if users:
        rows = [r for rows in masked for r in rows]
        scores[torch.tensor(users), torch.tensor(rows)] = float("-inf")
