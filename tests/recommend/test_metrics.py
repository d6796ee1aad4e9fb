import math

import pytest
import torch

from linkedout.recommend.metrics import (
    KS,
    RankingMetrics,
    fixed_score_ranks,
    history_mask,
    popularity_scores,
    rank_of_target,
    target_ranks,
)


def scores_with_target_rank(rank: int, num_items: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """One row whose target (item 0) has exactly `rank - 1` items scoring above it."""
    scores = torch.zeros(1, num_items)
    scores[0, 1:rank] = 1.0
    scores[0, 0] = 0.5
    return scores, torch.tensor([0])


def test_rank_counts_items_scoring_strictly_higher():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.8, 0.2, 0.3, 0.1]])
    # Row 0, target 2 (0.5): 0.9 and 0.7 are higher -> rank 3. Row 1, target 0 (0.8): rank 1.
    assert rank_of_target(scores, torch.tensor([2, 0]), None).tolist() == [3, 1]
    assert rank_of_target(scores, torch.tensor([2, 0]), None).dtype == torch.long


def test_ties_count_against_the_target():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.9]])
    # Items 0 and 2 tie with target 1 at 0.5 and 0.9 is higher: 3 items at least as high -> 4.
    assert rank_of_target(scores, torch.tensor([1]), None).tolist() == [4]
    # A model that scores everything alike gets no credit: its target ranks last.
    flat = torch.zeros(1, 100)
    assert rank_of_target(flat, torch.tensor([7]), None).tolist() == [100]


def test_mask_removes_distractors_and_never_the_target():
    scores = torch.tensor([[0.9, 0.8, 0.5, 0.1]])
    target = torch.tensor([2])
    assert rank_of_target(scores, target, None).tolist() == [3]
    # Masking item 0 (0.9) leaves only 0.8 above the target -> rank 2.
    only_first = torch.tensor([[True, False, False, False]])
    assert rank_of_target(scores, target, only_first).tolist() == [2]
    # The target is in `exclude` too: it still counts, at rank 1 once 0.9 and 0.8 are gone.
    with_target = torch.tensor([[True, True, True, False]])
    assert rank_of_target(scores, target, with_target).tolist() == [1]
    # Masking items below the target changes nothing.
    below = torch.tensor([[False, False, False, True]])
    assert rank_of_target(scores, target, below).tolist() == [3]


def test_nan_scores_rank_last():
    scores = torch.tensor([[float("nan"), 0.2, 0.1], [0.3, float("nan"), 0.1]])
    # Row 0: the target is NaN, so both real scores beat it -> rank 3.
    # Row 1: the NaN distractor cannot beat target 0 (0.3) -> rank 1.
    assert rank_of_target(scores, torch.tensor([0, 0]), None).tolist() == [3, 1]


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError):
        rank_of_target(torch.zeros(2, 5), torch.tensor([0]), None)
    with pytest.raises(ValueError):
        rank_of_target(torch.zeros(2, 5), torch.tensor([0, 1]), torch.zeros(2, 4, dtype=torch.bool))


def test_history_mask_marks_each_users_items():
    mask = history_mask([[0, 3], [], [1, 1, 4]], num_items=5, device="cpu")
    assert mask.dtype == torch.bool
    assert mask.tolist() == [
        [True, False, False, True, False],
        [False, False, False, False, False],
        [False, True, False, False, True],
    ]


def test_history_mask_then_rank_end_to_end():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    # Earlier items 0 and 1 are masked, so only item 2 (0.7) is above target 3 -> rank 2.
    exclude = history_mask([[0, 1]], num_items=5, device="cpu")
    assert rank_of_target(scores, torch.tensor([3]), exclude).tolist() == [2]


@pytest.mark.parametrize(
    ("rank", "expected"),
    [
        # rank 1: hit everywhere, NDCG = 1/log2(2) = 1, MRR = 1.
        (1, {"HR@10": 1.0, "NDCG@10": 1.0, "HR@20": 1.0, "NDCG@20": 1.0, "MRR": 1.0}),
        # rank 3: NDCG = 1/log2(4) = 0.5, MRR = 1/3.
        (3, {"HR@10": 1.0, "NDCG@10": 0.5, "HR@20": 1.0, "NDCG@20": 0.5, "MRR": 1 / 3}),
        # rank 10: last hit of the top 10, NDCG = 1/log2(11).
        (
            10,
            {
                "HR@10": 1.0,
                "NDCG@10": 1 / math.log2(11),
                "HR@20": 1.0,
                "NDCG@20": 1 / math.log2(11),
                "MRR": 0.1,
            },
        ),
        # rank 11: outside the top 10 (HR@10 = NDCG@10 = 0), inside the top 20: 1/log2(12).
        (
            11,
            {
                "HR@10": 0.0,
                "NDCG@10": 0.0,
                "HR@20": 1.0,
                "NDCG@20": 1 / math.log2(12),
                "MRR": 1 / 11,
            },
        ),
        # rank 21: outside both cut-offs; only MRR = 1/21 counts it.
        (21, {"HR@10": 0.0, "NDCG@10": 0.0, "HR@20": 0.0, "NDCG@20": 0.0, "MRR": 1 / 21}),
    ],
)
def test_single_user_metrics_by_hand(rank, expected):
    scores, target = scores_with_target_rank(rank)
    ranks = rank_of_target(scores, target, None)
    assert ranks.tolist() == [rank]
    metrics = RankingMetrics()
    metrics.update(ranks)
    result = metrics.compute()
    assert result.pop("users") == 1
    assert result == pytest.approx(expected)


def test_means_over_users_by_hand():
    metrics = RankingMetrics()
    metrics.update(torch.tensor([1, 3, 11, 100]))
    result = metrics.compute()
    # HR@10: ranks 1 and 3 hit -> 2/4. HR@20: 1, 3, 11 hit -> 3/4.
    # NDCG@10 = (1 + 0.5 + 0 + 0) / 4 = 0.375. NDCG@20 = (1 + 0.5 + 1/log2(12) + 0) / 4.
    # MRR = (1 + 1/3 + 1/11 + 1/100) / 4.
    assert result == pytest.approx(
        {
            "HR@10": 0.5,
            "NDCG@10": 0.375,
            "HR@20": 0.75,
            "NDCG@20": (1.5 + 1 / math.log2(12)) / 4,
            "MRR": (1 + 1 / 3 + 1 / 11 + 1 / 100) / 4,
            "users": 4,
        }
    )
    assert set(result) == {f"{m}@{k}" for k in KS for m in ("HR", "NDCG")} | {"MRR", "users"}


def test_batches_accumulate_to_one_big_batch():
    ranks = torch.randint(1, 50, (1000,), generator=torch.Generator().manual_seed(0))
    whole = RankingMetrics()
    whole.update(ranks)
    batched = RankingMetrics()
    for chunk in ranks.split(37):
        batched.update(chunk)
    assert batched.compute() == pytest.approx(whole.compute())


def test_merge_equals_a_single_accumulator():
    ranks = torch.randint(1, 50, (900,), generator=torch.Generator().manual_seed(1))
    single = RankingMetrics()
    single.update(ranks)
    shards = [RankingMetrics() for _ in range(3)]
    for shard, part in zip(shards, ranks.chunk(3)):
        shard.update(part)
    merged = RankingMetrics()
    for shard in shards:
        merged.merge(shard)
    assert merged.compute() == pytest.approx(single.compute())
    assert merged.count == 900


def test_merge_refuses_different_cutoffs():
    with pytest.raises(ValueError, match="merge"):
        RankingMetrics().merge(RankingMetrics(ks=(5,)))


def test_invalid_ranks_and_empty_compute_are_rejected():
    with pytest.raises(ValueError, match="1-based"):
        RankingMetrics().update(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="no ranks"):
        RankingMetrics().compute()


def test_popularity_scores_count_training_occurrences():
    scores = popularity_scores([[0, 2, 2], [2, 1], []], num_items=4)
    assert scores.tolist() == [1.0, 1.0, 3.0, 0.0]
    with pytest.raises(ValueError):
        popularity_scores([[4]], num_items=4)


def test_popularity_ranking_with_masked_history():
    pop = popularity_scores([[0, 0, 0, 1, 1, 2]], num_items=4)  # counts 3, 2, 1, 0
    scores = pop.expand(2, 4)
    targets = torch.tensor([2, 2])
    # User 0 unmasked: items 0 and 1 beat item 2 -> rank 3. User 1 has seen item 0 -> rank 2.
    exclude = history_mask([[], [0]], num_items=4, device="cpu")
    assert rank_of_target(scores, targets, exclude).tolist() == [3, 2]


def test_masked_and_unmasked_ranks_from_one_pass_equal_two_calls():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (50, 40), generator=g).float()  # many ties
    scores[3, 7] = float("nan")
    scores[4, :] = float("nan")
    targets = torch.randint(0, 40, (50,), generator=g)
    exclude = torch.rand(50, 40, generator=g) < 0.3
    masked, unmasked = target_ranks(scores, targets, exclude)
    assert torch.equal(masked, rank_of_target(scores, targets, exclude))
    assert torch.equal(unmasked, rank_of_target(scores, targets, None))
    assert (masked <= unmasked).all() and (masked >= 1).all()
    for b in range(50):  # by hand: other, unmasked items scoring at least the target's
        t = targets[b]
        nan_target = bool(torch.isnan(scores[b, t]))
        others = [
            j
            for j in range(40)
            if j != t and not exclude[b, j] and (nan_target or scores[b, j] >= scores[b, t])
        ]
        assert masked[b] == 1 + len(others)


def test_fixed_score_ranks_equal_the_full_comparison():
    """Popularity's shortcut must rank exactly as comparing every user against the catalog."""
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 5, (30,), generator=g).float()  # many ties
    scores[0] = float("-inf")  # the padding item
    targets = torch.randint(1, 30, (40,), generator=g)
    histories = [torch.randint(1, 30, (n,), generator=g).tolist() for n in range(40)]
    histories[5] = [int(targets[5])] * 3  # the target itself, watched before, several times
    masked, unmasked = fixed_score_ranks(scores, targets, histories)
    full = target_ranks(scores.expand(40, -1), targets, history_mask(histories, 30, "cpu"))
    assert torch.equal(masked, full[0]) and torch.equal(unmasked, full[1])
    with pytest.raises(ValueError, match="NaN"):
        fixed_score_ranks(torch.tensor([0.0, float("nan")]), torch.tensor([1]), [[]])
