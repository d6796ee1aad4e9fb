"""Extraction on one GPU: real model shapes with random weights, real clips, both backends.

Builds Qwen3-VL-2B and Qwen2.5-VL-7B in their real shapes (random weights: nothing is
downloaded), extracts `--videos` clips (the repository's sample clips, repeated to 32 items) at
the default frames and pixels in bf16, and prints videos/s, prefill tokens/s, model FLOP
utilisation against the GPU's dense bf16 peak, and peak GPU memory, per model and backend.
vLLM runs where it imports and serves the family (both shapes here).

    python benchmarks/gpu.py [--items 32] [--frames 16] [--json out.json]
    python benchmarks/gpu.py --smoke     # tiny shapes on the CPU: checks this script runs

FLOPs count the language model's matmuls (2 x parameters per token), its attention scores
(4 x layers x hidden x sequence^2 per item, causal halved) and the vision tower's matmuls
(2 x its parameters per patch), without the LM head (extraction never runs it). Peak memory
is torch's peak allocation; under vLLM it includes the KV cache the engine preallocates.

Checked on a CPU with `--smoke` (both backends, in `.venv-vllm`); no GPU was lent to run it in
real shapes yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkpoint factory lives with the tests

from benchmarks.common import write_json  # noqa: E402
from linkedout.errors import SettingError  # noqa: E402
from linkedout.extract.backbones import VLLM_MODEL_TYPES  # noqa: E402
from linkedout.extract.backbones.base import ItemInput, Prepared  # noqa: E402
from linkedout.extract.backbones.qwen_vl import SUPPORTED, QwenVLBackbone, QwenVLPacker  # noqa: E402
from linkedout.extract.config import ExtractConfig  # noqa: E402
from linkedout.extract.decode import decode_video  # noqa: E402
from linkedout.extract.defaults import DEFAULT_PROMPT  # noqa: E402
from linkedout.extract.discover import VIDEO_EXTENSIONS  # noqa: E402
from linkedout.extract.pipeline import extract  # noqa: E402
from linkedout.testing.tiny_qwen import build_tiny_qwen  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of the device name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


@dataclass(frozen=True)
class Shape:
    family: str
    name: str
    text: dict
    vision: dict


SHAPES = (
    Shape(  # Qwen/Qwen3-VL-2B-Instruct's config.json
        "qwen3_vl",
        "Qwen3-VL-2B",
        dict(
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=262144,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        ),
        dict(
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_heads=16,
            out_hidden_size=2048,
            patch_size=16,
            num_position_embeddings=2304,
            deepstack_visual_indexes=[5, 11, 17],
        ),
    ),
    Shape(  # Qwen/Qwen2.5-VL-7B-Instruct's config.json
        "qwen2_5_vl",
        "Qwen2.5-VL-7B",
        dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=128000,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [16, 24, 24],
            },
        ),
        dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            patch_size=14,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
            tokens_per_second=2,
        ),
    ),
)


def checkpoint(shape: Shape, folder: Path, smoke: bool) -> tuple[Path, dict]:
    """A checkpoint folder with the shape's config.json and the family's tokenizer and
    processor files, but tiny weights (transformers builds the real ones from the config,
    vLLM with load_format dummy); returns it and the real config."""
    path = build_tiny_qwen(shape.family, folder)
    if smoke:
        return path, json.loads((path / "config.json").read_text())
    tiny = json.loads((path / "config.json").read_text())
    config = dict(tiny)
    config["text_config"] = {**tiny["text_config"], **shape.text, "vocab_size": 151936}
    config["vision_config"] = {**tiny["vision_config"], **shape.vision}
    config["tie_word_embeddings"] = shape.text.get("tie_word_embeddings", False)
    for weights in path.glob("*.safetensors"):
        weights.unlink()
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path, config


def transformers_backbone(path: Path, config: dict, device: torch.device, dtype, smoke: bool):
    if smoke:
        return QwenVLBackbone.load(str(path), device, dtype)
    family = SUPPORTED[config["model_type"]]
    model_class = family.load_class()
    torch.manual_seed(0)
    with torch.device(device):
        model = model_class._from_config(model_class.config_class.from_dict(config), dtype=dtype)
    packer = QwenVLPacker.load(str(path))
    return QwenVLBackbone(model.eval(), packer, str(path), None)


def vllm_backbone(path: Path, dtype, smoke: bool):
    from linkedout.extract.backbones.vllm_qwen import VllmQwenBackbone

    return VllmQwenBackbone.load(str(path), dtype, load_format="auto" if smoke else "dummy")


def model_flops(items: list[Prepared], config: dict, lm_params: int, tower_params: int) -> float:
    """Model FLOPs of one prefill of every item (see the module doc)."""
    text = config["text_config"]
    total = 0.0
    for prepared in items:
        seq = prepared.inputs["input_ids"].shape[1]
        patches = int(prepared.inputs["video_grid_thw"].prod())
        attention = 4 * text["num_hidden_layers"] * text["hidden_size"] * seq * seq / 2
        total += 2 * lm_params * seq + attention + 2 * tower_params * patches
    return total


def parameter_counts(model) -> tuple[int, int]:
    """(language model without its embedding table, vision tower) parameters."""
    lm = model.model.language_model
    lm_params = sum(p.numel() for p in lm.parameters()) - lm.embed_tokens.weight.numel()
    return lm_params, sum(p.numel() for p in model.model.visual.parameters())


def packed_items(path: Path, clips: Path, frames: int) -> list[Prepared]:
    """Every item as the transformers packer feeds it (the vLLM backend expands to the same)."""
    packer = QwenVLPacker.load(str(path))
    items = []
    for clip in sorted(clips.iterdir()):
        video = decode_video(clip, frames)
        text = DEFAULT_PROMPT.replace("{title}", clip.stem)
        items.append(packer.prepare(ItemInput(text, video.frames, tuple(video.seconds))))
    return items


def run_one(backend: str, backbone, clips: Path, args, out: Path) -> dict:
    config = ExtractConfig(
        out=str(out),
        videos=clips,
        model=backbone.model_id,
        frames=args.frames,
        device=str(backbone.device),
        dtype="bf16" if torch.cuda.is_available() else "fp32",
        batch_size=args.batch_size,
        backend=backend,
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    summary = extract(config, backbone=backbone)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"seconds": summary.seconds, "failed": summary.failed, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, default=REPO / "examples" / "clips")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, CPU, few items")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        sys.exit("no CUDA GPU here: run on a GPU machine, or pass --smoke to check the script")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = args.peak_tflops or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    if args.smoke:
        args.items, args.frames, args.batch_size = 3, 4, 2
    sources = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    figures: dict = {"device": name, "items": args.items, "frames": args.frames}
    print(f"GPU extraction benchmark on {name}: {args.items} items from {len(sources)} clips")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips = tmp / "clips"
        clips.mkdir()
        for i in range(args.items):  # distinct ids, the same few real files
            source = sources[i % len(sources)]
            (clips / f"{i:03d}_{source.name}").symlink_to(source.resolve())
        for shape in SHAPES:
            if args.smoke:  # the label says what was measured
                shape = Shape(shape.family, f"tiny {shape.family}", {}, {})
            path, config = checkpoint(shape, tmp / shape.family, args.smoke)
            rows = {}
            items = packed_items(path, clips, args.frames)
            tokens = sum(p.inputs["input_ids"].shape[1] for p in items)
            counts = None
            for backend in ("transformers", "vllm"):
                if backend == "vllm" and shape.family not in VLLM_MODEL_TYPES:
                    print(f"  {shape.name} vllm: skipped (the vLLM backend does not serve it)")
                    continue
                try:
                    if backend == "transformers":
                        backbone = transformers_backbone(path, config, device, dtype, args.smoke)
                        counts = parameter_counts(backbone.model)
                    else:
                        backbone = vllm_backbone(path, dtype, args.smoke)
                except SettingError as e:  # vLLM not installed here
                    print(f"  {shape.name} {backend}: skipped ({e})")
                    continue
                out = tmp / f"{shape.family}-{backend}.lance"
                result = run_one(backend, backbone, clips, args, out)
                seconds = result["seconds"]
                work = model_flops(items, config, *counts)
                row = {
                    "videos_per_s": args.items / seconds,
                    "prefill_tokens_per_s": tokens / seconds,
                    "tokens_per_video": tokens / args.items,
                    "mfu": work / seconds / (peak * 1e12) if peak else None,
                    "peak_gpu_gib": result["peak_gib"],
                    "failed": result["failed"],
                }
                rows[backend] = row
                mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a (unknown peak)"
                memory = f"{row['peak_gpu_gib']:.1f} GiB" if row["peak_gpu_gib"] else "n/a"
                print(
                    f"  {shape.name:14s} {backend:12s} {row['videos_per_s']:7.2f} videos/s  "
                    f"{row['prefill_tokens_per_s']:9.0f} prefill tokens/s  MFU {mfu}  "
                    f"peak memory {memory}"
                )
                del backbone
                if cuda:
                    torch.cuda.empty_cache()
            figures[shape.name] = rows
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
