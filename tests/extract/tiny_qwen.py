"""Tiny random-weight Qwen-VL checkpoints that load exactly like a user's local copy.

`build_tiny_qwen(family, path)` writes what a real Hub snapshot holds: config.json and
safetensors weights (`save_pretrained`), generation_config.json, a tokenizer with the family's
special tokens and chat template, and the preprocessor config files. Everything is built offline
from a fixed seed, so tests never download anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

FAMILIES = ("qwen2_vl", "qwen2_5_vl")

# Same tokens and order as the real Qwen2-VL / Qwen2.5-VL vocabularies (ids 151643..151656 there).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The chat template shipped by Qwen2-VL-*-Instruct and Qwen2.5-VL-*-Instruct (identical in both).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = (
    "You are a helpful assistant.",
    "A dog eats a pancake in the kitchen while the family watches.",
    "Watch the best bike tricks of 2024! Describe this video in one sentence.",
    "Summarize the clip: a cartoon sailor fights a bully on a ship.",
    "Big Buck Bunny wakes up, stretches and smells a flower. 描述这个视频 🎬",
)

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tiny_qwen(
    family: str, path: Path, text: dict | None = None, vision: dict | None = None
) -> Path:
    """Write a tiny `family` checkpoint folder at `path` and return it; `text` and `vision`
    override config fields (benchmarks build larger random models the same way)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    torch.manual_seed(0)
    model = _model(family, ids, len(tokenizer), text or {}, vision or {})
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _write_preprocessor_configs(family, path)
    return path


def _tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE with Qwen2's pre-tokenizer, trained in memory on a few sentences."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_CORPUS, trainer)
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"], merges=[tuple(merge) for merge in trained["merges"]]
    )
    # <|endoftext|> is already there (Qwen2Tokenizer adds it); the rest follow in the real order.
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _model(
    family: str, ids: dict[str, int], vocab_size: int, text_overrides: dict, vision_overrides: dict
) -> PreTrainedModel:
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        # head_dim 32 -> 16 rotary frequencies, split t/h/w like the real [16, 24, 24] of 64.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [4, 6, 6],
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        **text_overrides,
    }
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    if family == "qwen2_vl":
        vision = {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2}
        vision |= vision_overrides
        model = Qwen2VLForConditionalGeneration(
            Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        )
    else:
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "tokens_per_second": 2,
            # 56 px = 2x2 merged tokens per window, so small test frames still span windows.
            "window_size": 56,
            "fullatt_block_indexes": [1],
            **vision_overrides,
        }
        model = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        )
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    return model.eval()


def _write_preprocessor_configs(family: str, path: Path) -> None:
    # Hub snapshots carry the legacy flat min/max_pixels keys; processors saved by recent
    # transformers write a `size` dict in video_preprocessor_config.json. Cover both.
    processor_class = "Qwen2VLProcessor" if family == "qwen2_vl" else "Qwen2_5_VLProcessor"
    common = {
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
        "processor_class": processor_class,
    }
    image = {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "image_processor_type": "Qwen2VLImageProcessor",
        **common,
    }
    (path / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    if family == "qwen2_5_vl":
        video = {
            "size": {"shortest_edge": 3136, "longest_edge": 28 * 28 * 768},
            "video_processor_type": "Qwen2VLVideoProcessor",
            **common,
        }
        (path / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
