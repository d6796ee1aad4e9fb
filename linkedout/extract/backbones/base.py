"""The one small interface every backbone implements.

A backbone turns one catalog item into model inputs and says which sequence positions belong to
which span (video, prompt, generated); the pipeline captures the tapped layers' hidden states
with hooks and pools each span. Backbones never pool, store or decode.

Layer numbering (the manifest's `layers`): 0 is the embedding output that enters the first
decoder block (for Video LLMs: text embeddings with the vision features already merged in);
i >= 1 is the residual stream after decoder block i (1-based), before any final norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Spans:
    """Positions of one item's tokens in its (unpadded) sequence."""

    prompt: slice
    """The text the backbone reads about the item: instruction, title, question."""
    video: slice | None = None
    """The video placeholder tokens (their states are the merged vision features)."""
    video_grid: tuple[int, int, int] | None = None
    """(t, h, w) layout of the video tokens after spatial merging; t * h * w == video length."""
    generated: slice | None = None
    """Tokens the backbone generated greedily after the prompt (`--new-tokens`)."""


@dataclass(frozen=True)
class ItemInput:
    """What the pipeline gives a backbone for one item."""

    text: str
    """The prompt with `{title}` already filled (video backbones) or the item text (text ones)."""
    frames: np.ndarray | None = None
    """uint8 RGB frames `[N, H, W, 3]` for video backbones."""
    frame_seconds: tuple[float, ...] = ()


@dataclass
class Prepared:
    """One item's model inputs (batch dimension 1) and where its spans sit."""

    inputs: dict[str, torch.Tensor]
    spans: Spans
    token_counts: dict[str, int] = field(default_factory=dict)


class Packer(Protocol):
    """The CPU half of a backbone: one item -> model inputs. Loads no weights, so decoding
    workers can pack while the model runs elsewhere."""

    def prepare(self, item: ItemInput) -> Prepared: ...


class Backbone(Protocol):
    kind: Literal["video-llm", "text"]
    model_id: str
    revision: str | None
    num_layers: int
    """Decoder blocks; valid layer indices are 0..num_layers."""
    hidden_size: int
    device: torch.device
    dtype: torch.dtype

    def decoder_layers(self) -> nn.ModuleList:
        """The decoder blocks, in order (hooks go on these)."""
        ...

    packer: Packer

    def prepare(self, item: ItemInput) -> Prepared:
        """`self.packer.prepare(item)`."""
        ...

    def collate(self, batch: list[Prepared]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Pad a batch into one forward's inputs; returns them and each item's offset of its
        first token in the padded sequence (positions in `Spans` shift by it)."""
        ...

    def forward(self, inputs: dict[str, torch.Tensor]) -> None:
        """Run the model up to the last decoder block (no LM head): hooks collect the states."""
        ...

    def generate(self, prepared: Prepared, new_tokens: int) -> Prepared:
        """Greedily generate `new_tokens` and return inputs covering prompt + generated tokens,
        with `spans.generated` set."""
        ...
