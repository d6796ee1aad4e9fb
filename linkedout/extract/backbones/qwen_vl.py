"""The Qwen Video LLMs as backbones: Qwen2-VL, Qwen2.5-VL, Qwen3-VL (dense and MoE) and
Qwen3.5 (dense and MoE), packed without torchvision (`qwen_pixels`).

What differs between the generations, and where it is handled:
- Qwen3-VL and Qwen3.5 write a text timestamp (`<1.5 seconds>`) and vision markers before each
  temporal patch of the video, so its tokens are several spans (`Spans.video_frames`); the
  pooling bins follow the video tokens alone, in (time, height, width) order.
- Qwen3-VL adds vision features ("DeepStack") to the video positions after each of its first
  decoder blocks, outside the block; `LayerCapture` reads a depth as what the next block reads,
  so the stored states include them.
- Qwen2.5-VL spaces temporal positions by seconds (`second_per_grid_ts`); Qwen3 models compute
  their interleaved positions from the grid and token types, the timestamps being text.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    DynamicCache,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2VLModel,
)

from linkedout.errors import LinkedOutError
from linkedout.extract.backbones import checkpoint_files
from linkedout.extract.backbones.base import Asked, HookedBackbone, ItemInput, Prepared, Spans
from linkedout.extract.backbones.families import SUPPORTED, supported_families
from linkedout.extract.backbones.qwen_pixels import PackSettings, pack_video

VIDEO_TOKEN = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
_TEXT_MARKER = "\x00text\x00"
_VIDEO_TYPE = 2  # `mm_token_type_ids` value of video tokens (text 0, image 1)
# Inputs with one entry per token, padded in `collate`; the rest are concatenated.
_PER_TOKEN = ("input_ids", "attention_mask", "mm_token_type_ids")
# transformers 5.2x renamed the forward's `past_key_values` to `cache` (the old name warns).
_CACHE = (
    "cache" if "cache" in inspect.signature(Qwen2VLModel.forward).parameters else "past_key_values"
)


def pack_settings(
    model: str, model_type: str, max_pixels: int | None = None, min_pixels: int | None = None
) -> PackSettings:
    """How a packer of this checkpoint turns frames into patches (its config files only)."""
    section, source = checkpoint_files.video_processor_config(model)
    return PackSettings.from_processor_config(
        section,
        model_type,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        source=f"{model}/{source}",
    )


def _timestamp(seconds: float) -> str:
    """A temporal patch's marker as Qwen3VLProcessor writes it."""
    return f"<{seconds:.1f} seconds>"


@dataclass(frozen=True)
class PackedVideo:
    """One clip's patches, packed once whatever number of queries read it."""

    pixel_values: np.ndarray
    grid: tuple[int, int, int]
    seconds: tuple[float, ...]
    n_frames: int
    seconds_per_grid: float | None


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
        self.video_token_id = video_token_id
        self._timestamps = SUPPORTED[family].timestamps
        self._vision_ids = [tokenizer.convert_tokens_to_ids(t) for t in (VISION_START, VISION_END)]

    @classmethod
    def load(
        cls, model: str, max_pixels: int | None = None, min_pixels: int | None = None
    ) -> QwenVLPacker:
        """`max_pixels` bounds each frame; `min_pixels` overrides the processor's minimum (per
        frame, or per clip where the family's budget is the clip's)."""
        config = PretrainedConfig.get_config_dict(model)[0]
        model_type = config.get("model_type")
        if model_type not in SUPPORTED:
            raise LinkedOutError(
                f"{model} is a {model_type or 'unknown'} model; supported video LLMs: "
                + supported_families()
            )
        tokenizer = AutoTokenizer.from_pretrained(model)
        # The processor's template is what `processor.apply_chat_template` renders.
        template = checkpoint_files.processor_chat_template(model) or tokenizer.chat_template
        if template is None:
            raise LinkedOutError(
                f"{model} ships no chat template (chat_template.jinja, chat_template.json or "
                "the tokenizer's config): is it a complete checkpoint?"
            )
        tokenizer.chat_template = template
        settings = pack_settings(model, model_type, max_pixels, min_pixels)
        model_config = SUPPORTED[model_type].load_class().config_class.from_dict(config)
        return cls(tokenizer, settings, model_type, model_config.video_token_id)

    def prepare(self, item: ItemInput) -> Prepared:
        return self.sequence(item.text, self.pack(item), "after")

    def ask(self, item: ItemInput) -> Asked:
        """Every query of `item.queries` with the video packed once. After the video, the
        queries share every token before their own (scaffold and video); before it, nothing."""
        video = self.pack(item)
        queries = tuple(self.sequence(t, video, item.query_position) for t in item.queries)
        after = item.query_position == "after"
        return Asked(queries, queries[0].spans.prompt.start if after else None)

    def pack(self, item: ItemInput) -> PackedVideo:
        """The clip's patches, once for every query that reads it."""
        if item.frames is None:
            raise ValueError("Qwen-VL backbones need video frames")
        pixel_values, grid = pack_video(item.frames, self.settings)
        seconds = None
        if SUPPORTED[self.family].seconds_per_grid:
            seconds = self._seconds_per_grid(item.frame_seconds, len(item.frames))
        return PackedVideo(pixel_values, grid, item.frame_seconds, len(item.frames), seconds)

    def sequence(self, text: str, video: PackedVideo, position: str) -> Prepared:
        """One query's whole sequence around a packed video; `position`: where the query sits."""
        grid = video.grid
        merge = self.settings.merge_size
        per_patch = grid[1] * grid[2] // merge**2
        before = position == "before"
        head, mid, tail = self._scaffold(text, before=before)
        head_ids, mid_ids, text_ids = self._encode(head), self._encode(mid), self._encode(text)
        # head, first, mid, second, tail: the text first when `before`, else the video.
        video_start = len(head_ids) + (len(text_ids) + len(mid_ids) if before else 0)
        video_ids, video_text, frames = self._video(
            grid[0], per_patch, video_start, video.seconds, video.n_frames
        )
        pair = ((text_ids, text), (video_ids, video_text))
        first, second = pair if before else pair[::-1]
        input_ids = head_ids + first[0] + mid_ids + second[0] + self._encode(tail)
        whole = head + first[1] + mid + second[1] + tail
        prompt_start = len(head_ids) if before else video_start + len(video_ids) + len(mid_ids)
        # The processor tokenizes the whole expanded prompt at once; ours must be identical.
        if input_ids != self._encode(whole):
            raise ValueError("the chat template merges the prompt text with its surroundings")
        spans = Spans(
            prompt=slice(prompt_start, prompt_start + len(text_ids)),
            video=slice(frames[0].start, frames[-1].stop),
            video_grid=(grid[0], grid[1] // merge, grid[2] // merge),
            video_frames=tuple(frames) if self._timestamps else (),
        )
        ids = torch.tensor([input_ids])
        token_types = torch.zeros_like(ids)
        token_types[0] = torch.where(ids[0] == self.video_token_id, _VIDEO_TYPE, 0)
        inputs = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": token_types,
            "pixel_values_videos": torch.from_numpy(video.pixel_values),
            "video_grid_thw": torch.tensor([grid]),
        }
        if video.seconds_per_grid is not None:
            inputs["second_per_grid_ts"] = torch.tensor([video.seconds_per_grid])
        counts = {"video": per_patch * grid[0], "prompt": len(text_ids)}
        return Prepared(inputs, spans, counts)

    def _video(
        self, patches: int, per_patch: int, start: int, seconds: tuple[float, ...], n_frames: int
    ) -> tuple[list[int], str, list[slice]]:
        """The video placeholder expanded: (token ids, the same as text, where each temporal
        patch's video tokens sit). Qwen3 models put `<t seconds><|vision_start|>` before each
        patch and `<|vision_end|>` after it, t the mean time of the patch's frames."""
        if not self._timestamps:
            n = patches * per_patch
            return [self.video_token_id] * n, VIDEO_TOKEN * n, [slice(start, start + n)]
        ids, text, frames = [], "", []
        start_id, end_id = self._vision_ids
        for time in self.patch_seconds(seconds, n_frames):
            stamp = _timestamp(time)
            ids += self._encode(stamp) + [start_id]
            frames.append(slice(start + len(ids), start + len(ids) + per_patch))
            ids += [self.video_token_id] * per_patch + [end_id]
            text += stamp + VISION_START + VIDEO_TOKEN * per_patch + VISION_END
        return ids, text, frames

    def patch_seconds(self, seconds: tuple[float, ...], n_frames: int) -> list[float]:
        """Each temporal patch's time: the mean of its first and last frame's (Qwen3VLProcessor
        `_calculate_timestamps`; the last patch is completed with the last frame)."""
        if len(seconds) != n_frames:
            raise ValueError(f"got {len(seconds)} frame timestamps for {n_frames} frames")
        tp = self.settings.temporal_patch_size
        padded = list(seconds) + [seconds[-1]] * (-n_frames % tp)
        return [(padded[i] + padded[i + tp - 1]) / 2 for i in range(0, len(padded), tp)]

    def timestamp_ids(self, seconds: float) -> list[int]:
        """A temporal patch's `<t seconds>` marker as tokens (encoded alone, as the processor
        encodes it)."""
        return self._encode(_timestamp(seconds))

    def _scaffold(self, text: str, before: bool = False) -> tuple[str, str, str]:
        """The chat prompt around the video placeholder and `text`: (before the first of the
        two, between them, after the second); the text comes first when `before`."""
        if VIDEO_TOKEN in text:
            raise LinkedOutError(f"the prompt must not contain {VIDEO_TOKEN}: {text!r}")
        # A marker locates the text whatever it holds (it may repeat scaffolding characters).
        chat = self._chat(_TEXT_MARKER, before)
        order = (_TEXT_MARKER, VIDEO_TOKEN) if before else (VIDEO_TOKEN, _TEXT_MARKER)
        if chat.count(_TEXT_MARKER) != 1 or chat.count(VIDEO_TOKEN) != 1:
            raise ValueError(f"the chat template must hold one {VIDEO_TOKEN} and the text")
        head, rest = chat.split(order[0])
        if order[1] not in rest:
            raise ValueError("the chat template reorders the video and the text")
        mid, tail = rest.split(order[1])
        rebuilt = head + (text + mid + VIDEO_TOKEN if before else VIDEO_TOKEN + mid + text) + tail
        if self._chat(text, before) != rebuilt:
            raise ValueError("the chat template rewrites the prompt text")
        return head, mid, tail

    def _chat(self, text: str, before: bool = False) -> str:
        """The family's chat prompt: a user turn with the video and `text` (in that order, or
        the text first when `before`)."""
        content = [{"type": "video"}, {"type": "text", "text": text}]
        if before:
            content.reverse()
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
    """A Qwen-VL checkpoint (any family of `SUPPORTED`) reading one video and a prompt per item."""

    kind: Literal["video-llm", "text"] = "video-llm"
    shrink_hint: ClassVar[str] = "lower --frames or --max-pixels"

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
        # Qwen3.5's linear-attention blocks keep a recurrent state (see `batches_prefixes`).
        self.batches_prefixes = "linear_attention" not in (
            getattr(text_config, "layer_types", None) or ()
        )

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
        network = SUPPORTED[packer.family].load_class().from_pretrained(model, dtype=dtype)
        return cls(
            network.to(device).eval(),
            packer,
            model_id or model,
            revision or checkpoint_files.revision(model),
        )

    @property
    def family(self) -> str:
        return self.packer.family

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

    per_token: ClassVar[tuple[str, ...]] = _PER_TOKEN

    @property
    def pad_id(self) -> int:
        return self._pad_id

    def positions(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's own multi-axis rotary positions of one whole sequence, from its ids
        and video grid alone (what a single forward computes), so a prefix and its
        continuations are placed exactly where one pass would place them."""
        keys = ("input_ids", "attention_mask", "mm_token_type_ids", "video_grid_thw")
        given = {k: inputs[k].to(self.device) for k in (*keys, "second_per_grid_ts") if k in inputs}
        with torch.inference_mode():
            return self.model.model.compute_3d_position_ids(
                inputs_embeds=None, image_grid_thw=None, **{_CACHE: None}, **given
            )

    def new_cache(self) -> DynamicCache:
        # The text model's config knows which layers are linear attention (Qwen3.5).
        return DynamicCache(config=self.model.model.language_model.config)

    def forward_cached(
        self, inputs: dict[str, torch.Tensor], positions: torch.Tensor, cache, text_only=False
    ) -> None:
        model = self.model.model.language_model if text_only else self.model.model
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            model(**inputs, position_ids=positions, use_cache=True, **{_CACHE: cache})

    def generate(self, prepared: Prepared, new_tokens: int) -> Prepared:
        """Greedy decoding; stops early if the model emits an end-of-turn token. Image and
        video placeholders are never generated: the forward over prompt + generated tokens
        would take one for a vision token with no features behind it."""
        inputs = prepared.inputs
        config = self.model.config
        with torch.inference_mode():
            sequences = self.model.generate(
                **{key: value.to(self.device) for key, value in inputs.items()},
                do_sample=False,
                max_new_tokens=new_tokens,
                suppress_tokens=[config.image_token_id, config.video_token_id],
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
