"""The training loss: sampled softmax over only the candidates it needs, and unseen items."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from linkedout.recommend.model import ModelConfig
from linkedout.recommend.module import LinkedOutModule


def _module(ids: bool, full_softmax_max_items: int) -> LinkedOutModule:
    torch.manual_seed(0)
    module = LinkedOutModule.create(
        ModelConfig(d_model=16, ids=ids, blocks=1, dropout=0.0, max_len=8),
        num_items=60,
        shape=(3, 2, 8),
        negatives=32,
        full_softmax_max_items=full_softmax_max_items,
    )
    counts = torch.arange(60.0) % 7  # items 0, 7, 14, ... never occur in training
    module.attach(torch.randn(60, 3, 2, 8), counts)
    return module


def test_sampled_softmax_equals_the_formula_over_full_logits():
    for ids in (False, True):
        module = _module(ids, full_softmax_max_items=10)
        h, gate = torch.randn(5, 16), torch.softmax(torch.randn(5, 3), -1)
        needed = torch.arange(1, 60)
        experts = module.model.item_experts(module.item_tokens[needed])
        id_rows = module.model.ids.weight[needed] if ids else None
        target_col = torch.tensor([0, 3, 5, 8, 20])
        negatives = torch.tensor([2, 4, 9, 4, 30, 21])
        loss = module._sampled_softmax(h, gate, experts, id_rows, target_col, needed, negatives)
        logits = module.model.score(h, gate, experts, id_rows)
        neg_col = torch.searchsorted(needed, negatives)
        log_q = module.log_q[needed]
        pos = logits.gather(1, target_col[:, None]) - log_q[target_col][:, None]
        neg = (logits[:, neg_col] - log_q[neg_col]).masked_fill(
            neg_col[None] == target_col[:, None], float("-inf")
        )
        expected = F.cross_entropy(torch.cat([pos, neg], 1), torch.zeros(5, dtype=torch.long))
        torch.testing.assert_close(loss, expected)


def test_items_no_training_sequence_holds_are_never_negatives():
    sampled = _module(ids=True, full_softmax_max_items=10)
    draws = torch.multinomial(sampled.log_q.exp(), 5000, replacement=True)
    assert not (draws % 7 == 0).any()
    full = _module(ids=True, full_softmax_max_items=100)
    inputs = torch.tensor([[0, 1, 2, 3], [0, 0, 8, 9]])
    targets = torch.tensor([[0, 2, 3, 4], [0, 0, 9, 10]])
    full.log = lambda *a, **k: None
    loss = full.training_step((inputs, targets), 0)
    with torch.no_grad():  # raising unseen items' scores changes nothing
        full.model.ids.weight[::7] += 100.0
    assert torch.equal(full.training_step((inputs, targets), 0), loss)
