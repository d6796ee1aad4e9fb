"""A finished run's files, read once, for everything that ranks with it.

Evaluation (`TrainedRun`, evaluate.py: the catalog training wrote) and serving (`Ranker`,
service/ranker.py: the newest catalog version, swapped whole) both start from this: the
config, the best checkpoint's model, the split, and the indices between ids and rows. Encoding
a user is the model's own step (`LinkedOut.encode`); what differs is only where item vectors
are read from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from linkedout.recommend.model import LinkedOut
from linkedout.recommend.run import RunConfig, RunDir
from linkedout.recommend.split import left_pad


class LoadedRun:
    """config.json, the best checkpoint's model and split/ of one run (no Lightning: see
    `RunDir.model`).

    `model`: the best checkpoint's model already loaded (training has it, and the run has no
    metrics.json yet), instead of reading it. `new_item_lift`: rank with this instead of the
    run's own."""

    def __init__(
        self,
        path: str | Path | RunDir,
        model: LinkedOut | None = None,
        new_item_lift: float | None = None,
    ):
        self.run = path if isinstance(path, RunDir) else RunDir(path)
        if model is None:
            self.run.require_checkpoint()
        self.path = self.run.path
        self.config: RunConfig = self.run.config()
        self.model = self.run.model(self.config.run_id) if model is None else model
        self.model.lift_new_items(new_item_lift)
        self.max_len: int = self.model.config.max_len
        self.split = self.run.split()
        self.item_ids: list[str] = self.split.item_ids
        self.index = {item: i + 1 for i, item in enumerate(self.item_ids)}
        """Item id -> model item index (its ID table row; row 0 is padding)."""
        self.user_index = {u: i for i, u in enumerate(self.split.users)}
        self.experts: list[int | str] = self.config.experts
        """Each expert's name: its depth, or query:depth for runs over several queries."""

    def pad(self, histories: list[list[int]]) -> torch.Tensor:
        """Histories left-padded to the longest of them (at most max_len), not to max_len: pads
        are hidden from real steps, so states are the same, and shorter is faster."""
        length = max(1, min(self.max_len, max(len(h) for h in histories)))
        return torch.tensor([left_pad(h, length) for h in histories])
