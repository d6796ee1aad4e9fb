"""The approximate-index benchmark's own arithmetic: the MIPS-to-L2 reduction keeps the
inner-product order, and the mixture catalog spreads like the keys it was fitted to."""

from __future__ import annotations

import torch

from benchmarks.ann import mips_to_l2, mixture


def test_the_reduction_to_l2_keeps_the_inner_product_order():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(500, 12, generator=g) * torch.rand(500, 1, generator=g) * 3
    queries = torch.randn(20, 12, generator=g)
    reduced_keys, reduced_queries = mips_to_l2(keys, queries)
    by_product = (queries @ keys.T).argsort(1, descending=True)
    by_distance = torch.cdist(reduced_queries, reduced_keys).argsort(1)
    assert torch.equal(by_product[:, :10], by_distance[:, :10])


def test_the_mixture_catalog_spreads_like_its_keys_without_copying_them():
    g = torch.Generator().manual_seed(1)
    real = torch.cat([torch.randn(300, 8, generator=g) + 4, torch.randn(300, 8, generator=g) - 4])
    drawn = mixture(real, 6000, clusters=8)
    assert drawn.shape == (6000, 8)
    assert torch.allclose(drawn.mean(0), real.mean(0), atol=0.3)
    assert torch.allclose(drawn.std(0), real.std(0), rtol=0.15)
    assert torch.cdist(drawn[:200], real).min() > 1e-3  # new keys, not copies
