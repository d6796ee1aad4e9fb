"""The serving scan (bfloat16 candidates, float32 answers) returns the float32 scan's top k:
the same items in the same order with the same scores, masked rows never, and users whose
bfloat16 scores cannot prove their top k are scanned again in float32."""

from __future__ import annotations

import pytest
import torch

from linkedout.service import scan as scan_module
from linkedout.service.scan import MARGIN, Scan


def _float32_top(keys, users, k, masked, offsets=None, lifted=None):
    scores = users @ keys.T
    if offsets is not None:
        scores += offsets[:, None] * lifted[None, :]
    for b, rows in enumerate(masked):
        scores[b, rows] = float("-inf")
    return scores.topk(k, dim=1)


def _catalog(items=3000, width=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Keys of uneven lengths and a few large dimensions, as trained keys have.
    keys = torch.randn(items, width, generator=g) * torch.rand(items, 1, generator=g) * 2
    keys[:, :4] *= 3
    users = torch.randn(40, width, generator=g)
    return keys, users


def _assert_same(got, want):
    (scores, rows), (want_scores, want_rows) = got, want
    assert torch.equal(rows, want_rows)
    torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=1e-5)


def _full_scans(monkeypatch) -> list[int]:
    """Counts the users each float32 fallback scan takes."""
    counted: list[int] = []
    full = Scan._full

    def counting(self, users, *args):
        counted.append(len(users))
        return full(self, users, *args)

    monkeypatch.setattr(Scan, "_full", counting)
    return counted


def test_the_top_k_is_the_float32_scans_with_masks_and_lifts(monkeypatch):
    keys, users = _catalog()
    masked = [[0, 5, 17, b] for b in range(len(users))]
    lifted = (torch.arange(len(keys)) % 7 == 0).float()
    offsets = torch.rand(len(users)) * 3
    scan = Scan.of(keys, low=True)
    assert scan.low is not None and scan.low.dtype == torch.bfloat16
    fallbacks = _full_scans(monkeypatch)
    got = scan.top(users, 10, masked, offsets, lifted)
    _assert_same(got, _float32_top(keys, users, 10, masked, offsets, lifted))
    assert sum(fallbacks) < len(users)  # most users were answered from the candidates
    assert not any(set(r.tolist()) & set(m) for r, m in zip(got[1], masked, strict=True))


def test_users_whose_top_k_is_not_proven_are_scanned_in_float32(monkeypatch):
    """Near-copies (scores 0.01 apart, at 250): the bfloat16 order of the candidates cannot be
    trusted, so the bound fails and the float32 scan answers (still the float32 scan's top k)."""
    keys, users = _catalog()
    base = keys[0].clone()
    keys[: 4 * MARGIN] = base + 1e-2 * torch.randn(4 * MARGIN, keys.shape[1])
    users[:3] = base  # these users score the near-copies far above everything else
    fallbacks = _full_scans(monkeypatch)
    masked = [[0]] * len(users)
    got = Scan.of(keys, low=True).top(users, 10, masked)
    assert sum(fallbacks) >= 3
    _assert_same(got, _float32_top(keys, users, 10, masked))


def test_when_most_items_are_masked_the_rest_come_in_order_then_minus_infinity():
    keys, users = _catalog(items=200)
    keep = [3, 50, 120]
    masked = [[r for r in range(200) if r not in keep]] * 2
    scores, rows = Scan.of(keys, low=True).top(users[:2], 10, masked)
    assert scores.shape == (2, 10)
    assert torch.isinf(scores[:, 3:]).all() and torch.isfinite(scores[:, :3]).all()
    assert all(set(r[:3].tolist()) == set(keep) for r in rows)


@pytest.mark.parametrize("items", [5, MARGIN + 5])
def test_small_catalogs_and_k_above_the_catalog(items):
    keys, users = _catalog(items=items)
    masked = [[0]] * len(users)
    got = Scan.of(keys, low=True).top(users, 50, masked)
    _assert_same(got, _float32_top(keys, users, min(50, items), masked))


def test_without_native_bfloat16_it_scans_in_float32(monkeypatch):
    monkeypatch.setattr(scan_module, "product_dtype", lambda device: torch.float32)
    keys, users = _catalog()
    scan = Scan.of(keys)
    assert scan.low is None
    _assert_same(scan.top(users, 10, [[0]] * len(users)), _float32_top(keys, users, 10, [[0]] * 40))
