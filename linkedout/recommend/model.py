"""The LinkedOut recommender, top to bottom.

    item tokens [N, L, T, D] --LayerTokenCompressor--> c [N, L, d]   one vector per layer
    c --CrossLayerMoE experts--> E [N, L, d]                          one expert per layer
    history items: x_i = sum_l g_l(item i) E_l(i) (+ id(i)) + position
    x --SequenceEncoder (causal Transformer)--> h_u                   the user state
    score(u, i) = sum_l g_l(u) <h_u, E_l(i)> (+ <h_u, id(i)>)         gate personalised by h_u

Because the user side is `u_l = g_l(u) h_u`, ranking a whole catalog is one matrix product with
the precomputed `E`, and the per-layer terms say which depth drove each recommendation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FUSIONS = ("moe", "mean", "last", "layer:K", "none")


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 64
    """Width of item vectors and of the sequence model."""
    fusion: str = "moe"
    """How layers combine: moe (personalised gate), mean, last, layer:K (one depth) or none."""
    ids: bool = False
    """Add a learned item-ID embedding to the content (content-only scores unseen items)."""
    top_k: int = 0
    """Gate keeps only the k largest layer weights (0 = soft gate over all layers)."""
    balance_weight: float = 0.01
    """Weight of the load-balancing term that keeps the gate from collapsing early."""
    blocks: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50


class LayerTokenCompressor(nn.Module):
    """Per layer: attention pooling of the T tokens with a learned query, then a projection."""

    def __init__(self, layers: int, dim: int, d_model: int):
        super().__init__()
        # No learned affine: the projection after it learns any scale, and the tokens (data)
        # then need no backward pass through the norm, the largest tensor of a training step.
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.query = nn.Parameter(torch.zeros(layers, dim))
        self.proj = nn.Parameter(torch.randn(layers, dim, d_model) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.zeros(layers, d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [N, L, T, D] -> [N, L, d]
        n, layers, t, dim = tokens.shape
        # The cast to fp32 copies the tokens anyway; the same copy makes them layer-major, so
        # every product below is a batched matmul over layers on views. Einsum over [N, L, ...]
        # would permute (copy) this, the largest tensor of a training step, once more.
        x = torch.empty((layers, n, t, dim), dtype=torch.float32, device=tokens.device)
        x = self.norm(x.copy_(tokens.transpose(0, 1)))
        logits = torch.bmm(x.view(layers, n * t, dim), self.query[:, :, None]) / math.sqrt(dim)
        attn = logits.view(layers * n, 1, t).softmax(-1)
        pooled = torch.bmm(attn, x.view(layers * n, t, dim)).view(layers, n, dim)
        return torch.baddbmm(self.bias[:, None, :], pooled, self.proj).transpose(0, 1)


class CrossLayerMoE(nn.Module):
    """One expert MLP per layer, and gates over layers conditioned on a context vector."""

    def __init__(self, layers: int, d_model: int, top_k: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(layers, d_model, 2 * d_model) / math.sqrt(d_model))
        self.w2 = nn.Parameter(torch.randn(layers, 2 * d_model, d_model) / math.sqrt(2 * d_model))
        self.user_gate = nn.Linear(d_model, layers)
        self.item_gate = nn.Linear(d_model, layers)
        self.top_k = top_k

    def experts(self, c: torch.Tensor) -> torch.Tensor:  # [N, L, d] -> [N, L, d]
        hidden = F.gelu(torch.einsum("nld,ldk->nlk", c, self.w1))
        return c + torch.einsum("nlk,lkd->nld", hidden, self.w2)

    def gate(self, context: torch.Tensor, which: nn.Linear) -> torch.Tensor:  # [..., d] -> [..., L]
        logits = which(context)
        if 0 < self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return logits.softmax(-1)


class SequenceEncoder(nn.Module):
    """SASRec: learned positions, an input norm, causal pre-norm Transformer blocks; returns
    every state. Pads are hidden from real positions, so a state does not depend on how much
    padding its batch needed (training pads to the batch's longest, ranking to `max_len`)."""

    def __init__(self, d_model: int, blocks: int, heads: int, dropout: float, max_len: int):
        super().__init__()
        self.heads = heads
        self.position = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.position.weight, std=0.02)
        # Content vectors and ID embeddings come at different scales: normalise their sum
        # with the position, as RecBole's SASRec does.
        self.input_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            2 * d_model,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:  # [B, S, d]
        s = x.shape[1]
        x = self.dropout(self.input_norm(x + self.position.weight[-s:]))
        step = torch.arange(s, device=x.device)
        later = step[None, :] > step[:, None]  # [S, S] keys after the query
        other = step[None, :] != step[:, None]
        # Every position may attend to itself, so pad rows (never read) keep one key and
        # never turn into NaN that would leak through the values.
        blocked = later[None] | (padding[:, None, :] & other[None])  # [B, S, S]
        return self.norm(self.blocks(x, mask=blocked.repeat_interleave(self.heads, 0)))


class LinkedOut(nn.Module):
    """Scores items for users from item tokens (or IDs alone with fusion `none`)."""

    def __init__(self, config: ModelConfig, num_items: int, layers: int, tokens: int, dim: int):
        super().__init__()
        self.config = config
        self.num_items = num_items
        self.layers = layers
        d = config.d_model
        self.content = config.fusion != "none"
        if self.content:
            self.compressor = LayerTokenCompressor(layers, dim, d)
            self.moe = CrossLayerMoE(layers, d, config.top_k)
        self.ids = None
        if config.ids:
            # Small, as in SASRec: N(0, 1) vectors would make the first logits ~sqrt(d) wide
            # and the softmax saturate on random items.
            self.ids = nn.Embedding(num_items, d, padding_idx=0)
            nn.init.normal_(self.ids.weight, std=0.02)
            self.ids.weight.data[0] = 0
        self.encoder = SequenceEncoder(
            d, config.blocks, config.heads, config.dropout, config.max_len
        )

    # -- items ------------------------------------------------------------------------------
    def item_experts(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[N, L, T, D]` -> per-layer item embeddings `E [N, L, d]`."""
        return self.moe.experts(self.compressor(tokens))

    def _fixed_gate(self, shape: torch.Size, device) -> torch.Tensor | None:
        """Gates of the non-learned fusions (None for moe)."""
        if self.config.fusion == "moe":
            return None
        return torch.full((*shape, self.layers), 1.0 / self.layers, device=device)

    def item_inputs(self, experts: torch.Tensor | None, items: torch.Tensor) -> torch.Tensor:
        """Sequence-input vectors of items: content mixed by an item-conditioned gate, + ID."""
        out = 0
        if experts is not None:
            gate = self._fixed_gate(items.shape[:1], experts.device)
            if gate is None:
                gate = self.moe.gate(experts.mean(1), self.moe.item_gate)
            out = torch.einsum("nl,nld->nd", gate, experts)
        if self.ids is not None:
            out = out + self.ids(items)
        return out

    # -- users ------------------------------------------------------------------------------
    def user_states(self, history_vectors: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.encoder(history_vectors, padding)

    def user_gate(self, h: torch.Tensor) -> torch.Tensor:
        """`[..., d]` -> `[..., L]`: how much each depth counts for this user right now."""
        fixed = self._fixed_gate(h.shape[:-1], h.device)
        return fixed if fixed is not None else self.moe.gate(h, self.moe.user_gate)

    def score(
        self,
        h: torch.Tensor,
        gate: torch.Tensor | None,
        experts: torch.Tensor | None,
        id_vectors: torch.Tensor | None,
    ) -> torch.Tensor:
        """`h [B, d]` against candidates (`experts [C, L, d]`, `id_vectors [C, d]`) -> `[B, C]`."""
        scores = 0
        if experts is not None:
            # One [B, L*d] x [L*d, C] product on a view of `experts`: einsum would permute (copy)
            # the whole catalog on every call.
            user = (gate[..., None] * h[:, None, :]).reshape(len(h), -1)
            scores = user @ experts.reshape(len(experts), -1).T
        if id_vectors is not None:
            scores = scores + h @ id_vectors.T
        return scores

    def score_pairs(
        self,
        h: torch.Tensor,
        gate: torch.Tensor | None,
        experts: torch.Tensor | None,
        id_vectors: torch.Tensor | None,
    ) -> torch.Tensor:
        """Row i of `h [P, d]` against candidate i only (`experts [P, L, d]`) -> `[P]`."""
        scores = 0
        if experts is not None:
            scores = torch.einsum("pl,pd,pld->p", gate, h, experts)
        if id_vectors is not None:
            scores = scores + (h * id_vectors).sum(-1)
        return scores

    def layer_contributions(
        self, h: torch.Tensor, gate: torch.Tensor, experts: torch.Tensor
    ) -> torch.Tensor:
        """`[B, C, L]`: each layer's term of the score, for explanations."""
        return torch.einsum("bl,bd,cld->bcl", gate, h, experts)


def balance_loss(gate: torch.Tensor) -> torch.Tensor:
    """L * sum_l mean_gate_l^2: 1 when the average gate is uniform, L when it is one-hot."""
    mean = gate.reshape(-1, gate.shape[-1]).mean(0)
    return gate.shape[-1] * (mean**2).sum()
