"""Where an item's tokens sit: the one fact both a backbone (which finds them) and the pooling
(which reads them) need, kept apart so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spans:
    """Positions of one item's tokens in its (unpadded) sequence."""

    prompt: slice
    """The text the backbone reads about the item: instruction, title, question."""
    video: slice | None = None
    """From the first video placeholder token to the last (their states are the merged vision
    features); all of them are video tokens unless `video_frames` says otherwise."""
    video_grid: tuple[int, int, int] | None = None
    """(t, h, w) layout of the video tokens after spatial merging; t * h * w video tokens."""
    video_frames: tuple[slice, ...] = ()
    """Where a model writes text between temporal patches (Qwen3-VL's `<t seconds>` timestamps
    and vision markers): each patch's video tokens, in time order. The tokens between them
    form the timestamp span, which is no video token and is pooled into no slot."""

    def video_positions(self) -> slice | list[int]:
        """Index of the video tokens alone, in (t, h, w) order."""
        if not self.video_frames:
            return self.video
        return [i for part in self.video_frames for i in range(part.start, part.stop)]

    generated: slice | None = None
    """Tokens the backbone generated greedily after the prompt (`--new-tokens`)."""
