"""Chunked full-catalog ranking: the same ranks and top-k as one product over the whole catalog,
and bitwise the same from memory and from a catalog spilled to Lance."""

from __future__ import annotations

import pytest
import torch

from linkedout.memory import MemoryBudget
from linkedout.recommend.catalog import (
    LanceCatalog,
    MemoryCatalog,
    build_catalog,
    expert_chunks,
    open_catalog,
)
from linkedout.recommend.catalog_dataset import CHUNK_ITEMS, CatalogDataset
from linkedout.recommend.metrics import history_mask, target_ranks
from linkedout.recommend.model import LinkedOut, ModelConfig
from linkedout.recommend.ranking import rank_targets

ITEMS = 2 * CHUNK_ITEMS + 123  # three chunks, the last one short
USERS = 40


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = LinkedOut(ModelConfig(d_model=16, fusion="moe", ids=True), ITEMS, (3, 2, 8)).eval()
    tokens = torch.randn(ITEMS, 3, 2, 8)
    model.whitening.fit(tokens)
    ids = model.ids.weight.detach()
    chunks = lambda: expert_chunks(model, tokens)  # noqa: E731
    memory = build_catalog(model, chunks, ids, memory_budget=MemoryBudget(2**40), spill=None)
    spill = tmp_path_factory.mktemp("catalog") / "spill.lance"
    on_disk = build_catalog(model, chunks, ids, memory_budget=MemoryBudget(0), spill=spill)
    h = torch.randn(USERS, 16)
    gate = torch.softmax(torch.randn(USERS, 3), -1)
    generator = torch.Generator().manual_seed(1)
    histories = [
        torch.randint(1, ITEMS, (int(n),), generator=generator).tolist()
        for n in torch.randint(0, 30, (USERS,), generator=generator)
    ]
    targets = torch.randint(1, ITEMS, (USERS,), generator=generator)
    targets[0] = histories[1][0] if histories[1] else 5  # a target among its own user's items
    histories[0].append(int(targets[0]))
    return model, memory, on_disk, h, gate, histories, targets


@torch.inference_mode()
def _full_scores(model, catalog, h, gate):
    scores = model.score(h, gate, catalog.experts, catalog.ids)
    scores[:, 0] = float("-inf")
    return scores


def test_catalogs_in_memory_and_on_disk_hold_the_same_embeddings(setup):
    _, memory, on_disk, *_ = setup
    assert isinstance(memory, MemoryCatalog) and isinstance(on_disk, LanceCatalog)
    items = torch.tensor([[5, 0, ITEMS - 1], [5, 5, CHUNK_ITEMS]])
    assert torch.equal(memory.experts_of(items), on_disk.experts_of(items))
    widths = [chunk.width for chunk in on_disk.chunks()]
    assert widths == [CHUNK_ITEMS, CHUNK_ITEMS, 123]
    for a, b in zip(memory.chunks(), on_disk.chunks(), strict=True):
        assert a.start == b.start and torch.equal(a.experts, b.experts)


def test_chunked_ranks_equal_one_product_over_the_catalog(setup):
    model, memory, on_disk, h, gate, histories, targets = setup
    masked, unmasked = rank_targets(model, memory, h, gate, targets, histories, batch_size=16)
    scores = _full_scores(model, memory, h, gate)
    ref_masked, ref_unmasked = target_ranks(scores, targets, history_mask(histories, ITEMS, "cpu"))
    # Only an item tied with the target to within float rounding may land on either side.
    gap = (scores - scores.gather(1, targets[:, None])).abs()
    gap.scatter_(1, targets[:, None], float("inf"))
    clear = gap.min(1).values > 1e-5
    assert clear.sum() >= USERS * 3 // 4
    assert torch.equal(masked[clear], ref_masked[clear])
    assert torch.equal(unmasked[clear], ref_unmasked[clear])
    assert (masked <= unmasked).all() and masked[0] < unmasked[0] + 1
    from_disk = rank_targets(model, on_disk, h, gate, targets, histories, batch_size=16)
    assert torch.equal(from_disk[0], masked) and torch.equal(from_disk[1], unmasked)


def test_a_run_catalog_is_loaded_when_it_fits_and_read_on_demand_when_not(setup, tmp_path):
    model, memory, *_ = setup
    names = [f"v{i}" for i in range(1, ITEMS)]
    chunks = (memory.experts[s : s + CHUNK_ITEMS] for s in range(0, ITEMS, CHUNK_ITEMS))
    CatalogDataset.create(tmp_path / "catalog.lance", chunks, names, (ITEMS, 3, model.expert_dim))
    fits = open_catalog(tmp_path / "catalog.lance", memory.ids, memory_budget=MemoryBudget(2**30))
    too_big = open_catalog(
        tmp_path / "catalog.lance", memory.ids, memory_budget=MemoryBudget(2**20)
    )
    assert isinstance(fits, MemoryCatalog) and isinstance(too_big, LanceCatalog)
    assert torch.equal(fits.experts, memory.experts)
    assert too_big.dataset.live()[0][:2] == ["v1", "v2"]
