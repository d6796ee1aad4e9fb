"""Any transformers image-text-to-text model that takes videos: its own processor packs them.

The Qwen families have a packer of their own (no torchvision, exact spans and grids). Every
other vision-language model goes through here: `AutoProcessor` renders the chat turn and packs
the frames exactly as the model's authors do, the video tokens are found by the model's video
(or image) token id, and the hooks sit on the language model's decoder blocks, as for Qwen.

What the generic path cannot know is how a model lays its video tokens out in (time, height,
width), so it pools them in their sequence order (every model here writes frames in time
order) into time-ordered chunks; the manifest's pooling recipe says so. Transformers' video
processors resize with torchvision, so this path runs only where torchvision imports.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from linkedout.errors import LinkedOutError
from linkedout.extract.backbones import checkpoint_files
from linkedout.extract.backbones.base import (
    Asked,
    HookedBackbone,
    ItemInput,
    PooledBatch,
    Prepared,
    Spans,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

_TOKEN_ID_FIELDS = ("video_token_id", "video_token_index", "image_token_id", "image_token_index")
_PER_TOKEN = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


def torchvision_missing() -> str | None:
    """Why transformers' video processors cannot run here, or None where they can."""
    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed"
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # a CUDA build beside CPU torch fails at import (e.g. its ops)
        return f"torchvision does not import ({str(e).splitlines()[0]})"
    return None


def is_image_text_to_text(config) -> bool:
    """Whether transformers maps this config to an image-text-to-text model with a vision
    tower (LLaVA-OneVision, SmolVLM2, InternVL, Gemma 3, GLM-4.xV, ...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and hasattr(
        config, "vision_config"
    )


def vision_token_ids(config, processor=None) -> tuple[int, ...]:
    """The ids of the placeholders the model fills with vision features (video first)."""
    ids = []
    for source in (config, getattr(config, "text_config", None), processor):
        for name in _TOKEN_ID_FIELDS:
            value = getattr(source, name, None) if source is not None else None
            if isinstance(value, int) and value >= 0 and value not in ids:
                ids.append(value)
    return tuple(ids)


class GenericVLMPacker:
    """The model's own `AutoProcessor`, given our sampled frames (it samples none itself)."""

    def __init__(self, processor, family: str, token_ids: tuple[int, ...]):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.family = family
        self.token_ids = token_ids
        self.settings = None  # no pixel arithmetic of ours: the processor decides the sizes

    @classmethod
    def load(cls, model: str) -> GenericVLMPacker:
        # Imported here: transformers' processor machinery takes seconds to import, and every
        # extraction imports this module (the built-in families never need it).
        from transformers import AutoConfig, AutoProcessor

        missing = torchvision_missing()
        if missing:
            raise LinkedOutError(f"{model}: {generic_path_needs(missing)}")
        config = AutoConfig.from_pretrained(model)
        processor = AutoProcessor.from_pretrained(model)
        if getattr(processor, "video_processor", None) is None:
            raise LinkedOutError(
                f"{model} ({config.model_type}): its processor takes no videos "
                "(no video_processor), so the generic path cannot pack frames for it"
            )
        token_ids = vision_token_ids(config, processor)
        if not token_ids:
            raise LinkedOutError(
                f"{model} ({config.model_type}): its config names no video or image token id "
                f"({', '.join(_TOKEN_ID_FIELDS)}), so its video tokens cannot be found"
            )
        return cls(processor, config.model_type, token_ids)

    def prepare(self, item: ItemInput) -> Prepared:
        if item.frames is None:
            raise ValueError("video backbones need video frames")
        messages = [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": item.text}]}
        ]
        chat = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        packed = self.processor(
            text=[chat],
            videos=[list(item.frames)],
            do_sample_frames=False,  # the frames are already the ones we sampled
            video_metadata=[_metadata(item)],
            return_tensors="pt",
        )
        inputs = {k: v for k, v in packed.items() if isinstance(v, torch.Tensor)}
        ids = inputs["input_ids"][0]
        is_video = torch.isin(ids, torch.tensor(self.token_ids))
        positions = is_video.nonzero().flatten().tolist()
        if not positions:
            raise ValueError(f"the processor wrote no video tokens (ids {self.token_ids})")
        runs = _runs(positions)
        prompt = self._prompt_span(ids.tolist(), chat, item.text, positions[-1])
        spans = Spans(
            prompt=prompt,
            video=slice(positions[0], positions[-1] + 1),
            video_grid=(len(positions), 1, 1),
            video_frames=tuple(runs) if len(runs) > 1 else (),
        )
        counts = {"video": len(positions), "prompt": prompt.stop - prompt.start}
        return Prepared(inputs, spans, counts)

    def ask(self, item: ItemInput) -> Asked:
        """Each query after the video, each a sequence of its own: the model's processor
        builds the whole prompt, so no prefix is known to be shared."""
        if item.query_position != "after":
            raise LinkedOutError("the generic path places queries after the video only")
        return Asked(tuple(self.prepare(replace(item, text=t)) for t in item.queries), None)

    def _prompt_span(self, ids: list[int], chat: str, text: str, last_video: int) -> slice:
        """Where `text` sits: its tokens, right before what the template writes after it."""
        if chat.count(text) < 1:
            raise ValueError("the chat template rewrites the prompt text")
        tail = chat.rsplit(text, 1)[1]
        tail_ids = self._encode(tail) if tail else []
        text_ids = self._encode(text)
        stop = len(ids) - len(tail_ids)
        start = stop - len(text_ids)
        if start <= last_video or ids[start:stop] != text_ids or ids[stop:] != tail_ids:
            raise ValueError("the chat template merges the prompt text with its surroundings")
        return slice(start, stop)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def generic_path_needs(missing: str) -> str:
    return (
        "the generic path packs this model's frames with its own AutoProcessor, whose video "
        f"processor resizes with torchvision, and {missing} (install a torchvision build that "
        "matches torch, as on GPU machines)"
    )


def _metadata(item: ItemInput) -> dict:
    """What the processor would have known had it sampled the frames itself: their times."""
    n = len(item.frames)
    seconds = list(item.frame_seconds) or [0.0] * n
    step = (seconds[-1] - seconds[0]) / (n - 1) if n > 1 else 0.0
    fps = 1.0 / step if step > 0 else 1.0
    return {
        "total_num_frames": n,
        "fps": fps,
        "frames_indices": [round(s * fps) for s in seconds],
        "duration": seconds[-1] + step if n > 1 else 0.0,
    }


def _runs(positions: list[int]) -> list[slice]:
    """Consecutive positions as slices (frames separated by text or separator tokens)."""
    runs, start = [], positions[0]
    for before, after in zip(positions, positions[1:]):
        if after != before + 1:
            runs.append(slice(start, before + 1))
            start = after
    runs.append(slice(start, positions[-1] + 1))
    return runs


class GenericVLMBackbone(HookedBackbone):
    """Any transformers image-text-to-text model with a video processor (see the module doc).
    Items are forwarded one at a time: processors lay their pixel tensors out differently."""

    kind: Literal["video-llm", "text"] = "video-llm"

    def __init__(
        self, model: PreTrainedModel, packer: GenericVLMPacker, model_id: str, revision: str | None
    ):
        self.model = model
        self.packer = packer
        self.tokenizer = packer.tokenizer
        self.model_id = model_id
        self.revision = revision
        text_config = model.config.get_text_config()
        self.num_layers: int = text_config.num_hidden_layers
        self.hidden_size: int = text_config.hidden_size
        self.device: torch.device = model.device
        self.dtype: torch.dtype = model.dtype
        positions = getattr(text_config, "max_position_embeddings", None)
        self.max_positions: int | None = int(positions) if positions else None
        self._layers = _decoder_layers(model, self.num_layers)

    @classmethod
    def load(
        cls,
        model: str,
        device: torch.device,
        dtype: torch.dtype,
        *,
        model_id: str | None = None,
        revision: str | None = None,
    ) -> GenericVLMBackbone:
        from transformers import AutoModelForImageTextToText

        packer = GenericVLMPacker.load(model)
        network = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype)
        return cls(
            network.to(device).eval(),
            packer,
            model_id or model,
            revision or checkpoint_files.revision(model),
        )

    @property
    def family(self) -> str:
        return self.packer.family

    def pooled_states(self, batch, layers, pool, new_tokens) -> PooledBatch:
        done = [
            super(GenericVLMBackbone, self).pooled_states([p], layers, pool, new_tokens)
            for p in batch
        ]
        return PooledBatch(tuple(d.prepared[0] for d in done), torch.cat([d.tokens for d in done]))

    def decoder_layers(self) -> nn.ModuleList:
        return self._layers

    def collate(self, batch: list[Prepared]) -> tuple[dict[str, torch.Tensor], list[int]]:
        (item,) = batch
        return {k: v.to(self.device) for k, v in item.inputs.items()}, [0]

    def forward(self, inputs: dict[str, torch.Tensor]) -> None:
        with torch.inference_mode():
            self.model.model(**inputs, use_cache=False)

    def generate(self, prepared: Prepared, new_tokens: int) -> Prepared:
        """Greedy decoding, never emitting a vision placeholder (the forward over prompt and
        generated tokens would look for features behind it)."""
        inputs = prepared.inputs
        with torch.inference_mode():
            sequences = self.model.generate(
                **{k: v.to(self.device) for k, v in inputs.items()},
                do_sample=False,
                max_new_tokens=new_tokens,
                suppress_tokens=list(self.packer.token_ids),
            )
        length = inputs["input_ids"].shape[1]
        generated = sequences[:, length:].cpu()
        n_new = generated.shape[1]
        extended = dict(inputs)
        for key in _PER_TOKEN:
            if key in inputs:
                fill = 1 if key == "attention_mask" else 0
                tail = generated if key == "input_ids" else torch.full_like(generated, fill)
                extended[key] = torch.cat([inputs[key], tail], dim=1)
        spans = replace(prepared.spans, generated=slice(length, length + n_new))
        return Prepared(extended, spans, {**prepared.token_counts, "generated": n_new})


def _decoder_layers(model: PreTrainedModel, num_layers: int) -> nn.ModuleList:
    """The language model's decoder blocks: `get_decoder()`'s `layers` where transformers
    exposes it, else the one ModuleList of `num_layers` blocks under a language model."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) == num_layers:
        return layers
    found = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) == num_layers
        and "language_model" in name
        and name.endswith("layers")
    ]
    if len(found) != 1:
        raise LinkedOutError(
            f"{model.config.model_type}: cannot find its language model's {num_layers} "
            "decoder blocks to hook"
        )
    return found[0]
