"""Tiny random-weight Qwen-VL checkpoints that load exactly like a user's local copy.

`build_tiny_qwen(family, path, layout=...)` writes what a real checkpoint folder holds: config.json
and safetensors weights (`save_pretrained`), generation_config.json, a tokenizer with the family's
special tokens and chat template, and the processor files in one of two layouts:

- "hub": as Qwen publishes them: preprocessor_config.json (and video_preprocessor_config.json
  where the Hub repo has one), the chat template in chat_template.json and tokenizer_config.json;
- "transformers5": what transformers 5's `Processor.save_pretrained` writes: one
  processor_config.json with nested `image_processor` / `video_processor` sections and the
  template in chat_template.jinja (the vllm-env tests check this against the real thing).

Everything is built offline from a fixed seed, so tests never download anything.
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
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
QWEN3 = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
"""Text timestamps between temporal patches, 16-pixel patches, a clip pixel budget."""
LAYOUTS = ("hub", "transformers5")

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

# Qwen3-VL-*-Instruct's template, shortened: no default system turn, same vision markers.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = (
    "You are a helpful assistant.",
    "A dog eats a pancake in the kitchen while the family watches.",
    "Watch the best bike tricks of 2024! Describe this video in one sentence.",
    "Summarize the clip: a cartoon sailor fights a bully on a ship.",
    "Big Buck Bunny wakes up, stretches and smells a flower. 描述这个视频 🎬",
    "<0.5 seconds><1.0 seconds><12.3 seconds><40.7 seconds>",
)

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tiny_qwen(
    family: str,
    path: Path,
    text: dict | None = None,
    vision: dict | None = None,
    layout: str = "hub",
) -> Path:
    """Write a tiny `family` checkpoint folder at `path` in `layout` and return it; `text` and
    `vision` override config fields (benchmarks build larger random models the same way)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    torch.manual_seed(0)
    model = _model(family, ids, len(tokenizer), text or {}, vision or {})
    model.save_pretrained(path)
    template = QWEN3_CHAT_TEMPLATE if family in QWEN3 else CHAT_TEMPLATE
    tokenizer.chat_template = template
    tokenizer.save_pretrained(path)
    _write_processor_files(family, path, layout, template)
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
    elif family in QWEN3:
        model = _qwen3_model(family, text, tokens, vision_overrides)
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


def _qwen3_model(family: str, text: dict, tokens: dict, vision_overrides: dict) -> PreTrainedModel:
    """Qwen3-VL (DeepStack after decoder blocks 1 and 2) and Qwen3.5 (linear and full attention
    blocks alternating), dense or with 4 experts of which 2 are active."""
    vision = {
        "depth": 3,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": text["hidden_size"],
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "num_position_embeddings": 64,  # an 8x8 grid, interpolated to each frame's size
        **({"deepstack_visual_indexes": [0, 1]} if family.startswith("qwen3_vl") else {}),
        **vision_overrides,
    }
    text = {**text, "head_dim": 32}
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_interleaved": True}
    if family.endswith("_moe"):
        text |= {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
    if family.startswith("qwen3_5"):
        text |= {
            "layer_types": ["linear_attention", "full_attention"]
            * (text["num_hidden_layers"] // 2),
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 2,
            "partial_rotary_factor": 1.0,
        }
        if family.endswith("_moe"):
            text["shared_expert_intermediate_size"] = 32
    config_class, model_class = {
        "qwen3_vl": (Qwen3VLConfig, Qwen3VLForConditionalGeneration),
        "qwen3_vl_moe": (Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration),
        "qwen3_5": (Qwen3_5Config, Qwen3_5ForConditionalGeneration),
        "qwen3_5_moe": (Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration),
    }[family]
    return model_class(config_class(text_config=text, vision_config=vision, **tokens))


_PROCESSOR_CLASSES = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    **dict.fromkeys(QWEN3, "Qwen3VLProcessor"),
}


def processor_sections(family: str) -> tuple[dict, dict | None]:
    """(image processor settings, video processor settings or None where the Hub repo ships
    only preprocessor_config.json) as the family's checkpoints carry them."""
    if family in QWEN3:
        common = {
            "patch_size": 16,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        }
        image = {
            "size": {"shortest_edge": 65536, "longest_edge": 16777216},
            "image_processor_type": "Qwen2VLImageProcessor",
            **common,
        }
        video = {
            "size": {"shortest_edge": 4096, "longest_edge": 25165824},
            "fps": 2,
            "video_processor_type": "Qwen3VLVideoProcessor",
            **common,
        }
        return image, video
    # Hub snapshots carry the legacy flat min/max_pixels keys; processors saved by recent
    # transformers write a `size` dict in video_preprocessor_config.json. Cover both.
    common = {
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
    }
    image = {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "image_processor_type": "Qwen2VLImageProcessor",
        **common,
    }
    if family == "qwen2_vl":
        return image, None
    video = {
        "size": {"shortest_edge": 3136, "longest_edge": 28 * 28 * 768},
        "video_processor_type": "Qwen2VLVideoProcessor",
        **common,
    }
    return image, video


def _write_processor_files(family: str, path: Path, layout: str, template: str) -> None:
    processor_class = _PROCESSOR_CLASSES[family]
    image, video = processor_sections(family)
    if layout == "transformers5":
        # The tokenizer's save already wrote chat_template.jinja, as the processor's save does.
        nested = {
            "image_processor": {**image, "processor_class": processor_class},
            "video_processor": {**(video or image), "processor_class": processor_class},
            "processor_class": processor_class,
        }
        if video is None:
            nested["video_processor"]["video_processor_type"] = "Qwen2VLVideoProcessor"
            del nested["video_processor"]["image_processor_type"]
        (path / "processor_config.json").write_text(json.dumps(nested, indent=2))
        return
    (path / "chat_template.jinja").unlink()
    (path / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2))
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    image = {**image, "processor_class": processor_class}
    (path / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    if video is not None:
        video = {**video, "processor_class": processor_class}
        (path / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
