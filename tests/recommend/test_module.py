"""The training loss: full softmax over the candidates, sampled softmax over the items it needs,
and items no training sequence holds."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from linkedout.recommend.config import ModelConfig
from linkedout.recommend.module import LinkedOutModule
from linkedout.recommend.tokens import MemoryItemTokens
from linkedout.recommend.training_items import TrainingItems

INPUTS = torch.tensor([[0, 1, 2, 3], [0, 0, 8, 9]])
TARGETS = torch.tensor([[0, 2, 3, 4], [0, 0, 9, 10]])


def _module(
    ids: bool, full_softmax_max_items: int, fusion: str = "moe", token_pool: str = "mean"
) -> LinkedOutModule:
    torch.manual_seed(0)
    module = LinkedOutModule.create(
        ModelConfig(
            d_model=16,
            fusion=fusion,
            token_pool=token_pool,
            ids=ids,
            blocks=1,
            dropout=0.0,
            id_dropout=0.0,
            max_len=8,
            new_item_lift=0.0,  # the loss's references below use `score`, which ranks
        ),
        num_items=60,
        token_shape=(3, 2, 8),
        negatives=32,
        full_softmax_max_items=full_softmax_max_items,
    )
    counts = torch.arange(60.0) % 7  # items 0, 7, 14, ... never occur in training
    module.attach(MemoryItemTokens(torch.randn(60, 3, 2, 8)), counts)
    return module


def _full_loss(module) -> torch.Tensor:
    """The model's full-softmax loss over the module's candidates (what a training step
    computes for a small catalog)."""
    model = module.model
    reduced = module.item_table if model.content else None
    needed = torch.arange(60)
    return model.loss(INPUTS, TARGETS, needed, reduced, candidates=module.softmax_items.candidates)[
        0
    ]


def _reference_states(module):
    """User states and gates at the target positions, by the model's own pieces."""
    model = module.model
    codes = model.item_codes(module.item_table) if model.content else None
    flat = INPUTS.flatten()
    vectors = model.item_inputs(None if codes is None else codes[flat], flat)
    h = model.user_states(vectors.reshape(*INPUTS.shape, -1), INPUTS == 0)[TARGETS != 0]
    ids = model.ids.weight if model.ids is not None else None
    return h, model.user_gate(h), codes, ids


def test_full_softmax_equals_cross_entropy_over_the_candidates_scores():
    cases = ((False, "moe"), (True, "moe"), (True, "none"), (False, "mean"), (True, "mean"))
    for ids, fusion in cases:
        module = _module(ids, full_softmax_max_items=100, fusion=fusion)
        assert module.model.folds() == (fusion == "mean")  # scored as d-wide products
        needed = torch.arange(60)
        reduced = module.item_table if module.model.content else None
        loss, _ = module.model.loss(
            INPUTS, TARGETS, needed, reduced, candidates=module.softmax_items.candidates
        )
        h, gate, codes, id_rows = _reference_states(module)
        logits = module.model.score(h, gate, codes, id_rows)[:, module.softmax_items.candidates]
        target_col = torch.searchsorted(module.softmax_items.candidates, TARGETS[TARGETS != 0])
        torch.testing.assert_close(loss, F.cross_entropy(logits, target_col))


def test_the_new_item_lift_lifts_items_without_an_id_vector_when_ranking_only():
    """Validation's catalog ranks with new items (their ID rows stay zero) lifted by
    `new_item_lift` units of each user's ID-score scale, |h_u| times the mean length of the
    trained ID vectors; the training loss does not see it; ID-only SASRec has none."""
    module = _module(ids=True, full_softmax_max_items=100)
    model = module.model.eval()
    h, gate, codes, id_rows = _reference_states(module)
    plain = model.score(h, gate, codes, id_rows)
    loss = _full_loss(module)
    model.config = replace(model.config, new_item_lift=3.0)
    untrained = torch.arange(60) % 7 == 0
    trained = id_rows[1:][~untrained[1:]]  # row 0 is padding, not an item's vector
    scale = 3.0 * h.norm(dim=1, keepdim=True) * trained.norm(dim=1).mean()
    lift = model.score(h, gate, codes, id_rows) - plain
    torch.testing.assert_close(lift, scale * untrained.float())
    assert lift[:, ~untrained].abs().max() < 1e-5 < lift[:, untrained].min()
    torch.testing.assert_close(_full_loss(module), loss)
    # Twice as long ID vectors (a run trained longer): the lift doubles with its ID scores.
    with torch.no_grad():
        model.ids.weight *= 2
    lifted = model.score(h, gate, codes, 2 * id_rows)
    model.config = replace(model.config, new_item_lift=0.0)
    torch.testing.assert_close(lifted - model.score(h, gate, codes, 2 * id_rows), 2 * lift)
    sasrec = _module(ids=True, full_softmax_max_items=100, fusion="none").model
    sasrec.config = replace(sasrec.config, new_item_lift=3.0)
    assert sasrec.new_items(torch.zeros(5, 16)) is None


def test_folded_keys_give_the_unfolded_gradients():
    """A fixed gate folds the depths' terms into the model space for training's softmax
    (`LinkedOut.folds`): the same loss and the same gradient of every parameter as the
    `d + L·r` wide user vectors and keys it replaces."""
    for ids in (False, True):
        grads = []
        for fold in (True, False):
            module = _module(ids, full_softmax_max_items=100, fusion="mean")
            model = module.model
            if not fold:
                model.folds = lambda: False
            loss = _full_loss(module)
            loss.backward()
            grads.append(
                (loss, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
            )
        (folded, folded_grads), (plain, plain_grads) = grads
        torch.testing.assert_close(folded, plain)
        assert folded_grads.keys() == plain_grads.keys() and "experts.lift" in folded_grads
        for name, grad in plain_grads.items():
            torch.testing.assert_close(folded_grads[name], grad, msg=name)


def test_bfloat16_steps_read_the_item_table_rounded_once_with_the_same_loss():
    """With bfloat16 products a step reads the reduced tokens rounded to bfloat16 once and
    kept, not the float32 table that autocast rounded at every step: the same loss and
    gradients to the bit (the compressor's products round their input anyway)."""
    for pool in ("mean", "attention"):
        module = _module(True, full_softmax_max_items=100, token_pool=pool)
        model, needed = module.model, torch.arange(60)
        kept = module.reduced_tokens(needed, dtype=torch.bfloat16)
        assert kept.dtype == torch.bfloat16 and kept is module.reduced_tokens(
            needed, dtype=torch.bfloat16
        )
        assert module.reduced_tokens(needed) is module.item_table  # float32: the table itself
        results = []
        for reduced in (module.item_table, kept):
            model.zero_grad()
            loss, _ = model.loss(
                INPUTS,
                TARGETS,
                needed,
                reduced,
                candidates=module.softmax_items.candidates,
                product_dtype=torch.bfloat16,
            )
            loss.backward()
            results.append(
                (loss, [p.grad.clone() for p in model.parameters() if p.grad is not None])
            )
        (every_step, grads), (once, kept_grads) = results
        assert torch.equal(every_step, once)
        assert all(torch.equal(a, b) for a, b in zip(grads, kept_grads, strict=True))
    module.item_table = module.item_table * 2  # attached again: rounded again
    assert torch.equal(
        module.reduced_tokens(needed, dtype=torch.bfloat16), module.item_table.bfloat16()
    )


def test_sampled_softmax_equals_the_formula_over_full_logits():
    for ids, fusion in ((False, "moe"), (True, "moe"), (True, "mean")):
        module = _module(ids, full_softmax_max_items=10, fusion=fusion)
        needed = torch.arange(60)
        negatives = torch.tensor([2, 4, 9, 4, 30, 21, 10])  # 4 twice; 10 is also a target
        loss, _ = module.model.loss(
            INPUTS,
            TARGETS,
            needed,
            module.item_table,
            negatives=negatives,
            log_q=module.softmax_items.log_q,
        )
        h, gate, codes, id_rows = _reference_states(module)
        logits = module.model.score(h, gate, codes, id_rows)
        targets = TARGETS[TARGETS != 0]
        log_q = module.softmax_items.log_q
        pos = logits.gather(1, targets[:, None]) - log_q[targets][:, None]
        neg = (logits[:, negatives] - log_q[negatives]).masked_fill(
            negatives[None] == targets[:, None], float("-inf")
        )
        expected = F.cross_entropy(torch.cat([pos, neg], 1), torch.zeros(5, dtype=torch.long))
        torch.testing.assert_close(loss, expected)


def test_items_no_training_sequence_holds_never_compete_with_content_and_do_with_ids_only():
    sampled = _module(ids=True, full_softmax_max_items=10)
    draws = torch.multinomial(sampled.softmax_items.log_q.exp(), 5000, replacement=True)
    assert not (draws % 7 == 0).any()
    full = _module(ids=True, full_softmax_max_items=100)
    assert (
        not (full.softmax_items.candidates % 7 == 0).any()
        and len(full.softmax_items.candidates) == 59 - 8
    )
    assert not full.model.ids.weight[::7].any()  # an ID never trained stays at zero
    loss = _full_loss(full)
    with torch.no_grad():  # raising unseen items' content changes nothing
        full.item_table[:, ::7] += 100.0
    assert torch.equal(_full_loss(full), loss)
    # ID-only is a faithful SASRec: every item competes, as in RecBole.
    ids_only = _module(ids=True, full_softmax_max_items=100, fusion="none")
    assert torch.equal(ids_only.softmax_items.candidates, torch.arange(1, 60))


def test_a_sampled_step_computes_exactly_its_inputs_targets_and_negatives():
    counts = torch.tensor([0, 5, 0, 3, 1, 0, 2])  # items 2 and 5 never occur in training
    items = TrainingItems(7, sampled=True, negatives=50)
    items.fit(counts, drop_unseen=True)
    inputs, targets = torch.tensor([[0, 1, 3]]), torch.tensor([[0, 3, 6]])
    step = items.draw(inputs, targets)
    assert step.candidates is None and len(step.negatives) == 50
    assert not torch.isin(step.negatives, torch.tensor([0, 2, 5])).any()  # never unseen
    expected = torch.unique(torch.cat([inputs.flatten(), targets.flatten(), step.negatives]))
    assert torch.equal(step.needed, expected)
    full = TrainingItems(7, sampled=False, negatives=50)
    full.fit(counts, drop_unseen=True)
    step = full.draw(inputs, targets)
    assert step.negatives is None and torch.equal(step.needed, torch.arange(7))
    assert step.candidates.tolist() == [1, 3, 4, 6]
