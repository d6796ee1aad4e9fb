"""Qwen2-VL and Qwen2.5-VL as backbones, with video preprocessing that needs no torchvision.

transformers' Qwen video processors resize with torchvision, which has no usable CPU build here,
so `pack_video` redoes their preprocessing in numpy + PIL, step for step as transformers'
`Qwen2VLImageProcessorPil` (whose output it matches bit for bit). The torchvision video processor
resizes with its own antialiased bicubic, a grey level or so away from PIL's.

Qwen3-VL is not supported: its prompt puts a text timestamp and vision markers between frames, so
its video tokens are no single contiguous `Spans.video` slice; and it adds vision features
("deepstack") to the video positions between its first decoder blocks, after the block outputs
our hooks read.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import (
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)
from transformers.utils.hub import cached_file, extract_commit_hash

from linkedout.errors import LinkedOutError, SettingError
from linkedout.extract.backbones.base import HookedBackbone, ItemInput, Prepared, Spans

SUPPORTED: dict[str, tuple[str, type[PreTrainedModel]]] = {
    "qwen2_vl": ("Qwen2-VL", Qwen2VLForConditionalGeneration),
    "qwen2_5_vl": ("Qwen2.5-VL", Qwen2_5_VLForConditionalGeneration),
}
"""config.json `model_type` -> (family name, model class)."""

VIDEO_TOKEN = "<|video_pad|>"
_TEXT_MARKER = "\x00text\x00"
_VIDEO_TYPE = 2  # `mm_token_type_ids` value of video tokens (text 0, image 1)
# Inputs with one entry per token, padded in `collate`; the rest are concatenated.
_PER_TOKEN = ("input_ids", "attention_mask", "mm_token_type_ids")

_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PackSettings:
    """How frames become vision patches; defaults are transformers' `Qwen2VLVideoProcessor`."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    """Pixel budget per frame (`--max-pixels`)."""
    image_mean: tuple[float, ...] = _OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = _OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255

    @classmethod
    def from_preprocessor_config(
        cls, config: dict, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> PackSettings:
        """Settings from a checkpoint's (video_)preprocessor_config.json, with overrides.

        Like the processors' `__init__`, flat `min_pixels`/`max_pixels` keys (Hub snapshots)
        win over the `size` dict (what recent transformers saves)."""
        size = config.get("size") or {}
        defaults = cls()
        settings = cls(
            patch_size=config.get("patch_size", defaults.patch_size),
            temporal_patch_size=config.get("temporal_patch_size", defaults.temporal_patch_size),
            merge_size=config.get("merge_size", defaults.merge_size),
            min_pixels=_first_given(
                min_pixels, config.get("min_pixels"), size.get("shortest_edge"), defaults.min_pixels
            ),
            max_pixels=_first_given(
                max_pixels, config.get("max_pixels"), size.get("longest_edge"), defaults.max_pixels
            ),
            image_mean=tuple(config.get("image_mean", defaults.image_mean)),
            image_std=tuple(config.get("image_std", defaults.image_std)),
            rescale_factor=config.get("rescale_factor", defaults.rescale_factor),
        )
        if settings.min_pixels > settings.max_pixels:
            raise SettingError(
                "max_pixels",
                settings.max_pixels,
                f"below the min pixels per frame ({settings.min_pixels}): raise `max_pixels` "
                "or lower `min_pixels`",
            )
        return settings

    @classmethod
    def of_checkpoint(cls, model: str, max_pixels: int | None = None) -> PackSettings:
        """The settings a packer of this checkpoint would use (its config files only)."""
        return cls.from_preprocessor_config(_preprocessor_config(model), max_pixels=max_pixels)

    def fewest_video_tokens(self, frames: int) -> int:
        """The fewest video tokens `frames` frames pack into, whatever the clip: every frame is
        resized to at least `min_pixels` (or the whole `max_pixels` where that is smaller)."""
        factor = self.patch_size * self.merge_size
        per_patch = max(1, min(self.min_pixels, self.max_pixels) // factor**2)
        return math.ceil(frames / self.temporal_patch_size) * per_patch

    def most_video_tokens(self, frames: int) -> int:
        """The most video tokens `frames` frames pack into (frames of `max_pixels` or more)."""
        factor = self.patch_size * self.merge_size
        return math.ceil(frames / self.temporal_patch_size) * max(1, self.max_pixels // factor**2)


def _first_given(*values: int | None) -> int:
    return next(value for value in values if value is not None)


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as possible.

    Copied from transformers' `transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize`
    (itself from Qwen's qwen-vl-utils), so token counts match the reference processors."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            "absolute aspect ratio must be smaller than 200, got "
            f"{max(height, width) / min(height, width)}"
        )
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


def pack_video(
    frames: np.ndarray, settings: PackSettings
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """uint8 RGB frames `[N, H, W, 3]` -> (`pixel_values_videos` float32
    `[t*h*w, 3*temporal_patch*patch*patch]`, grid (t, h, w) in patches before merging)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [N, H, W, 3], got {frames.dtype} {frames.shape}")
    p, m, tp = settings.patch_size, settings.merge_size, settings.temporal_patch_size
    height, width = smart_resize(
        frames.shape[1], frames.shape[2], p * m, settings.min_pixels, settings.max_pixels
    )
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
    # the order of transformers' `Qwen2VLVideoProcessor.patchify`.
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


class QwenVLPacker:
    """The CPU half of a Qwen-VL backbone: frames and a prompt -> model inputs and spans.

    It needs the tokenizer and the configs, never the weights, so a decoding worker (a thread
    here, a Ray task on a cluster) packs items while the model runs elsewhere."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        settings: PackSettings,
        family: str,
        video_token_id: int,
    ):
        self.tokenizer = tokenizer
        self.settings = settings
        self.family = family
        self._video_token_id = video_token_id

    @classmethod
    def load(
        cls, model: str, max_pixels: int | None = None, min_pixels: int | None = None
    ) -> QwenVLPacker:
        config = PretrainedConfig.get_config_dict(model)[0]
        model_type = config.get("model_type")
        if model_type not in SUPPORTED:
            supported = ", ".join(f"{name} ({key})" for key, (name, _) in SUPPORTED.items())
            raise LinkedOutError(
                f"{model} is a {model_type or 'unknown'} model; supported video LLMs: {supported}"
            )
        tokenizer = AutoTokenizer.from_pretrained(model)
        if tokenizer.chat_template is None:
            tokenizer.chat_template = _processor_chat_template(model)
        settings = PackSettings.from_preprocessor_config(
            _preprocessor_config(model), min_pixels=min_pixels, max_pixels=max_pixels
        )
        video_token_id = SUPPORTED[model_type][1].config_class.from_dict(config).video_token_id
        return cls(tokenizer, settings, model_type, video_token_id)

    def prepare(self, item: ItemInput) -> Prepared:
        if item.frames is None:
            raise ValueError("Qwen-VL backbones need video frames")
        pixel_values, grid = pack_video(item.frames, self.settings)
        merge = self.settings.merge_size
        n_video = grid[0] * grid[1] * grid[2] // merge**2
        head, mid, tail = self._scaffold(item.text)
        video = [self._video_token_id] * n_video
        pieces = [self._encode(head), video, self._encode(mid), self._encode(item.text)]
        input_ids = [token for piece in pieces for token in piece] + self._encode(tail)
        # The processor tokenizes the whole expanded prompt at once; ours must be identical.
        if input_ids != self._encode(head + VIDEO_TOKEN * n_video + mid + item.text + tail):
            raise ValueError("the chat template merges the prompt text with its surroundings")
        video_start = len(pieces[0])
        prompt_start = video_start + n_video + len(pieces[2])
        spans = Spans(
            prompt=slice(prompt_start, prompt_start + len(pieces[3])),
            video=slice(video_start, video_start + n_video),
            video_grid=(grid[0], grid[1] // merge, grid[2] // merge),
        )
        ids = torch.tensor([input_ids])
        token_types = torch.zeros_like(ids)
        token_types[0, spans.video] = _VIDEO_TYPE
        inputs = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": token_types,
            "pixel_values_videos": torch.from_numpy(pixel_values),
            "video_grid_thw": torch.tensor([grid]),
        }
        if self.family == "qwen2_5_vl":
            inputs["second_per_grid_ts"] = torch.tensor(
                [self._seconds_per_grid(item.frame_seconds, len(item.frames))]
            )
        return Prepared(inputs, spans, {"video": n_video, "prompt": len(pieces[3])})

    def _scaffold(self, text: str) -> tuple[str, str, str]:
        """The chat prompt around the video placeholder and `text`: (before the video,
        between video and text, after the text)."""
        if VIDEO_TOKEN in text:
            raise LinkedOutError(f"the prompt must not contain {VIDEO_TOKEN}: {text!r}")
        # A marker locates the text whatever it holds (it may repeat scaffolding characters).
        chat = self._chat(_TEXT_MARKER)
        if chat.count(_TEXT_MARKER) != 1 or chat.split(_TEXT_MARKER)[0].count(VIDEO_TOKEN) != 1:
            raise ValueError(f"the chat template must put one {VIDEO_TOKEN} before the text")
        before_text, tail = chat.split(_TEXT_MARKER)
        head, mid = before_text.split(VIDEO_TOKEN)
        if self._chat(text) != head + VIDEO_TOKEN + mid + text + tail:
            raise ValueError("the chat template rewrites the prompt text")
        return head, mid, tail

    def _chat(self, text: str) -> str:
        """The family's chat prompt: a user turn with the video, then `text`."""
        content = [{"type": "video"}, {"type": "text", "text": text}]
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _seconds_per_grid(self, frame_seconds: tuple[float, ...], n_frames: int) -> float:
        """Seconds spanned by one temporal patch; Qwen2.5-VL spaces temporal M-RoPE positions by
        `tokens_per_second` times this. Its processor computes `temporal_patch_size / fps`."""
        if len(frame_seconds) != n_frames:
            raise ValueError(f"got {len(frame_seconds)} frame timestamps for {n_frames} frames")
        if n_frames < 2:  # a single temporal patch sits at time 0 whatever the interval
            return 0.0
        interval = (frame_seconds[-1] - frame_seconds[0]) / (n_frames - 1)
        return self.settings.temporal_patch_size * interval


class QwenVLBackbone(HookedBackbone):
    """A Qwen2-VL / Qwen2.5-VL checkpoint reading one video and a prompt per item."""

    kind: Literal["video-llm", "text"] = "video-llm"

    def __init__(
        self, model: PreTrainedModel, packer: QwenVLPacker, model_id: str, revision: str | None
    ):
        self.model = model
        self.packer = packer
        self.tokenizer = packer.tokenizer
        self.settings = packer.settings
        self.model_id = model_id
        self.revision = revision
        text_config = model.config.text_config
        self.num_layers: int = text_config.num_hidden_layers
        self.hidden_size: int = text_config.hidden_size
        self.device: torch.device = model.device
        self.dtype: torch.dtype = model.dtype
        pad = self.tokenizer.pad_token_id
        self._pad_id: int = pad if pad is not None else self.tokenizer.eos_token_id
        positions = getattr(text_config, "max_position_embeddings", None)
        self.max_positions: int | None = int(positions) if positions else None

    @classmethod
    def load(
        cls,
        model: str,
        device: torch.device,
        dtype: torch.dtype,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
        *,
        model_id: str | None = None,
        revision: str | None = None,
    ) -> QwenVLBackbone:
        """Load a Hub id or local checkpoint folder; `max_pixels`/`min_pixels` bound each frame
        and override the checkpoint's preprocessor config. `model_id` and `revision` default to
        `model` and the revision found from its files (a caller that resolved a Hub id to a
        cached folder passes what it knows)."""
        packer = QwenVLPacker.load(model, max_pixels=max_pixels, min_pixels=min_pixels)
        network = SUPPORTED[packer.family][1].from_pretrained(model, dtype=dtype)
        return cls(
            network.to(device).eval(), packer, model_id or model, revision or _revision(model)
        )

    @property
    def family(self) -> str:
        return self.packer.family

    def refuse(self, prepared: Prepared, new_tokens: int) -> str | None:
        length = int(prepared.inputs["input_ids"].shape[1]) + new_tokens
        if self.max_positions is None or length <= self.max_positions:
            return None
        video = prepared.token_counts.get("video", 0)
        return (
            f"{length} tokens ({video} of them video) exceed the model's "
            f"{self.max_positions} positions: lower --frames or --max-pixels"
        )

    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.language_model.layers

    def collate(self, batch: list[Prepared]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Right-pads the per-token inputs; padded tokens are masked out of attention and of the
        M-RoPE index, so every item's states match a forward of that item alone."""
        length = max(p.inputs["input_ids"].shape[1] for p in batch)
        inputs = {}
        for key in batch[0].inputs:
            tensors = [p.inputs[key] for p in batch]
            if key in _PER_TOKEN:
                fill = self._pad_id if key == "input_ids" else 0
                tensors = [
                    nn.functional.pad(t, (0, length - t.shape[1]), value=fill) for t in tensors
                ]
            inputs[key] = torch.cat(tensors).to(self.device)
        return inputs, [0] * len(batch)

    def forward(self, inputs: dict[str, torch.Tensor]) -> None:
        # The base model stops before the LM head; no KV cache is needed for one pass.
        with torch.inference_mode():
            self.model.model(**inputs, use_cache=False)

    def generate(self, prepared: Prepared, new_tokens: int) -> Prepared:
        """Greedy decoding; stops early if the model emits an end-of-turn token."""
        inputs = prepared.inputs
        with torch.inference_mode():
            sequences = self.model.generate(
                **{key: value.to(self.device) for key, value in inputs.items()},
                do_sample=False,
                max_new_tokens=new_tokens,
            )
        length = inputs["input_ids"].shape[1]
        generated = sequences[:, length:].cpu()
        n_new = generated.shape[1]
        extended = dict(inputs)
        extended["input_ids"] = torch.cat([inputs["input_ids"], generated], dim=1)
        # Generated tokens are text (type 0): the model's M-RoPE index of the extended sequence
        # continues the prompt's last position by one per token, as decoding did.
        for key in ("attention_mask", "mm_token_type_ids"):
            fill = 1 if key == "attention_mask" else 0
            extended[key] = torch.cat([inputs[key], torch.full_like(generated, fill)], dim=1)
        spans = replace(prepared.spans, generated=slice(length, length + n_new))
        return Prepared(extended, spans, {**prepared.token_counts, "generated": n_new})


def _preprocessor_config(model: str) -> dict:
    # The video processor reads video_preprocessor_config.json, else preprocessor_config.json.
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        path = cached_file(model, name, _raise_exceptions_for_missing_entries=False)
        if path is not None:
            return json.loads(Path(path).read_text())
    raise LinkedOutError(f"{model} has no preprocessor_config.json: is it a complete checkpoint?")


def _processor_chat_template(model: str) -> str:
    # Some checkpoints keep the template only in the processor's chat_template.json.
    path = cached_file(model, "chat_template.json", _raise_exceptions_for_missing_entries=False)
    if path is None:
        raise LinkedOutError(f"{model} ships no chat template (tokenizer or chat_template.json)")
    return json.loads(Path(path).read_text())["chat_template"]


def _revision(model: str) -> str:
    """The Hub commit the files came from, else (a plain folder) the sha256 of config.json."""
    config_path = cached_file(model, "config.json")
    commit = extract_commit_hash(config_path, None)
    return commit or hashlib.sha256(Path(config_path).read_bytes()).hexdigest()
