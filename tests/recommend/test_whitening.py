"""The catalog-fitted whitening: unit, uncorrelated principal directions per depth."""

from __future__ import annotations

import pytest
import torch

from linkedout.recommend.whitening import Whitening


def _anisotropic(n=400, layers=2, t=3, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(layers, dim, dim, generator=g) * torch.logspace(0, -3, dim)[None, :, None]
    x = torch.einsum("nltd,lde->nlte", torch.randn(n, layers, t, dim, generator=g), mix) + 5.0
    x[0] = 0  # the padding row
    return x


def test_whitened_tokens_have_zero_mean_and_identity_covariance_per_depth():
    tokens = _anisotropic()
    whitening = Whitening(num_layers=2, dim=12, k=6)
    whitening.fit(tokens)
    out = whitening(tokens[1:])  # [L, n, T, k]
    for depth in out:
        flat = depth.reshape(-1, 6).double()
        assert flat.mean(0).abs().max() < 1e-4
        cov = flat.T @ (flat - flat.mean(0)) / len(flat)
        torch.testing.assert_close(cov, torch.eye(6, dtype=torch.float64), atol=1e-3, rtol=0)


def test_padding_and_items_without_features_do_not_move_the_statistics():
    tokens = _anisotropic()
    reference = Whitening(2, 12, 6)
    reference.fit(tokens)
    with_missing = torch.cat([tokens, torch.zeros(50, *tokens.shape[1:])])
    whitening = Whitening(2, 12, 6)
    whitening.fit(with_missing)
    torch.testing.assert_close(whitening.mean, reference.mean)
    torch.testing.assert_close(whitening.basis.abs(), reference.basis.abs(), atol=1e-4, rtol=1e-3)


def test_directions_without_variance_stay_zero_and_an_unfitted_whitening_refuses():
    tokens = _anisotropic(dim=4)
    flat = torch.cat([tokens, torch.zeros(*tokens.shape[:3], 4)], dim=3)  # 4 constant dims
    whitening = Whitening(2, 8, 8)
    with pytest.raises(RuntimeError, match="never fitted"):
        whitening(flat)
    whitening.fit(flat)
    out = whitening(flat[1:])
    assert torch.isfinite(out).all()
    assert (out[..., 4:].abs() < 1e-3).all()  # the constant directions carry nothing
    assert bool(whitening.fitted)
    state = whitening.state_dict()  # statistics travel with the checkpoint
    assert {"mean", "basis", "fitted"} <= state.keys()
