"""Our packer against transformers' own processors, for every supported family and both checkpoint
layouts. Those processors resize video with torchvision, so these tests run where it imports
(`make test-vllm`: .venv-vllm has it) and skip elsewhere."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from linkedout.extract.backbones.base import ItemInput
from linkedout.extract.backbones.qwen_vl import QwenVLPacker
from linkedout.testing.tiny_qwen import FAMILIES, QWEN3

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None,
    reason="transformers' Qwen video processors resize with torchvision, which is not installed",
)

MAX_PIXELS = 28 * 28 * 12
FPS = 4.0


def _item(n_frames: int, height: int, width: int, seed: int) -> ItemInput:
    frames = np.random.default_rng(seed).integers(0, 256, (n_frames, height, width, 3), np.uint8)
    # Frame i at i / FPS: what the processor derives from indices 0..n-1 at FPS.
    seconds = tuple(i / FPS for i in range(n_frames))
    return ItemInput("A dog eats from a bowl. Describe this video.", frames, seconds)


def _processor_inputs(path, item: ItemInput, settings) -> dict:
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    processor = AutoProcessor.from_pretrained(str(path))
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": item.text}]}
    ]
    chat = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    n = len(item.frames)
    metadata = VideoMetadata(total_num_frames=n, fps=FPS, frames_indices=list(range(n)))
    # Our --max-pixels bounds each frame; the Qwen3 processor's budget covers the clip.
    longest = MAX_PIXELS * (n if settings.budget == "clip" else 1)
    kwargs = {"size": {"shortest_edge": settings.min_pixels, "longest_edge": longest}}
    if settings.budget == "clip":
        kwargs["cap_pixels_per_frame"] = False
    return processor(
        text=[chat],
        videos=[item.frames],
        video_metadata=[metadata],
        do_sample_frames=False,
        fps=FPS,
        return_tensors="pt",
        videos_kwargs=kwargs,
    )


@pytest.mark.parametrize("layout", ["hub", "transformers5"])
@pytest.mark.parametrize("family", FAMILIES)
def test_packing_equals_the_transformers_processor(checkpoints, saved_checkpoints, family, layout):
    path = (checkpoints if layout == "hub" else saved_checkpoints)[family]
    packer = QwenVLPacker.load(str(path), max_pixels=MAX_PIXELS)
    item = _item(5, 123, 77, seed=2)  # an odd count: the last temporal patch is padded
    ours = packer.prepare(item).inputs
    theirs = _processor_inputs(path, item, packer.settings)
    assert ours["video_grid_thw"].tolist() == theirs["video_grid_thw"].tolist()
    # Token ids (timestamps and vision markers included) and token types: exactly equal.
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert ours["mm_token_type_ids"].tolist() == theirs["mm_token_type_ids"].tolist()
    if family == "qwen2_5_vl":
        assert ours["second_per_grid_ts"].tolist() == pytest.approx(
            theirs["second_per_grid_ts"].tolist()
        )
    # torchvision's antialiased bicubic against PIL's: a grey level or so on noise frames.
    gap = (ours["pixel_values_videos"] - theirs["pixel_values_videos"].float()).abs()
    assert gap.mean() < 0.01 and torch.quantile(gap.flatten()[:100_000], 0.99) < 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_the_transformers5_fixture_is_what_save_pretrained_writes(
    checkpoints, saved_checkpoints, family, tmp_path
):
    """The processor transformers loads from the Hub-style folder, saved again by transformers
    itself, packs exactly what our hand-written transformers5 fixture packs."""
    from transformers import AutoProcessor

    saved = tmp_path / "saved"
    AutoProcessor.from_pretrained(str(checkpoints[family])).save_pretrained(str(saved))
    shutil.copy(checkpoints[family] / "config.json", saved / "config.json")
    nested = json.loads((saved / "processor_config.json").read_text())
    assert "video_processor" in nested and not (saved / "preprocessor_config.json").exists()
    assert (saved / "chat_template.jinja").exists()
    item = _item(4, 60, 90, seed=3)
    real = QwenVLPacker.load(str(saved), max_pixels=MAX_PIXELS)
    fixture = QwenVLPacker.load(str(saved_checkpoints[family]), max_pixels=MAX_PIXELS)
    assert real.settings == fixture.settings
    assert real.settings.budget == ("clip" if family in QWEN3 else "frame")
    a, b = real.prepare(item), fixture.prepare(item)
    assert a.spans == b.spans
    for key in a.inputs:
        assert torch.equal(a.inputs[key], b.inputs[key]), key
