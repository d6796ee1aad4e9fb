"""Tiny random-weight checkpoints of vision-language families outside the built-in Qwen ones,
saved with their own processors' `save_pretrained`, for the generic path (`generic_vlm.py`).

Building them needs transformers' video processors, hence torchvision: callers skip without it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer

from linkedout.testing.tiny_qwen import _tokenizer

GENERIC_FAMILIES = ("llava_onevision", "internvl")

_LLAVA_OV_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for content in message['content'] %}{% if content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def build_tiny_vlm(family: str, path: Path) -> Path:
    """Write a tiny `family` checkpoint (model, tokenizer, processor) at `path`."""
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if family == "llava_onevision":
        model, processor = _llava_onevision()
    elif family == "internvl":
        model, processor = _internvl()
    else:
        raise ValueError(f"unknown family {family!r}; choose from {GENERIC_FAMILIES}")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _llava_onevision():
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tokenizer = _tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    tokenizer.chat_template = _LLAVA_OV_TEMPLATE
    size = {"height": 32, "width": 32}  # 4 x 4 patches of 8 pixels
    config = LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model", image_size=32, patch_size=8, **_VISION
        ),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), **_TEXT),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[32, 32]],
        vision_feature_select_strategy="full",
    )
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[32, 32]]),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        chat_template=_LLAVA_OV_TEMPLATE,
    )
    return LlavaOnevisionForConditionalGeneration(config), processor


def _with_named_tokens(tokenizer, named: dict[str, str]):
    """The tokenizer reloaded with named special tokens (`tokenizer.video_token`, ..._id), as
    InternVL's hub tokenizer config declares them (`extra_special_tokens` as a mapping)."""
    tokenizer.add_special_tokens({"additional_special_tokens": list(named.values())})
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        config_file = Path(folder) / "tokenizer_config.json"
        config = json.loads(config_file.read_text())
        config["extra_special_tokens"] = named
        config_file.write_text(json.dumps(config))
        return AutoTokenizer.from_pretrained(folder)


def _internvl():
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    tokenizer = _tokenizer()
    named = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    tokenizer = _with_named_tokens(tokenizer, named)
    tokenizer.chat_template = _INTERNVL_TEMPLATE
    size = {"height": 32, "width": 32}  # 4 x 4 patches of 8 pixels, 2 x 2 after pixel shuffle
    config = InternVLConfig(
        vision_config=dict(image_size=[32, 32], patch_size=[8, 8], **_VISION),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), **_TEXT),
        image_token_id=tokenizer.context_image_token_id,
        downsample_ratio=0.5,
    )
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=False),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=4,
        chat_template=_INTERNVL_TEMPLATE,
    )
    return InternVLForConditionalGeneration(config), processor
