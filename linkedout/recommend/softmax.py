"""Cross-entropy over the whole catalog (a full softmax) without a `[P, N]` float32 logit matrix.

Scores are `users [P, m] @ keys [N, m].T` (user vectors, item keys). The forward pass makes the
logits `chunk_rows` rows at a time, in the products' dtype; one pass over each chunk (compiled
with torch.compile on large steps, where it is a sixth of the passes of the eager code) takes
each row's max and sum of exponentials, and writes the exponentials, in the products' dtype, to
a `[P, N]` buffer kept for the backward pass and reused from step to step. The backward pass is
then two products, the probabilities' row factors applied to their small sides. When that buffer
would pass `SAVED_BYTES`, the backward pass remakes the logits a block of `chunk_cols` columns
(items) at a time instead: each block's probabilities give that block's key gradients whole,
written once, while the user-vector gradients, `P x m` and small, are summed over blocks.

The products run in `product_dtype`: bfloat16 is several times faster than float32 where the
hardware multiplies it natively (GPUs, CPUs with AVX512-BF16 or AMX), accumulates in float32, and
the softmax itself is float32. The target's own term (the `-1` of softmax minus one-hot) is exact
float32. At MicroLens-50K's shapes (1,070 targets a step on average against 19,220 items, 2
threads) a step's softmax went from 73 to 55 ms with MoE + IDs keys (176 wide) and from 40 to
33 ms with ID-only keys (64 wide), against the remade-in-blocks backward pass it replaced.

A full softmax is what RecBole's SASRec trains with (`loss_type: CE`); on MicroLens-50K it
ranks 6% better on validation than a 1,024-negative sampled softmax, and 3% better than 4,096
uniform negatives (BENCHMARKS.md, ablations).
"""

from __future__ import annotations

import warnings

import torch

CHUNK_ROWS = 128
CHUNK_CELLS = 1 << 20  # logits per backward block: P x chunk_cols, at least 256 columns
SAVED_BYTES = 1 << 30
"""The forward pass keeps every cell's exponential for the backward pass up to this size (at
MicroLens-50K's shapes 41 MB for an average step, 490 MB for the longest); beyond it the
backward remakes them block by block."""


def product_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 where the device multiplies it natively, else float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return torch.bfloat16 if native else torch.float32
    return torch.float32


def full_softmax_loss(
    users: torch.Tensor,
    keys: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    chunk_rows: int = CHUNK_ROWS,
    chunk_cols: int | None = None,
) -> torch.Tensor:
    """`mean_p CE(users[p] @ keys.T, targets[p])`, with the products in `dtype`.

    Every row of `keys` is a candidate; leave out items that must not compete (padding, items
    no training sequence holds) by not passing their rows."""
    if users.dim() != 2 or keys.dim() != 2 or users.shape[1] != keys.shape[1]:
        raise ValueError(f"users {tuple(users.shape)} and keys {tuple(keys.shape)}")
    if targets.shape != users.shape[:1]:
        raise ValueError(f"targets {tuple(targets.shape)} for {len(users)} users")
    if chunk_cols is None:
        chunk_cols = max(256, CHUNK_CELLS // max(1, len(users)))
    return _FullSoftmax.apply(users, keys, targets, dtype, chunk_rows, chunk_cols)


class _FullSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, users, keys, targets, dtype, chunk_rows, chunk_cols):
        q_low, k_low = users.detach().to(dtype), keys.detach().to(dtype)
        exact = _exact(dtype)
        lse = torch.empty(len(users), dtype=exact, device=users.device)
        # exp(logit - row max) of every cell, kept for the backward pass when it fits: the
        # backward then multiplies it out instead of remaking the products and their
        # exponentials, which halved it on MicroLens (9.7 -> 4.5 s of a MoE + IDs epoch).
        kept = len(q_low) * len(k_low) * q_low.element_size() <= SAVED_BYTES
        exps = _SCRATCH.take((len(q_low), len(k_low)), dtype, q_low.device) if kept else None
        sums = torch.empty(len(users), dtype=exact, device=users.device)
        row_exps = _row_exps_fused() if len(q_low) * len(k_low) >= FUSED_CELLS else _row_exps
        if not kept:  # the exponentials are only summed: one chunk's worth of room
            spare = torch.empty(
                min(chunk_rows, len(q_low)), len(k_low), dtype=dtype, device=q_low.device
            )
        for rows, logits in _logit_chunks(q_low, k_low, chunk_rows):
            out = exps[rows] if kept else spare[: len(logits)]
            top, row_sums = row_exps(logits, out)
            sums[rows] = row_sums
            lse[rows] = row_sums.log() + top
        target_logits = (users * keys.index_select(0, targets)).sum(1)
        ctx.save_for_backward(users, keys, q_low, k_low, targets, lse, sums, exps)
        ctx.chunk_cols = chunk_cols
        return (lse - target_logits).mean()

    @staticmethod
    def backward(ctx, grad):
        users, keys, q_low, k_low, targets, lse, sums, exps = ctx.saved_tensors
        scale = grad / len(users)
        if exps is not None:
            # probabilities = exps / sums, row by row: the row factor goes on the small sides
            # of the two products ([P, m] users, [P, m] gradients), never over [P, N].
            factor = (scale / sums)[:, None]
            grad_q = torch.mm(exps, k_low).to(lse.dtype).mul_(factor)
            grad_k = torch.mm(exps.T, (q_low * factor).to(q_low.dtype)).to(lse.dtype)
            _SCRATCH.give(exps)
        else:
            grad_q = torch.zeros(q_low.shape, dtype=lse.dtype, device=users.device)
            grad_k = torch.empty(keys.shape, dtype=lse.dtype, device=keys.device)
            part_q = torch.empty_like(q_low)
            for cols, probs in _prob_blocks(q_low, k_low, lse, scale, ctx.chunk_cols):
                torch.mm(probs, k_low[cols], out=part_q)
                grad_q += part_q
                grad_k[cols] = probs.T @ q_low
        grad_q -= scale * keys.index_select(0, targets)
        grad_k.index_add_(0, targets, users, alpha=-scale)
        return grad_q.to(users.dtype), grad_k.to(keys.dtype), None, None, None, None


class _Scratch:
    """The exponentials' buffer, handed from one step's backward pass to the next step's
    forward pass: a fresh one of up to hundreds of MB each step cost 7% of an epoch on
    MicroLens in page faults alone. A buffer still held (a forward pass whose backward has not
    run) is never handed out again."""

    def __init__(self):
        self.free: torch.Tensor | None = None

    def take(self, shape: tuple[int, int], dtype: torch.dtype, device) -> torch.Tensor:
        size = shape[0] * shape[1]
        free, self.free = self.free, None
        if free is None or free.dtype != dtype or free.device != device or len(free) < size:
            free = torch.empty(size, dtype=dtype, device=device)
        return free[:size].view(shape)

    def give(self, used: torch.Tensor) -> None:
        flat = used._base if used._base is not None else used.view(-1)
        if self.free is None or len(flat) > len(self.free):
            self.free = flat


_SCRATCH = _Scratch()


def _exact(dtype: torch.dtype) -> torch.dtype:
    """The precision the softmax runs in: float32, or float64 for float64 products."""
    return torch.promote_types(dtype, torch.float32)


def _logit_chunks(q_low: torch.Tensor, k_low: torch.Tensor, chunk_rows: int):
    """(rows, the products [c, N] in the products' dtype) of each chunk of rows, in one buffer
    reused by every chunk: fresh large buffers would cost page faults."""
    low = torch.empty(
        min(chunk_rows, len(q_low)), len(k_low), dtype=q_low.dtype, device=q_low.device
    )
    for start in range(0, len(q_low), chunk_rows):
        rows = slice(start, min(start + chunk_rows, len(q_low)))
        c = rows.stop - rows.start
        torch.mm(q_low[rows], k_low.T, out=low[:c])
        yield rows, low[:c]


def _row_exps(logits: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Products `[c, N]` -> each row's max and sum of exp(logit - max) in float32 (float64 for
    float64 products); the exponentials themselves are written to `out` in the products' dtype."""
    x = logits.to(_exact(logits.dtype))
    top = x.amax(1, keepdim=True)
    x = (x - top).exp()
    out.copy_(x)
    return top[:, 0], x.sum(1)


FUSED_CELLS = 1 << 22
"""Steps of at least this many logits run `_row_exps` compiled (one pass over a chunk instead
of six, which halves the forward pass at MicroLens-50K's shapes); smaller ones, where the
seconds of compiling would not pay, run it as written."""
_fused = None


def _row_exps_fused():
    """`_row_exps` through torch.compile, built once per process (the compiled code is cached
    on disk by torch); where compiling fails (no C++ compiler, say) it runs as written."""
    global _fused
    if _fused is None:
        compiled = torch.compile(_row_exps, dynamic=True)

        def run(logits, out):
            global _fused
            try:
                return compiled(logits, out)
            except Exception as e:  # noqa: BLE001 (any compiler failure: fall back, once)
                warnings.warn(
                    f"the fused softmax did not compile, running unfused: {e}", stacklevel=2
                )
                _fused = _row_exps
                return _row_exps(logits, out)

        _fused = run
    return _fused


def _prob_blocks(q_low: torch.Tensor, k_low: torch.Tensor, lse: torch.Tensor, scale, cols: int):
    """(columns, `scale` x softmax probabilities [P, c] in the products' dtype) of each block of
    `cols` columns, from the rows' log-sum-exp, in one pair of reused buffers."""
    shape = (len(q_low), min(cols, len(k_low)))
    low = torch.empty(shape, dtype=q_low.dtype, device=q_low.device)
    exact = torch.empty(shape, dtype=lse.dtype, device=q_low.device)
    for start in range(0, len(k_low), cols):
        block = slice(start, min(start + cols, len(k_low)))
        c = block.stop - block.start
        torch.mm(q_low, k_low[block].T, out=low[:, :c])
        probs = exact[:, :c].copy_(low[:, :c]).sub_(lse[:, None]).exp_().mul_(scale)
        yield block, low[:, :c].copy_(probs)
