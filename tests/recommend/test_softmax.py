"""The chunked full softmax: the same loss and gradients as cross-entropy over one logit matrix."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from linkedout.recommend import softmax
from linkedout.recommend.softmax import full_softmax_loss


def _both(dtype, products, chunk_rows, chunk_cols=None):
    torch.manual_seed(0)
    queries = torch.randn(37, 8, dtype=dtype, requires_grad=True)
    keys = torch.randn(50, 8, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    loss = full_softmax_loss(queries, keys, targets, products, chunk_rows, chunk_cols)
    loss.backward()
    mine = loss.detach(), queries.grad.clone(), keys.grad.clone()
    queries.grad = keys.grad = None
    reference = F.cross_entropy(queries @ keys.T, targets)
    reference.backward()
    return mine, (reference.detach(), queries.grad, keys.grad)


@pytest.mark.parametrize("kept", [True, False], ids=["exponentials-kept", "remade"])
@pytest.mark.parametrize(("chunk_rows", "chunk_cols"), [(1, 1), (10, 7), (37, 50), (100, 100)])
def test_loss_and_gradients_equal_cross_entropy_in_double(
    chunk_rows, chunk_cols, kept, monkeypatch
):
    """Rows chunked in the forward pass, item columns in the backward pass when it remakes the
    exponentials (a last block shorter than the rest included)."""
    monkeypatch.setattr(softmax, "SAVED_BYTES", softmax.SAVED_BYTES if kept else 0)
    mine, reference = _both(torch.float64, torch.float64, chunk_rows, chunk_cols)
    for a, b in zip(mine, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bfloat16_products_stay_close_to_the_exact_loss():
    mine, reference = _both(torch.float32, torch.bfloat16, 16, 16)
    torch.testing.assert_close(mine[0], reference[0], rtol=2e-3, atol=2e-3)
    for a, b in zip(mine[1:], reference[1:], strict=True):
        assert (a - b).abs().max() < 0.02 * b.abs().max()


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="users"):
        full_softmax_loss(torch.randn(4, 8), torch.randn(5, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        full_softmax_loss(torch.randn(4, 8), torch.randn(5, 8), torch.zeros(3, dtype=torch.long))


def test_the_compiled_pass_equals_the_written_one(monkeypatch):
    """The fused (torch.compile) row pass, forced on a small step, against the eager one."""
    eager, reference = _both(torch.float32, torch.float32, 16)
    monkeypatch.setattr(softmax, "FUSED_CELLS", 0)
    with warnings.catch_warnings():
        # a compile failure falls back with this warning: fail here instead
        warnings.filterwarnings("error", message="the fused softmax")
        fused, _ = _both(torch.float32, torch.float32, 16)
    for a, b, c in zip(fused, eager, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


def test_a_kept_buffer_is_not_reused_before_its_backward_pass():
    """Two losses, then both backward passes: the second forward pass must not write over
    the exponentials the first one's backward pass still needs."""
    torch.manual_seed(1)
    a = [torch.randn(20, 6, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    b = [torch.randn(20, 6, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    targets = torch.randint(0, 20, (20,))
    first = full_softmax_loss(*a, targets, torch.float64)
    second = full_softmax_loss(*b, targets, torch.float64)
    (first + second).backward()
    for q, k in (a, b):
        grads = torch.autograd.grad(F.cross_entropy(q @ k.T, targets), (q, k))
        torch.testing.assert_close(q.grad, grads[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(k.grad, grads[1], rtol=1e-12, atol=1e-12)
    # and after a backward pass the buffer serves the next step, bigger or smaller
    for rows in (30, 5):
        q = torch.randn(rows, 6, dtype=torch.float64, requires_grad=True)
        k = torch.randn(40, 6, dtype=torch.float64, requires_grad=True)
        t = torch.randint(0, 40, (rows,))
        full_softmax_loss(q, k, t, torch.float64).backward()
        grads = torch.autograd.grad(F.cross_entropy(q @ k.T, t), (q, k))
        torch.testing.assert_close(q.grad, grads[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(k.grad, grads[1], rtol=1e-12, atol=1e-12)
