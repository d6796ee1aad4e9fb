"""Extraction speed: the pipeline's overhead over decoding, and a 3B-shaped model on this CPU.

1. On the shared sample clips with a tiny Qwen2.5-VL checkpoint (the model costs next to
   nothing, so this measures the pipeline): decode-only videos/s (the same background threads
   decoding the same frames) against full `extract` videos/s, in one run. Aim: >= 0.8x.
2. A random-initialised model of the real Qwen2.5-VL-3B shape (36 blocks, 2048 hidden, 32-block
   vision tower): seconds per video through the same pipeline.
3. Backends: transformers against vLLM (`--backend vllm`) on the same clips and the same random
   Qwen2-VL checkpoint of Qwen2-0.5B's language shape, with and without `--new-tokens 8`,
   both preloaded and fed the same batches. Runs where vLLM imports (`make vllm-env`).
4. Queries: one query against three in one run with `--query-position after` (the video paid
   once, each query continuing from its keys and values; aim: at most 1.3x one query), three
   separate one-query runs, and three queries `before` the video (a full pass each), on a small
   random Qwen2.5-VL (8 blocks, 512 wide) whose forward, not decoding, takes most of the time.

    python benchmarks/extract.py [--videos ../shared/data/videos] [--frames 16]
        [--max-pixels 200704] [--big-videos 2] [--big-dtype bf16|fp32] [--skip-big]
    .venv-vllm/bin/python benchmarks/extract.py --only-backends [--backend-videos 8]
    python benchmarks/extract.py --only-queries [--query-videos 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tiny-checkpoint factory lives with the tests

from benchmarks.common import write_json  # noqa: E402
from linkedout.extract.backbones.qwen_vl import QwenVLBackbone  # noqa: E402
from linkedout.extract.config import ExtractConfig  # noqa: E402
from linkedout.extract.decode import decode_video  # noqa: E402
from linkedout.extract.discover import VIDEO_EXTENSIONS  # noqa: E402
from linkedout.extract.pipeline import extract  # noqa: E402
from linkedout.testing.tiny_qwen import build_tiny_qwen  # noqa: E402

# Qwen2.5-VL-3B-Instruct's config.json, less the weights.
QWEN25_VL_3B_TEXT = dict(
    hidden_size=2048,
    intermediate_size=11008,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=2,
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 1000000.0,
        "mrope_section": [16, 24, 24],
    },
)
QWEN25_VL_3B_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    in_channels=3,
    out_hidden_size=2048,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
    hidden_act="silu",
)


# Qwen2-0.5B's language model shape under a small Qwen2-VL vision tower, random weights.
SMALL_TEXT = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
)
SMALL_VISION = dict(depth=8, embed_dim=640, hidden_size=896, num_heads=10, mlp_ratio=4)


def decode_only(clips: list[Path], frames: int, workers: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: decode_video(p, frames), clips))
    return time.perf_counter() - start


def full_extract(videos: Path, model: str, args, out: Path, backbone=None) -> float:
    config = ExtractConfig(
        out=str(out),
        videos=videos,
        model=model,
        frames=args.frames,
        max_pixels=args.max_pixels,
        device="cpu",
        dtype=args.dtype,
        decode_threads=args.decode_threads,
    )
    summary = extract(config, backbone=backbone)
    if summary.failed:
        print(f"  warning: {summary.failed} failures")
    return summary.seconds


def big_backbone(tiny: Path, dtype: torch.dtype, max_pixels: int) -> QwenVLBackbone:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    small = QwenVLBackbone.load(
        str(tiny), torch.device("cpu"), torch.float32, max_pixels=max_pixels
    )
    c = small.model.config
    tokens = {
        k: getattr(c, k)
        for k in (
            "video_token_id",
            "image_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
        )
    }
    config = Qwen2_5_VLConfig(
        text_config={**QWEN25_VL_3B_TEXT, "vocab_size": 151936},
        vision_config=QWEN25_VL_3B_VISION,
        **tokens,
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype).eval()
    return QwenVLBackbone(model, small.packer, "random Qwen2.5-VL-3B shape", None)


def backends(args, tmp: Path) -> dict:
    """videos/s of each backend on one checkpoint and one set of clips, engines preloaded."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("\n3. backends: vLLM is not installed here (make vllm-env), skipped")
        return {"skipped": "vllm not importable"}
    from linkedout.extract.backbones import load_backbone

    clips = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    subset = tmp / "backend-clips"
    subset.mkdir()
    for clip in sorted(clips, key=lambda p: p.stat().st_size)[: args.backend_videos]:
        (subset / clip.name).symlink_to(clip)
    model = build_tiny_qwen("qwen2_vl", tmp / "small", text=SMALL_TEXT, vision=SMALL_VISION)
    engines = {
        name: load_backbone(
            str(model), "cpu", "float32", max_pixels=args.backend_max_pixels, backend=name
        )
        for name in ("transformers", "vllm")
    }
    print(
        f"\n3. backends: random Qwen2-VL, Qwen2-0.5B language shape, {args.backend_videos} "
        f"videos, {args.backend_frames} frames, max_pixels {args.backend_max_pixels}, "
        f"batches of {args.backend_batch}"
    )
    figures: dict = {"videos": args.backend_videos}
    warm = tmp / "warm-clip"
    warm.mkdir()
    first = next(subset.iterdir())
    (warm / first.name).symlink_to(first.resolve())
    base = ExtractConfig(
        out="",
        videos=subset,
        model=str(model),
        frames=args.backend_frames,
        max_pixels=args.backend_max_pixels,
        device="cpu",
        dtype="float32",
        batch_size=args.backend_batch,
        decode_threads=args.decode_threads,
    )
    for name, backbone in engines.items():  # first-call costs (processor loads) left out
        warm_up = replace(base, out=str(tmp / f"warm-{name}.lance"), videos=warm, backend=name)
        extract(warm_up, backbone=backbone)
    for new_tokens in (0, 8):
        for name, backbone in engines.items():
            out = str(tmp / f"{name}-{new_tokens}.lance")
            config = replace(base, out=out, new_tokens=new_tokens, backend=name)
            summary = extract(config, backbone=backbone)
            rate = args.backend_videos / summary.seconds
            figures[f"{name}_new_tokens_{new_tokens}_videos_per_s"] = rate
            print(f"   {name:12s} new tokens {new_tokens}: {rate:6.2f} videos/s")
        ratio = (
            figures[f"vllm_new_tokens_{new_tokens}_videos_per_s"]
            / figures[f"transformers_new_tokens_{new_tokens}_videos_per_s"]
        )
        figures[f"vllm_over_transformers_new_tokens_{new_tokens}"] = ratio
        print(f"   vLLM / transformers: {ratio:.2f}x")
    return figures


QUERIES = (
    "what=Title: {title}\nWhat does this video show, and why would people want to watch it?",
    "mood=Describe the style and mood of this video in a few words.",
    "audience=Who would enjoy this video, and in what situation would they watch it?",
)
# A random Qwen2.5-VL whose language model costs real compute next to decoding.
QUERY_MODEL_TEXT = dict(
    hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
    num_key_value_heads=2,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
)  # fmt: skip
QUERY_MODEL_VISION = dict(depth=4, hidden_size=128, intermediate_size=256, out_hidden_size=512)


def queries(args, tmp: Path) -> dict:
    """Section 4: seconds for one query, three after the video, three separate runs, three
    before it; each run extracts the same videos into a new dataset, the model preloaded."""
    model = build_tiny_qwen(
        "qwen2_5_vl", tmp / "query-model", text=QUERY_MODEL_TEXT, vision=QUERY_MODEL_VISION
    )
    backbone = QwenVLBackbone.load(
        str(model), torch.device("cpu"), torch.float32, max_pixels=args.max_pixels
    )
    clips = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    subset = tmp / "query-videos"
    subset.mkdir()
    for clip in sorted(clips, key=lambda p: p.stat().st_size)[: args.query_videos]:
        (subset / clip.name).symlink_to(clip)

    def run(name: str, asked: tuple[str, ...], position: str = "after") -> float:
        config = ExtractConfig(
            out=str(tmp / f"{name}.lance"),
            videos=subset,
            model=str(model),
            frames=args.frames,
            max_pixels=args.max_pixels,
            device="cpu",
            dtype="fp32",
            query=list(asked),
            query_position=position,
            decode_threads=args.decode_threads,
        )
        summary = extract(config, backbone=backbone)
        if summary.failed:
            print(f"  warning: {summary.failed} failures")
        return summary.seconds

    run("warm", QUERIES[:1])
    one = run("one", QUERIES[:1])
    three = run("three", QUERIES)
    separate = sum(run(f"separate{i}", (q,)) for i, q in enumerate(QUERIES))
    before = run("before", QUERIES, "before")
    n = args.query_videos
    print(f"\n4. queries ({n} videos, {args.frames} frames, random 8-block 512-wide Qwen2.5-VL)")
    for label, seconds in (
        ("1 query", one),
        ("3 queries, after (video once)", three),
        ("3 separate 1-query runs", separate),
        ("3 queries, before (pass each)", before),
    ):
        print(f"   {label:32s} {seconds:7.2f} s   {seconds / one:5.2f}x one query")
    return {
        "videos": n,
        "one_query_s": one,
        "three_after_s": three,
        "three_separate_s": separate,
        "three_before_s": before,
        "three_after_over_one": three / one,
        "three_separate_over_one": separate / one,
        "three_before_over_one": before / one,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "data" / "videos")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--max-pixels", type=int, default=448 * 448)
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--dtype", default="fp32", help="tiny model compute dtype")
    parser.add_argument("--big-videos", type=int, default=2)
    parser.add_argument("--big-dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--backend-videos", type=int, default=8)
    parser.add_argument("--backend-frames", type=int, default=8)
    parser.add_argument("--backend-max-pixels", type=int, default=224 * 224)
    parser.add_argument("--backend-batch", type=int, default=8)
    parser.add_argument("--only-backends", action="store_true", help="run section 3 alone")
    parser.add_argument("--only-queries", action="store_true", help="run section 4 alone")
    parser.add_argument("--query-videos", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.only_backends or args.only_queries:
        section = backends if args.only_backends else queries
        with tempfile.TemporaryDirectory() as tmp:
            figures = {section.__name__: section(args, Path(tmp))}
        figures["settings"] = {k: str(v) for k, v in vars(args).items() if k != "json"}
        write_json(args.json, figures)
        return
    clips = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not clips:
        sys.exit(f"no clips in {args.videos}")
    threads = torch.get_num_threads()
    print(
        f"extraction benchmark: {len(clips)} clips from {args.videos}, {args.frames} frames, "
        f"max_pixels {args.max_pixels}, {args.decode_threads} decode threads, "
        f"torch threads {threads}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = build_tiny_qwen("qwen2_5_vl", tmp / "tiny")
        decode_only(clips[:1], args.frames, 1)  # warm the codecs
        t_decode = decode_only(clips, args.frames, args.decode_threads)
        t_full = full_extract(args.videos, str(tiny), args, tmp / "tiny.lance")
        print(f"\n1. pipeline overhead (tiny Qwen2.5-VL, {len(clips)} videos)")
        print(f"   decode only     {t_decode:7.2f} s   {len(clips) / t_decode:6.2f} videos/s")
        print(
            f"   full extract    {t_full:7.2f} s   {len(clips) / t_full:6.2f} videos/s"
            f"   ({t_decode / t_full:.2f}x decode-only)"
        )
        figures = {
            "settings": {k: str(v) for k, v in vars(args).items() if k != "json"},
            "videos": len(clips),
            "decode_only_videos_per_s": len(clips) / t_decode,
            "extract_videos_per_s": len(clips) / t_full,
            "extract_over_decode_only": t_decode / t_full,
        }
        figures["queries"] = queries(args, tmp)
        if args.skip_big:
            write_json(args.json, figures)
            return
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.big_dtype]
        start = time.perf_counter()
        backbone = big_backbone(tiny, dtype, args.max_pixels)
        params = sum(p.numel() for p in backbone.model.parameters())
        print(
            f"\n2. random Qwen2.5-VL-3B shape ({params / 1e9:.2f} B params, {args.big_dtype}),"
            f" built in {time.perf_counter() - start:.0f} s"
        )
        subset = tmp / "subset"
        subset.mkdir()
        small_first = sorted(clips, key=lambda p: p.stat().st_size)[: args.big_videos]
        for clip in small_first:
            (subset / clip.name).symlink_to(clip)
        args.dtype = args.big_dtype
        t_big = full_extract(subset, "unused", args, tmp / "big.lance", backbone=backbone)
        print(
            f"   {len(small_first)} videos in {t_big:.1f} s: "
            f"{t_big / len(small_first):.1f} s per video on this CPU"
        )
        figures["qwen25_vl_3b_shape"] = {
            "params": params,
            "dtype": args.big_dtype,
            "videos": len(small_first),
            "seconds_per_video": t_big / len(small_first),
        }
        write_json(args.json, figures)


if __name__ == "__main__":
    main()
