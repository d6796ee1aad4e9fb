"""A split (split.py) -> padded sequences for training and ranking, as Lightning data."""

from __future__ import annotations

from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from linkedout.errors import LinkedOutError
from linkedout.recommend.split import SequenceSplit, left_pad
from linkedout.recommend.tokens import ItemTokens, Prefetched


class TrainSequences(Dataset):
    """SASRec-style: at every position, predict the next item of the training sequence.
    Rows are unpadded (at most `max_len` steps); `pad_batch` pads each batch to its longest."""

    def __init__(self, split: SequenceSplit, max_len: int):
        self.rows = [seq[-(max_len + 1) :] for seq in split.train if len(seq) >= 2]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        seq = self.rows[i]
        return seq[:-1], seq[1:]

    def lengths(self) -> list[int]:
        return [len(seq) - 1 for seq in self.rows]

    def targets_per_batch(self, batch_size: int) -> float:
        """Targets (predicted positions) in an average batch of `batch_size` rows."""
        return sum(self.lengths()) / max(1, -(-len(self.rows) // batch_size))


class Batch(NamedTuple):
    """One training batch: left-padded inputs and targets `[B, S]`, and the batch's item tokens
    being read ahead when they come from the store."""

    inputs: torch.Tensor
    targets: torch.Tensor
    tokens: Prefetched | None = None


def pad_batch(rows: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad inputs and targets to the batch's longest row."""
    width = max(len(inputs) for inputs, _ in rows)
    inputs = torch.tensor([left_pad(inputs, width) for inputs, _ in rows])
    targets = torch.tensor([left_pad(targets, width) for _, targets in rows])
    return inputs, targets


class LengthGroupedBatches(Sampler[list[int]]):
    """Random batches of similar length. Interaction histories are mostly short with a long
    tail (MicroLens: median 6, up to 218), so a random batch pads nearly every row to the
    longest; sorting each window of `window` random batches by length before cutting it keeps
    the Transformer's work close to the real number of steps (about 7x less on MicroLens).

    Under data parallelism every rank draws the same batches (same seed) and takes its slice
    of each: the processes together take the steps one process would, on the same rows."""

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        seed: int,
        window: int = 50,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.lengths = torch.tensor(lengths)
        self.batch_size = batch_size
        self.window = window
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (rest >= self.world_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator)
        batches = []
        for chunk in order.split(self.batch_size * self.window):
            chunk = chunk[self.lengths[chunk].argsort(descending=True, stable=True)]
            batches.extend(chunk.split(self.batch_size))
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            # A last batch too small to give every rank a row is left out on all of them:
            # ranks must take the same number of steps, or their gradient exchange would hang.
            if len(batches[b]) >= self.world_size:
                yield batches[b].tensor_split(self.world_size)[self.rank].tolist()


class RankingUsers(Dataset):
    """Users to rank for one split: their history (its last `max_len` items), target and
    index; `pad_users` pads a batch of them."""

    def __init__(self, split: SequenceSplit, name: str, max_len: int):
        self.split = split
        self.name = name
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.split.users)

    def __getitem__(self, u: int) -> tuple[list[int], int, int]:
        return self.split.history(u, self.name)[-self.max_len :], self.split.target(u, self.name), u

    def by_length(self, users: list[int]) -> list[int]:
        """`users` from the shortest history to the longest: batches of them pad little (most
        histories are short: on MicroLens, ranking pads to the batch's longest instead of to
        `max_len` took validation's user states from 7.9 s to 1 s)."""
        return sorted(users, key=lambda u: min(self.max_len, len(self.split.history(u, self.name))))


def pad_users(
    rows: list[tuple[list[int], int, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Histories left-padded to the batch's longest (pads are hidden from real steps, so a
    user's state does not depend on it), targets and user indices."""
    width = max(1, max(len(history) for history, _, _ in rows))
    return (
        torch.tensor([left_pad(history, width) for history, _, _ in rows]),
        torch.tensor([target for _, target, _ in rows]),
        torch.tensor([u for _, _, u in rows]),
    )


class SequenceData(L.LightningDataModule):
    """In-memory sequences (no Lance access in workers, so no fork-safety concern)."""

    def __init__(
        self,
        split: SequenceSplit,
        max_len: int,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        val_users: int | None = None,
        tokens: ItemTokens | None = None,
    ):
        """`tokens`: the table the training steps gather item tokens from (None when they
        read none: IDs only, or tokens reduced in memory beforehand)."""
        super().__init__()
        self.tokens = tokens
        self.split = split
        self.max_len = max_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.val_users = val_users

    def _ranks(self) -> tuple[int, int]:
        """(this process's rank, number of processes) of the running Trainer."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rows = TrainSequences(self.split, self.max_len)
        rank, world = self._ranks()
        if self.batch_size < world:
            raise LinkedOutError(
                f"--batch-size {self.batch_size} is split across {world} processes: "
                f"use at least {world}"
            )
        batches = LengthGroupedBatches(
            rows.lengths(), self.batch_size, self.seed, rank=rank, world_size=world
        )
        return DataLoader(rows, batch_sampler=batches, collate_fn=self._collate)

    def _collate(self, rows: list[tuple[list[int], list[int]]]) -> Batch:
        inputs, targets = pad_batch(rows)
        if self.tokens is None:
            return Batch(inputs, targets)
        # Lightning collates the next batch before it runs this one's step: the next batch's
        # items are read from the store while this step computes.
        return Batch(inputs, targets, self.tokens.prefetch(torch.cat([inputs, targets], 1)))

    def val_dataloader(self) -> DataLoader:
        users = RankingUsers(self.split, "valid", self.max_len)
        chosen = range(len(users))
        if self.val_users is not None and self.val_users < len(users):
            # The same users every epoch, so epochs are compared on equal terms.
            sample = torch.randperm(len(users), generator=torch.Generator().manual_seed(self.seed))
            chosen = sample[: self.val_users].sort().values.tolist()
        # Each rank ranks every world-th user, none twice (a DistributedSampler would pad with
        # repeats); the module sums the metrics over ranks.
        rank, world = self._ranks()
        mine = users.by_length(list(chosen[rank::world]))
        return DataLoader(
            Subset(users, mine), batch_size=self.eval_batch_size, collate_fn=pad_users
        )
