"""The LinkedOut recommender, top to bottom.

    item tokens [N, L, T, D] --Whitening (fitted once on the catalog, fixed)--> [L, N, T, k]
    --LayerTokenCompressor: pool the T tokens, project k -> r, per depth--> c [N, L, r]
    --DepthExperts: one residual MLP per depth--> e [N, L, r]            (catalog.lance holds e)
    E_l(i) = U_l e_l(i) in R^d                                            depth l, model space
    history items: x_i = sum_l a_l(i) E_l(i) (+ id(i)) + position         a: the item's gate
    x --SequenceEncoder (SASRec)--> h_u                                   the user state
    score(u, i) = <h_u, id(i)> + sum_l g_l(u) <U_l^T h_u, e_l(i)>         g: the user's gate

Scores are one product, `user_vectors(h, g) @ keys(e, id).T`, of a `d + L·r` user vector with a
`d + L·r` item vector: a whole catalog is ranked (and, in training, softmaxed over) in one
matrix product, and the L per-depth terms of a score say which depth drove it. Each depth's
expert lives in its own r-dimensional subspace of the model space (`U_l`), so the per-user
gate costs L·r numbers per item rather than L·d.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from linkedout.recommend.config import ModelConfig
from linkedout.recommend.softmax import full_softmax_loss
from linkedout.recommend.whitening import Whitening


class LayerTokenCompressor(nn.Module):
    """Per depth: attention pooling of the T tokens with a learned query (unless they were
    mean-pooled already, T = 1), then a projection to the expert width. Reads layer-major
    tokens `[L, N, T, k]` (the whitening's output)."""

    def __init__(self, num_layers: int, dim: int, out: int, attention: bool, scale: float = 0.1):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(num_layers, dim)) if attention else None
        # Small at first: content vectors start at the ID embeddings' scale, not 50x above it.
        self.proj = nn.Parameter(torch.randn(num_layers, dim, out) * (scale / math.sqrt(dim)))
        self.bias = nn.Parameter(torch.zeros(num_layers, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [L, N, T, k] -> [L, N, r]
        dim = x.shape[-1]
        if self.query is None:  # mean-pooled already: T = 1, read in place (no copy)
            pooled = x[:, :, 0] if x.shape[2] == 1 else x.mean(2)
        else:
            logits = torch.matmul(x, self.query[:, None, :, None]) / math.sqrt(dim)  # [L,N,T,1]
            pooled = torch.matmul(logits.transpose(2, 3).softmax(-1), x)[:, :, 0]  # [L, N, k]
        return torch.baddbmm(self.bias[:, None, :], pooled, self.proj)


class DepthExperts(nn.Module):
    """One residual expert MLP per depth, its subspace `U_l` of the model space, and gates
    over depths conditioned on a vector of the model space."""

    def __init__(self, num_layers: int, r: int, d_model: int, top_k: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(num_layers, r, 2 * r) / math.sqrt(r))
        self.w2 = nn.Parameter(torch.randn(num_layers, 2 * r, r) / math.sqrt(2 * r))
        self.lift = nn.Parameter(torch.randn(num_layers, d_model, r) / math.sqrt(r))  # U_l
        self.user_gate = nn.Linear(d_model, num_layers)
        self.item_gate = nn.Linear(d_model, num_layers)
        self.top_k = top_k

    def forward(self, c: torch.Tensor) -> torch.Tensor:  # [L, N, r] -> [L, N, r], layer-major
        return torch.baddbmm(c, F.gelu(torch.bmm(c, self.w1)), self.w2)

    def to_model_space(self, e: torch.Tensor) -> torch.Tensor:  # [N, L, r] -> [N, L, d]
        return torch.bmm(e.transpose(0, 1), self.lift.transpose(1, 2)).transpose(0, 1)

    def user_view(self, h: torch.Tensor) -> torch.Tensor:  # [B, d] -> [B, L, r]: U_l^T h
        return torch.einsum("bd,ldr->blr", h, self.lift)

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
    """Scores items for users from item tokens of shape `token_shape` (L, T, D) per item, or
    from IDs alone with fusion `none` (no tokens: `token_shape` None)."""

    def __init__(
        self,
        config: ModelConfig,
        num_items: int,
        token_shape: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        self.config = config
        self.num_items = num_items
        self.content = config.fusion != "none"
        if self.content and token_shape is None:
            raise ValueError(f"fusion {config.fusion!r} reads item tokens: give their shape")
        # ID-only models have one (fixed) depth weight, so gates keep their [..., L] shape.
        num_layers, _, dim = token_shape if self.content else (1, 0, 0)
        self.num_layers = num_layers
        d = config.d_model
        self.expert_dim = config.expert_dim if self.content else 0
        if self.content:
            if config.whiten:
                self.whitening = Whitening(num_layers, dim, min(config.whiten, dim))
                width = self.whitening.k
            else:
                self.whitening = None
                self.token_norm = nn.LayerNorm(dim, elementwise_affine=False)
                width = dim
            attention = config.token_pool == "attention"
            self.compressor = LayerTokenCompressor(num_layers, width, config.expert_dim, attention)
            self.experts = DepthExperts(num_layers, config.expert_dim, d, config.top_k)
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

    @classmethod
    def stored(
        cls,
        model: dict,
        num_items: int,
        num_layers: int | None = None,
        tokens: int | None = None,
        dim: int | None = None,
    ) -> LinkedOut:
        """The model a checkpoint's hyperparameters describe (`LinkedOutModule`'s): its
        ModelConfig as stored, and the item tokens' shape (None for ID-only models)."""
        shape = None if num_layers is None else (num_layers, tokens, dim)
        return cls(ModelConfig.stored(model), num_items, shape)

    # -- items ------------------------------------------------------------------------------
    def reduce_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Stored tokens `[N, L, T, D]` -> what the compressor reads, layer-major `[L, N, T, k]`:
        fixed (no parameters), so training computes it once for the whole catalog."""
        if self.whitening is not None:
            x = self.whitening(tokens)
        else:
            x = self.token_norm(tokens.transpose(0, 1).float())
        return x.mean(2, keepdim=True) if self.config.token_pool == "mean" else x

    def item_codes(self, reduced: torch.Tensor) -> torch.Tensor:
        """Reduced tokens `[L, N, T, k]` -> per-depth expert outputs `e [N, L, r]`."""
        # Layer-major until here: every product above is one batched matmul over depths.
        return self.experts(self.compressor(reduced)).transpose(0, 1).contiguous()

    def item_experts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Stored tokens `[N, L, T, D]` -> `e [N, L, r]` (what catalog.lance stores)."""
        return self.item_codes(self.reduce_tokens(tokens))

    def _fixed_gate(self, shape: torch.Size, device) -> torch.Tensor | None:
        """Gates of the non-learned fusions (None for moe)."""
        if self.config.fusion == "moe":
            return None
        return torch.full((*shape, self.num_layers), 1.0 / self.num_layers, device=device)

    def item_inputs(
        self,
        codes: torch.Tensor | None,
        items: torch.Tensor,
        id_vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sequence-input vectors of items: content mixed by an item-conditioned gate, + ID.
        `id_vectors` stand in for the ID table's rows (serving: items added after training
        have none, so theirs are zero)."""
        out = 0 if codes is None else self.content_inputs(codes)
        return out if self.ids is None else out + self.id_inputs(items, id_vectors)

    def id_inputs(
        self, items: torch.Tensor, id_vectors: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`[n, d]` the items' ID vectors, dropped with `id_dropout` in training (content +
        IDs models), so the model learns to read items by their content too."""
        ids = self.ids(items) if id_vectors is None else id_vectors
        if self.training and self.content and self.config.id_dropout > 0:
            keep = torch.rand(len(items), 1, device=ids.device) >= self.config.id_dropout
            ids = ids * keep
        return ids

    def content_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """`e [n, L, r]` -> `[n, d]`: the depths' model-space vectors mixed by the item's gate."""
        experts = self.experts.to_model_space(codes)  # [n, L, d]
        gate = self._fixed_gate(codes.shape[:1], codes.device)
        if gate is None:
            gate = self.experts.gate(experts.mean(1), self.experts.item_gate)
        return torch.einsum("nl,nld->nd", gate, experts)

    # -- users ------------------------------------------------------------------------------
    def user_states(self, history_vectors: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.encoder(history_vectors, padding)

    def user_gate(self, h: torch.Tensor) -> torch.Tensor:
        """`[..., d]` -> `[..., L]`: how much each depth counts for this user right now."""
        fixed = self._fixed_gate(h.shape[:-1], h.device)
        return fixed if fixed is not None else self.experts.gate(h, self.experts.user_gate)

    def encode(
        self,
        history: torch.Tensor,
        codes: torch.Tensor | None,
        id_vectors: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The recommender's user side, once for training's validation, evaluation and serving:
        padded histories `[B, S]` (0 = padding) and their items' `e [B·S, L, r]` (None for
        ID-only models) -> the last user state `[B, d]` and its gate `[B, L]`. `id_vectors`
        `[B·S, d]` stand in for the ID table's rows (serving's snapshots)."""
        flat = history.reshape(-1)
        vectors = self.item_inputs(codes, flat, id_vectors).reshape(*history.shape, -1)
        h = self.user_states(vectors, history == 0)[:, -1]
        return h, self.user_gate(h)

    # -- scores -----------------------------------------------------------------------------
    def user_vectors(self, h: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        """User vectors `[B, d + L·r]`: h for the ID part, g_l U_l^T h for depth l."""
        parts = [h] if self.ids is not None else []
        if self.content:
            parts.append((gate[..., None] * self.experts.user_view(h)).flatten(1))
        return torch.cat(parts, 1)

    def keys(
        self,
        codes: torch.Tensor | None,
        id_vectors: torch.Tensor | None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Item vectors `[C, d + L·r]` matching `user_vectors` (written into `out` if given:
        a catalog of a million items is not copied twice)."""
        parts = [id_vectors] if id_vectors is not None else []
        if codes is not None:
            parts.append(codes.flatten(1))
        return torch.cat(parts, 1, out=out)

    def folds(self) -> bool:
        """Whether training scores through `folded_keys`: with a fixed gate (every fusion but
        moe) the depths' terms fold into the model space, `sum_l (1/L) <U_l^T h, e_l(i)> =
        <h, sum_l U_l e_l(i) / L>`, so the softmax's products are d wide instead of
        `d + L·r` (64 against 176 for mean + IDs on MicroLens' seven depths); kept only where
        that is narrower (one 16-wide depth alone is not)."""
        if not self.content or self.config.fusion == "moe":
            return False
        key_width = (self.config.d_model if self.ids is not None else 0) + (
            self.num_layers * self.expert_dim
        )
        return self.config.d_model < key_width

    def folded_keys(self, codes: torch.Tensor, id_vectors: torch.Tensor | None) -> torch.Tensor:
        """`[C, d]` keys against the user state h itself, for fixed-gate fusions (`folds`):
        `id(i) + sum_l U_l e_l(i) / L`, one `[C, L·r] @ [L·r, d]` product."""
        lift = self.experts.lift  # [L, d, r]
        # [L·r, d]: row l·r + j is U_l[:, j], matching codes.flatten(1)'s column l·r + j
        stacked = lift.transpose(1, 2).reshape(-1, lift.shape[1])
        content = codes.flatten(1) @ (stacked / self.num_layers)
        return content if id_vectors is None else content + id_vectors

    def score(
        self,
        h: torch.Tensor,
        gate: torch.Tensor | None,
        codes: torch.Tensor | None,
        id_vectors: torch.Tensor | None,
    ) -> torch.Tensor:
        """`h [B, d]` against candidates (`codes [C, L, r]`, `id_vectors [C, d]`) -> `[B, C]`."""
        scores = self.user_vectors(h, gate) @ self.keys(codes, id_vectors).T
        new = self.new_items(id_vectors)
        return scores if new is None else scores.addr(self.lifts(h), new)

    def lift_new_items(self, lift: float | None) -> None:
        """Rank with `new_item_lift` `lift` from now on (None: keep the trained setting). A
        ranking setting only: the weights do not depend on it."""
        if lift is not None:
            self.config = replace(self.config, new_item_lift=lift)

    def new_items(self, id_vectors: torch.Tensor | None) -> torch.Tensor | None:
        """`[C]` 1 for candidates without a trained ID vector (the zero vector: untrained rows
        stay zero, and items added after training read row 0), else 0; None when the ranking
        lifts no item (no lift, or not a content + IDs model)."""
        if not self.config.new_item_lift or id_vectors is None or not self.content:
            return None
        return (id_vectors == 0).all(1).to(id_vectors.dtype)

    def lifts(self, h: torch.Tensor, id_scale: torch.Tensor | None = None) -> torch.Tensor:
        """`[B]` what a new item gains in each user's scores: `new_item_lift` times the scale of
        that user's ID scores, |h_u| times the mean length of the trained ID vectors
        (`id_scale`, computed when not given). Scaled, not constant, because ID scores grow as
        training goes on: a constant chosen on one run is too small for a run that trains
        longer (README, model section)."""
        scale = self.id_scale() if id_scale is None else id_scale
        return (self.config.new_item_lift * scale) * h.float().norm(dim=-1).to(h.dtype)

    def id_scale(self) -> torch.Tensor:
        """The mean length of the trained (nonzero) ID vectors: fixed once trained, so serving
        computes it once per catalog version, not per request."""
        norms = self.ids.weight.detach().float().norm(dim=1)
        return norms.sum() / (norms > 0).sum().clamp(min=1)

    def expert_contributions(
        self, h: torch.Tensor, gate: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        """`[B, C, L]`: each depth's term of the score, for explanations."""
        return torch.einsum("bl,blr,clr->bcl", gate, self.experts.user_view(h), codes)

    # -- training ---------------------------------------------------------------------------
    def loss(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        needed: torch.Tensor,
        reduced: torch.Tensor | None,
        candidates: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
        log_q: torch.Tensor | None = None,
        product_dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-item cross-entropy at every position of a batch (inputs and targets `[B, S]`,
        0 = padding), and the user gates at those positions (for the balance term).

        `needed`: sorted item indices whose vectors this step computes, holding every input,
        target and candidate; `reduced`: their reduced tokens (None for ID-only models).
        Give `candidates` (sorted items that compete) for a full softmax over them, or
        `negatives` (items drawn with log-probabilities `log_q`) for a sampled softmax over
        the target and those shared negatives, corrected by `log_q` so that it estimates the
        full one; a negative equal to the target is masked."""
        if (candidates is None) == (negatives is None):
            raise ValueError("give either candidates (full softmax) or negatives (sampled)")
        codes = None
        if reduced is not None:
            # The whole catalog's codes, forward and backward, every step: in the products' dtype
            # this halves (bfloat16 on CPUs with AVX512-BF16); the softmax rounds the keys to it
            # anyway. Evaluation and serving compute codes in float32.
            low = product_dtype != torch.float32
            with torch.autocast(reduced.device.type, product_dtype, enabled=low):
                codes = self.item_codes(reduced)
            codes = codes.float()
        # A full softmax needs every item: rows are read in place (`_rows`), not gathered.
        ids = _rows(self.ids.weight, needed) if self.ids is not None else None
        flat = inputs.flatten()
        vectors = 0
        if codes is not None:
            # A batch's B x S positions (padding included) hold far fewer distinct items: each
            # one's content vector is computed once, then copied to its positions.
            distinct, at = torch.unique(flat, return_inverse=True)
            where = torch.searchsorted(needed, distinct)
            vectors = self.content_inputs(codes.index_select(0, where)).index_select(0, at)
        if self.ids is not None:
            vectors = vectors + self.id_inputs(flat)
        vectors = vectors.reshape(*inputs.shape, -1)
        valid = targets != 0
        h = self.user_states(vectors, inputs == 0)[valid]  # [P, d] positions with a target
        gate = self.user_gate(h)
        if self.folds():
            users, keys = h, self.folded_keys(codes, ids)  # [n, d]: the same scores
        else:
            users = self.user_vectors(h, gate)
            keys = self.keys(codes, ids)  # [n, d + L·r], one row per needed item
        if candidates is not None:
            keys = _rows(keys, torch.searchsorted(needed, candidates))
            target_col = torch.searchsorted(candidates, targets[valid])
            return full_softmax_loss(users, keys, target_col, product_dtype), gate
        target_col = torch.searchsorted(needed, targets[valid])
        neg_col = torch.searchsorted(needed, negatives)
        pos = (users * keys.index_select(0, target_col)).sum(1, keepdim=True)
        neg = users @ keys.index_select(0, neg_col).T
        log_q = log_q.index_select(0, needed)
        pos = pos - log_q[target_col][:, None]
        neg = neg - log_q[neg_col]
        neg = neg.masked_fill(neg_col[None, :] == target_col[:, None], float("-inf"))
        full = torch.cat([pos, neg], 1)
        zeros = torch.zeros(len(full), dtype=torch.long, device=full.device)
        return F.cross_entropy(full, zeros), gate


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`table[index]` for sorted, distinct `index`: a view when it is a run of consecutive rows
    (a full softmax's items), which saves a copy and a scatter in the backward pass."""
    if len(index):
        first, last = int(index[0]), int(index[-1])
        if last - first + 1 == len(index):
            return table[first : last + 1]
    # index_select rather than `tensor[index]`: under deterministic=True the backward of
    # advanced indexing takes a sort-based path that made an epoch 5x slower.
    return table.index_select(0, index)


def balance_loss(gate: torch.Tensor) -> torch.Tensor:
    """L * sum_l mean_gate_l^2: 1 when the average gate is uniform, L when it is one-hot."""
    mean = gate.reshape(-1, gate.shape[-1]).mean(0)
    return gate.shape[-1] * (mean**2).sum()
