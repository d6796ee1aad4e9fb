"""Which items a training step scores: every trained item (a full softmax) or the targets and
a shared draw of negatives (a sampled softmax). Owned by the LightningModule as a submodule, so
its tables move with it between devices; the model's `loss` takes what `draw` returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StepItems:
    needed: torch.Tensor
    """Sorted item indices whose vectors the step computes: every input, target, candidate."""
    candidates: torch.Tensor | None
    """Full softmax: the sorted items that compete (None when sampled)."""
    negatives: torch.Tensor | None
    """Sampled softmax: the shared negatives, drawn from `log_q` (None when full)."""


class TrainingItems(nn.Module):
    def __init__(self, num_items: int, sampled: bool, negatives: int):
        super().__init__()
        self.num_items = num_items
        self.sampled = sampled
        self.negatives = negatives
        self.register_buffer("log_q", torch.zeros(num_items), persistent=False)
        """Log-probability of each item as a sampled negative (the logQ correction)."""
        self.register_buffer("candidates", torch.arange(1, num_items), persistent=False)

    def fit(self, train_counts: torch.Tensor, drop_unseen: bool) -> None:
        """Set the proposal from the training popularity and, with `drop_unseen`, take items
        no training sequence holds out of the full softmax."""
        q = train_counts.double() ** 0.75  # word2vec's smoothing: frequent, not only popular
        self.log_q = torch.log(q / q.sum()).float().clamp_min(-1e4)
        if drop_unseen:
            # Items no training sequence holds are left out of the softmax, as items that
            # arrive after training would be: pushed down as ever-negatives, their content
            # would be learned as "never relevant" and cold-start ranking would be lost.
            # (Sampling never draws them: their proposal is zero.)
            self.candidates = torch.nonzero(train_counts[1:] != 0)[:, 0] + 1

    def draw(self, inputs: torch.Tensor, targets: torch.Tensor) -> StepItems:
        """The items one step scores, for its padded `inputs` and `targets` `[B, S]`."""
        if not self.sampled:
            needed = torch.arange(self.num_items, device=inputs.device)
            return StepItems(needed, self.candidates, None)
        negatives = torch.multinomial(self.log_q.exp(), self.negatives, replacement=True)
        needed = torch.unique(torch.cat([inputs.flatten(), targets.flatten(), negatives]))
        return StepItems(needed, None, negatives)
