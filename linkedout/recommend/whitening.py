"""Per-depth PCA whitening of the stored item tokens: fitted once on the catalog, then fixed.

Hidden states of a pretrained model are anisotropic: a few directions carry most of the
variance and every item looks alike along them, so a learned projection starts from vectors
that are nearly parallel. Whitening (as WhitenRec does for text embeddings) subtracts each
depth's catalog mean, rotates onto its top `k` principal directions and scales each to unit
variance. Two things follow: the recommender's projection starts on well-conditioned inputs,
and it reads `k` numbers per token instead of the backbone's hidden size (384 for MiniLM,
3,584 for a 7B Video LLM), so the item tower is cheap enough to score the whole catalog at
every step (the full softmax). The statistics are buffers of the model: saved in the
checkpoint and applied unchanged to items added after training.
"""

from __future__ import annotations

import torch
from torch import nn

FIT_TOKENS = 65_536
"""Tokens per depth the statistics are estimated from (from items evenly spaced over the
catalog): plenty for a basis of a few dozen directions, and the fit stays seconds long
whatever the catalog's size."""
FIT_CHUNK = 1024  # items per product while fitting


class Whitening(nn.Module):
    """`[..., L, T, D]` -> `[..., L, T, k]`: per depth, `(x - mean_l) @ basis_l`."""

    def __init__(self, num_layers: int, dim: int, k: int):
        super().__init__()
        if not 0 < k <= dim:
            raise ValueError(f"whitening keeps 1..{dim} dimensions per depth, not {k}")
        self.k = k
        self.register_buffer("mean", torch.zeros(num_layers, dim))
        self.register_buffer("basis", torch.zeros(num_layers, dim, k))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, tokens) -> None:
        """Estimate mean and basis from `tokens [N, L, T, D]` (a tensor, or an `ItemTokens`
        table, such as one read from the store). Row 0 is the padding item and all-zero rows
        are items without features: both are left out."""
        rows_of = tokens.__getitem__ if isinstance(tokens, torch.Tensor) else tokens.gather
        n, layers, t, dim = tokens.shape
        count = min(n - 1, max(2, FIT_TOKENS // t))
        rows = torch.linspace(1, n - 1, count).round().long().unique()
        total = torch.zeros(layers, dim, dtype=torch.float64)
        gram = torch.zeros(layers, dim, dim, dtype=torch.float64)
        seen = 0
        shift = None  # the first chunk's mean: products of shifted values lose no precision
        for start in range(0, len(rows), FIT_CHUNK):
            x = rows_of(rows[start : start + FIT_CHUNK]).float()
            x = x[x.flatten(1).abs().sum(1) > 0].transpose(0, 1).reshape(layers, -1, dim)
            if not x.shape[1]:
                continue
            if shift is None:
                shift = x.mean(1, keepdim=True)
            x = x - shift
            total += x.sum(1).double()
            gram += torch.bmm(x.transpose(1, 2), x).double()
            seen += x.shape[1]
        if seen < 2:
            raise ValueError("whitening needs the features of at least 2 items")
        mean = total / seen
        cov = gram / seen - mean[:, :, None] * mean[:, None, :]
        values, vectors = torch.linalg.eigh(cov)  # ascending
        values, vectors = values.flip(-1)[:, : self.k], vectors.flip(-1)[:, :, : self.k]
        # Directions with (numerically) no variance stay at zero rather than being blown up.
        keep = values > values[:, :1].clamp_min(1e-30) * 1e-6
        scale = torch.where(keep, values.clamp_min(1e-30).rsqrt(), 0.0)
        self.mean.copy_((mean + shift[:, 0].double()).float())
        self.basis.copy_((vectors * scale[:, None, :]).float())
        self.fitted.fill_(True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Layer-major output `[L, n, T, k]` from `[n, L, T, D]`: the compressor's products
        run per depth, on views."""
        if not self.fitted:
            raise RuntimeError("the whitening was never fitted: call fit(tokens) first")
        x = tokens.transpose(0, 1).float() - self.mean[:, None, None, :]
        n, t = x.shape[1], x.shape[2]
        out = torch.bmm(x.reshape(len(x), n * t, -1), self.basis)
        return out.view(len(x), n, t, self.k)
