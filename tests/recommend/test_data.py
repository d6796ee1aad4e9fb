"""Batching of training sequences and the split files other libraries read."""

from __future__ import annotations

import pytest
import torch

from linkedout.errors import LinkedOutError
from linkedout.recommend.data import (
    LengthGroupedBatches,
    SequenceData,
    TrainSequences,
    pad_batch,
)
from linkedout.recommend.split import SequenceSplit
from linkedout.recommend.split_files import digest, read_split, write_split


def make_split(users: int = 300, seed: int = 0) -> SequenceSplit:
    g = torch.Generator().manual_seed(seed)
    # Mostly short histories with a long tail, like real logs.
    exponential = -torch.log(torch.rand(users, generator=g)) / 0.05
    lengths = (exponential + 5).long().clamp(max=120)
    seqs = [torch.randint(1, 41, (int(n),), generator=g).tolist() for n in lengths]
    return SequenceSplit(
        item_ids=[f"v{i}" for i in range(1, 41)],
        num_with_features=40,
        users=[f"u{u}" for u in range(users)],
        train=[s[:-2] for s in seqs],
        valid=[s[-2] for s in seqs],
        test=[s[-1] for s in seqs],
    )


def test_each_sequence_appears_once_per_epoch_in_batches_of_similar_length():
    rows = TrainSequences(make_split(), max_len=50)
    sampler = LengthGroupedBatches(rows.lengths(), batch_size=16, seed=1, window=8)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(rows)))
    lengths = torch.tensor(rows.lengths())
    grouped = sum(int(lengths[b].max()) * len(b) for b in batches)
    shuffled = sum(int(lengths[b].max()) * len(b) for b in torch.randperm(len(rows)).split(16))
    assert grouped < 0.7 * shuffled  # far less padding than random batches


def test_batches_are_reproducible_by_seed_and_change_between_epochs():
    lengths = TrainSequences(make_split(), max_len=50).lengths()
    a, b = LengthGroupedBatches(lengths, 16, seed=3), LengthGroupedBatches(lengths, 16, seed=3)
    first_a, first_b = list(a), list(b)
    assert first_a == first_b
    assert list(a) != first_a


def test_rows_keep_the_most_recent_steps_and_pad_to_the_batch_longest():
    split = make_split()
    rows = TrainSequences(split, max_len=50)
    inputs, targets = pad_batch([rows[0], rows[1]])
    width = max(len(rows[0][0]), len(rows[1][0]))
    assert inputs.shape == targets.shape == (2, width) and width <= 50
    # Rows and users align: no train sequence here is short enough to be dropped.
    long = next(i for i, s in enumerate(split.train) if len(s) > 51)
    x, y = rows[long]
    assert x == split.train[long][-51:-1] and y == split.train[long][-50:]


def test_validation_on_a_fixed_sample_of_users():
    split = make_split()
    data = SequenceData(split, 50, 16, 64, seed=5, val_users=100)
    users = [int(u) for _, _, batch in data.val_dataloader() for u in batch]
    assert len(users) == len(set(users)) == 100
    again = [int(u) for _, _, batch in data.val_dataloader() for u in batch]
    assert users == again
    assert len(SequenceData(split, 50, 16, 64, seed=5).val_dataloader().dataset) == 300


def test_validation_batches_group_users_by_history_length_and_pad_to_their_longest():
    split = make_split()
    data = SequenceData(split, 50, 16, 64, seed=5)
    seen, widths = [], []
    for history, target, users in data.val_dataloader():
        lengths = [min(50, len(split.history(int(u), "valid"))) for u in users]
        assert history.shape == (len(users), max(lengths))
        for row, u, n in zip(history.tolist(), users.tolist(), lengths, strict=True):
            assert row[-n:] == split.history(u, "valid")[-50:] and not any(row[:-n])
            assert target.tolist()[users.tolist().index(u)] == (split.target(u, "valid"))
        seen += users.tolist()
        widths.append(history.shape[1])
    assert sorted(seen) == list(range(300))
    assert widths == sorted(widths) and widths[0] < widths[-1]


def test_split_files_round_trip_and_digest(tmp_path):
    split = make_split()
    sha = write_split(split, tmp_path / "split")
    back = read_split(tmp_path / "split")
    assert back == split and digest(back) == sha
    rows = (tmp_path / "split" / "interactions.tsv").read_text().splitlines()
    assert rows[0] == "user\titem\tposition\tsplit"
    first = [r.split("\t") for r in rows[1:] if r.startswith("u0\t")]
    assert [r[3] for r in first[-3:]] == ["train", "valid", "test"]
    assert first[-1][1] == f"v{split.test[0]}" and [int(r[2]) for r in first] == list(
        range(len(first))
    )
    other = make_split(seed=1)
    assert digest(other) != sha


def test_ids_that_tsv_cannot_hold_are_refused(tmp_path):
    split = make_split()
    split.users[3] = "a\tb"
    with pytest.raises(LinkedOutError, match="tab or a newline"):
        write_split(split, tmp_path / "split")


def test_both_token_tables_agree_and_prefetch_reads_only_what_it_lacks(tmp_path):
    from linkedout.memory import MemoryBudget
    from linkedout.recommend.config import SplitConfig
    from linkedout.recommend.interactions import read_interactions
    from linkedout.recommend.split import build_split
    from linkedout.recommend.tokens import LanceItemTokens, MemoryItemTokens, open_item_tokens
    from linkedout.storage import FeatureStore
    from tests.recommend.planted import make_planted

    planted = make_planted(tmp_path)
    store = FeatureStore.open(planted.features)
    split = build_split(read_interactions(planted.interactions), store.ids(), SplitConfig())
    layers = list(store.manifest.layers)
    opened = [
        open_item_tokens(store, layers, split.item_ids, split.num_with_features, budget)
        for budget in (MemoryBudget.unlimited(), MemoryBudget(0))
    ]
    memory, lance = opened
    assert isinstance(memory, MemoryItemTokens) and isinstance(lance, LanceItemTokens)
    assert memory.shape == lance.shape and memory.dtype == lance.dtype
    assert memory.prefetch(torch.tensor([1, 2])) is None  # nothing to read ahead
    prefetched = lance.prefetch(torch.tensor([[0, 5, 9], [9, 30, 2]]))  # padding 0 included
    prefetched.rows.result()
    reads = []
    original = store.read_tokens
    store.read_tokens = lambda ids, layers: reads.append(list(ids)) or original(ids, layers)
    wanted = torch.tensor([9, 0, 5, 100, 2, 9])  # 100 was not read ahead
    assert torch.equal(lance.gather(wanted, prefetched), memory.gather(wanted))
    assert reads == [[split.item_ids[99]]]  # only the missing item came from the store
    assert torch.equal(lance.chunk(230, 300), memory.chunk(230, 300))
    assert not memory.gather(torch.tensor([0])).any()  # row 0 is padding
