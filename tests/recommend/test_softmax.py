"""The chunked full softmax: the same loss and gradients as cross-entropy over one logit matrix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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


@pytest.mark.parametrize(("chunk_rows", "chunk_cols"), [(1, 1), (10, 7), (37, 50), (100, 100)])
def test_loss_and_gradients_equal_cross_entropy_in_double(chunk_rows, chunk_cols):
    """Rows chunked in the forward pass, item columns in the backward pass (a last block
    shorter than the rest included)."""
    mine, reference = _both(torch.float64, torch.float64, chunk_rows, chunk_cols)
    for a, b in zip(mine, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bfloat16_products_stay_close_to_the_exact_loss():
    mine, reference = _both(torch.float32, torch.bfloat16, 16, 16)
    torch.testing.assert_close(mine[0], reference[0], rtol=2e-3, atol=2e-3)
    for a, b in zip(mine[1:], reference[1:], strict=True):
        assert (a - b).abs().max() < 0.02 * b.abs().max()


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="queries"):
        full_softmax_loss(torch.randn(4, 8), torch.randn(5, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        full_softmax_loss(torch.randn(4, 8), torch.randn(5, 8), torch.zeros(3, dtype=torch.long))
