"""Frames -> Qwen vision patches in numpy + PIL, with no torchvision.

transformers' Qwen video processors resize with torchvision, which has no usable CPU build here,
so `pack_video` redoes their preprocessing step for step: `Qwen2VLVideoProcessor` (Qwen2-VL,
Qwen2.5-VL; it matches the torchvision-free `Qwen2VLImageProcessorPil` bit for bit) and
`Qwen3VLVideoProcessor` (Qwen3-VL, Qwen3.5), whose pixel budget covers the whole clip rather
than each frame. torchvision resizes with its own antialiased bicubic, a grey level or so away
from PIL's; the reference tests measure that gap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from linkedout.errors import LinkedOutError, SettingError

_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_IMAGENET_STANDARD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PackSettings:
    """How frames become vision patches; defaults are transformers' `Qwen2VLVideoProcessor`
    (`for_family` gives each family's)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    budget: Literal["frame", "clip"] = "frame"
    """What min/max_pixels bound: each frame (Qwen2-VL, Qwen2.5-VL) or the whole clip, frames
    times frame area (Qwen3-VL's video processor)."""
    frame_max_pixels: int | None = None
    """`--max-pixels`: at most this many pixels per frame, whatever the budget's scope (on a
    clip budget it replaces max_pixels by this times the frame count)."""
    cap_pixels_per_frame: bool = False
    """The processors' `cap_pixels_per_frame`: qwen-vl-utils' bound on a clip's total pixels,
    set by `max_video_tokens` (each family computes it its own way)."""
    max_video_tokens: int = 128000
    image_mean: tuple[float, ...] = _OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = _OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255

    @classmethod
    def for_family(cls, family: str) -> PackSettings:
        """The video processor's class defaults (what a config file leaves out)."""
        if family.startswith("qwen3"):  # Qwen3VLVideoProcessor: qwen3_vl(_moe), qwen3_5(_moe)
            return cls(
                patch_size=16,
                min_pixels=128 * 32 * 32,
                max_pixels=768 * 32 * 32,
                budget="clip",
                max_video_tokens=768,
                image_mean=_IMAGENET_STANDARD,
                image_std=_IMAGENET_STANDARD,
            )
        return cls()

    @classmethod
    def from_processor_config(
        cls,
        config: dict,
        family: str = "qwen2_vl",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        source: str = "the video processor config",
    ) -> PackSettings:
        """Settings from a checkpoint's video processor section, with `--max-pixels` (per
        frame) and `min_pixels` overrides.

        Like the processors' `__init__`, flat `min_pixels`/`max_pixels` keys (Hub snapshots)
        win over the `size` dict (what recent transformers saves)."""
        size = config.get("size") or {}
        base = cls.for_family(family)
        per_frame = base.budget == "frame"
        fields = {}
        for name in ("patch_size", "temporal_patch_size", "merge_size", "max_video_tokens"):
            value = config.get(name, getattr(base, name))
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LinkedOutError(f"{source}: {name} is {value!r}, not a positive integer")
            fields[name] = value
        settings = cls(
            **fields,
            min_pixels=_first_given(
                min_pixels, config.get("min_pixels"), size.get("shortest_edge"), base.min_pixels
            ),
            max_pixels=_first_given(
                max_pixels if per_frame else None,
                config.get("max_pixels"),
                size.get("longest_edge"),
                base.max_pixels,
            ),
            budget=base.budget,
            frame_max_pixels=None if per_frame else max_pixels,
            cap_pixels_per_frame=bool(config.get("cap_pixels_per_frame") or False),
            image_mean=tuple(config.get("image_mean", base.image_mean)),
            image_std=tuple(config.get("image_std", base.image_std)),
            rescale_factor=config.get("rescale_factor", base.rescale_factor),
        )
        if per_frame and settings.min_pixels > settings.max_pixels:
            raise SettingError(
                "max_pixels",
                settings.max_pixels,
                f"below the min pixels per frame ({settings.min_pixels}): raise `max_pixels` "
                "or lower `min_pixels`",
            )
        factor = settings.patch_size * settings.merge_size
        if max_pixels is not None and max_pixels < factor**2:
            raise SettingError(
                "max_pixels",
                max_pixels,
                f"below one merged patch ({factor}x{factor} = {factor**2} pixels): raise it",
            )
        return settings

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def clip_max_pixels(self, frames: int) -> int:
        """The clip budget's max pixels for `frames` frames (clip budgets only)."""
        if self.frame_max_pixels is not None:
            return self.frame_max_pixels * frames
        if self.cap_pixels_per_frame:
            frame_cap = self.max_video_tokens * self.factor**2
            per_frame = max(min(frame_cap, self.max_pixels // frames), int(self.min_pixels * 1.05))
            return per_frame * frames
        return self.max_pixels

    def frame_size(self, frames: int, height: int, width: int) -> tuple[int, int]:
        """(height, width) every frame of a `frames`-frame clip of this size is resized to."""
        if self.budget == "frame":
            most = self.max_pixels
            if self.cap_pixels_per_frame:  # Qwen2VLVideoProcessor.resize
                total = int(self.max_video_tokens * self.factor**2 * 0.9)
                share = total * self.temporal_patch_size // frames
                most = max(min(most, share), int(self.min_pixels * 1.05))
            return smart_resize(height, width, self.factor, self.min_pixels, most)
        return smart_resize_clip(
            frames,
            height,
            width,
            self.temporal_patch_size,
            self.factor,
            self.min_pixels,
            self.clip_max_pixels(frames),
        )

    def fewest_video_tokens(self, frames: int) -> int:
        """The fewest video tokens `frames` frames pack into, whatever the clip: every frame is
        resized to at least `min_pixels` (or the whole `max_pixels` where that is smaller),
        frame by frame or shared over the clip."""
        groups = math.ceil(frames / self.temporal_patch_size)
        if self.budget == "frame":
            least = min(self.min_pixels, self.max_pixels)
        else:
            least = min(self.min_pixels, self.clip_max_pixels(frames)) // max(1, frames)
        return groups * max(1, least // self.factor**2)

    def most_video_tokens(self, frames: int) -> int:
        """The most video tokens `frames` frames pack into (frames of `max_pixels` or more)."""
        groups = math.ceil(frames / self.temporal_patch_size)
        most = self.max_pixels if self.budget == "frame" else self.clip_max_pixels(frames) // frames
        return groups * max(1, most // self.factor**2)


def _first_given(*values: int | None) -> int:
    return next(value for value in values if value is not None)


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as possible.

    Copied from transformers' `transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize`
    (itself from Qwen's qwen-vl-utils), so token counts match the reference processors."""
    _check_aspect_ratio(height, width)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _check_aspect_ratio(height: int, width: int) -> None:
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            "absolute aspect ratio must be smaller than 200, got "
            f"{max(height, width) / min(height, width)}"
        )


def smart_resize_clip(
    frames: int,
    height: int,
    width: int,
    temporal_factor: int,
    factor: int,
    min_pixels: int,
    max_pixels: int,
) -> tuple[int, int]:
    """The clip-budget resize of transformers' `qwen3_vl.video_processing_qwen3_vl.smart_resize`:
    frames times area within [min_pixels, max_pixels]; frames under one patch are scaled up."""
    if frames < temporal_factor:
        raise ValueError(f"{frames} frames: this model packs at least {temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    _check_aspect_ratio(height, width)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def pack_video(
    frames: np.ndarray, settings: PackSettings
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """uint8 RGB frames `[N, H, W, 3]` -> (`pixel_values_videos` float32
    `[t*h*w, 3*temporal_patch*patch*patch]`, grid (t, h, w) in patches before merging)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [N, H, W, 3], got {frames.dtype} {frames.shape}")
    p, m, tp = settings.patch_size, settings.merge_size, settings.temporal_patch_size
    height, width = settings.frame_size(len(frames), frames.shape[1], frames.shape[2])
    resized = resize_frames(frames, height, width)
    # Same arithmetic as transformers' numpy `rescale` (float64 product, then float32) and
    # `normalize` (float32), so the values agree to the last bit.
    pixels = (resized.astype(np.float64) * settings.rescale_factor).astype(np.float32)
    pixels = (pixels - np.array(settings.image_mean, np.float32)) / np.array(
        settings.image_std, np.float32
    )
    if pad := -len(pixels) % tp:  # the last temporal patch is completed with the last frame
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)])
    grid_t, grid_h, grid_w = len(pixels) // tp, height // p, width // p
    channels = pixels.shape[-1]
    patches = pixels.transpose(0, 3, 1, 2).reshape(
        grid_t, tp, channels, grid_h // m, m, p, grid_w // m, m, p
    )
    # -> (t, h/m, w/m, m_h, m_w, C, tp, p_h, p_w): each merge window's patches are adjacent,
    # the order of both families' `patchify`.
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * tp * p * p)
    return np.ascontiguousarray(flat), (grid_t, grid_h, grid_w)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 `[N, H, W, 3]` -> uint8 `[N, height, width, 3]`, bicubic (the processors' resample)."""
    return np.stack([_resize_bicubic(frame, height, width) for frame in frames])


def _resize_bicubic(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(
        Image.fromarray(frame).resize((width, height), resample=Image.Resampling.BICUBIC)
    )
