"""Pool one item's hidden states at one layer to a fixed number of token slots.

The recipe is fixed by (backbone kind, T, generated tokens) and written into the manifest by
`PoolingRecipe.describe()`, so a reader knows what every slot of `[T, D]` holds:

- video-llm: the video tokens (without the text timestamps some models write between temporal
  patches), laid out on their (time, height, width) grid, are averaged into
  `(T_v / 4) x 2 x 2` bins (slots in time-major, then row-major order: time bin, top/bottom,
  left/right); the prompt span gives its mean, its last token (the position where a decoder
  summarises what it read) and the means of equal chunks of it; generated tokens (when asked
  for) give their mean and their last token.
- text: the whole text gives its mean, its first token ([CLS] for encoders), its last token and
  the means of `T - 3` equal chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from linkedout.errors import SettingError
from linkedout.extract.backbones.spans import Spans

_GENERATED_SLOTS = 2  # mean, last


@dataclass(frozen=True)
class PoolingRecipe:
    kind: str
    tokens_per_layer: int
    video_bins: tuple[int, int, int] | None
    prompt_slots: int
    generated_slots: int
    timestamps: bool = False
    """The model writes text timestamps between temporal patches (Qwen3-VL): a span of its
    own, kept out of the video bins and out of every slot."""
    video_sequence: bool = False
    """The video tokens' (t, h, w) layout is not known (the generic path): they are averaged
    in sequence order, which is time order, into time-ordered chunks."""

    @classmethod
    def make(
        cls,
        kind: str,
        tokens_per_layer: int,
        new_tokens: int = 0,
        timestamps: bool = False,
        video_sequence: bool = False,
    ) -> PoolingRecipe:
        t = tokens_per_layer
        if kind == "text":
            if t < 3:
                raise SettingError("tokens_per_layer", t, "a text backbone needs at least 3")
            return cls(kind, t, None, t, 0)
        generated = _GENERATED_SLOTS if new_tokens > 0 else 0
        video = 4 * ((t - 2 - generated) // 4)
        if video < 4:
            raise SettingError(
                "tokens_per_layer",
                t,
                f"too few: a video backbone needs at least {6 + generated} (4 video slots, "
                "2 prompt slots" + (", 2 generated-token slots)" if generated else ")"),
            )
        bins = (video, 1, 1) if video_sequence else (video // 4, 2, 2)
        return cls(kind, t, bins, t - video - generated, generated, timestamps, video_sequence)

    def describe(self) -> str:
        if self.video_bins is None:
            return (
                f"T={self.tokens_per_layer}: [0] text mean; [1] first token; [2] last token; "
                f"[3:{self.tokens_per_layer}] means of {self.tokens_per_layer - 3} equal chunks"
            )
        bt, bh, bw = self.video_bins
        v = bt * bh * bw
        p_end = v + self.prompt_slots
        video = (
            f"[0:{v}] video tokens averaged in sequence (time) order into {v} equal chunks "
            "(text the processor writes between frames in no slot)"
            if self.video_sequence
            else f"[0:{v}] video tokens averaged over their (t, h, w) grid into {bt}x{bh}x{bw} "
            "bins, time-major"
        )
        parts = [
            f"T={self.tokens_per_layer}: {video}",
            f"[{v}] prompt mean",
            f"[{v + 1}] prompt last token",
        ]
        if self.prompt_slots > 2:
            parts.append(f"[{v + 2}:{p_end}] means of {self.prompt_slots - 2} equal prompt chunks")
        if self.generated_slots:
            parts.append(f"[{p_end}] generated mean; [{p_end + 1}] generated last token")
        if self.timestamps:
            parts.append("timestamp tokens between temporal patches in no slot")
        return "; ".join(parts)

    def pool(self, hidden: torch.Tensor, spans: Spans) -> torch.Tensor:
        """`hidden [S, D]` of one item (its own positions, unpadded) -> `[T, D]` in float32."""
        hidden = hidden.float()
        if self.video_bins is None:
            text = hidden[spans.prompt]
            slots = [
                text.mean(0, keepdim=True),
                text[:1],
                text[-1:],
                _chunk_means(text, self.tokens_per_layer - 3),
            ]
            return torch.cat(slots)
        return torch.cat([self.video_slots(hidden, spans), self.text_slots(hidden, spans)])

    @property
    def video_slot_count(self) -> int:
        """V: the leading slots that hold the video tokens (0 for text backbones)."""
        return 0 if self.video_bins is None else math.prod(self.video_bins)

    def video_slots(self, hidden: torch.Tensor, spans: Spans) -> torch.Tensor:
        """The video backbone's first V slots `[V, D]`: the video tokens' bins. Pooled on their
        own, they can come from a pass over the video alone, shared by every query."""
        if spans.video is None or spans.video_grid is None or self.video_bins is None:
            raise ValueError("a video backbone's spans need the video positions and grid")
        t, h, w = spans.video_grid
        video = hidden[spans.video_positions()].float().T.reshape(1, -1, t, h, w)  # [1, D, t, h, w]
        return F.adaptive_avg_pool3d(video, self.video_bins).flatten(2)[0].T  # [bins, D]

    def text_slots(self, hidden: torch.Tensor, spans: Spans) -> torch.Tensor:
        """The video backbone's last T - V slots: prompt (and generated) tokens, one query's."""
        prompt = hidden[spans.prompt].float()
        slots = [prompt.mean(0, keepdim=True), prompt[-1:]]
        if self.prompt_slots > 2:
            slots.append(_chunk_means(prompt, self.prompt_slots - 2))
        if self.generated_slots:
            if spans.generated is None:
                raise ValueError("recipe has generated-token slots but the item has none")
            new = hidden[spans.generated].float()
            slots += [new.mean(0, keepdim=True), new[-1:]]
        return torch.cat(slots)


def _chunk_means(tokens: torch.Tensor, chunks: int) -> torch.Tensor:
    """`[S, D]` -> `[chunks, D]`: means of equal consecutive chunks (repeats when S < chunks)."""
    if chunks == 0:
        return tokens[:0]
    return F.adaptive_avg_pool1d(tokens.T.unsqueeze(0), chunks)[0].T
