"""The generic path: vision-language models outside the built-in families (`generic_vlm.py`).

Their own processors pack the frames, and those need torchvision, so most of these run where it
imports (`make test-vllm`); the refusal where it does not runs in the main environment.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.extract.backbones.base import ItemInput
from linkedout.extract.backbones.generic_vlm import GenericVLMBackbone, torchvision_missing
from linkedout.extract.pool import PoolingRecipe
from linkedout.storage import FeatureStore
from tests.extract.tiny_vlm import GENERIC_FAMILIES, build_tiny_vlm
from tests.factories import clips_folder

runner = CliRunner()
MISSING = torchvision_missing()
needs_torchvision = pytest.mark.skipif(
    MISSING is not None, reason=f"transformers' video processors need torchvision: {MISSING}"
)
PROMPT = "Title: a dog on a bike\nWhat does this video show?"


@pytest.fixture(scope="module", params=GENERIC_FAMILIES)
def generic(request, tmp_path_factory):
    if MISSING:
        pytest.skip(f"transformers' video processors need torchvision: {MISSING}")
    path = build_tiny_vlm(request.param, tmp_path_factory.mktemp(request.param))
    return GenericVLMBackbone.load(str(path), torch.device("cpu"), torch.float32)


def _item(seed: int = 0) -> ItemInput:
    frames = np.random.default_rng(seed).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    return ItemInput(PROMPT, frames, (0.0, 0.5, 1.0, 1.5))


@needs_torchvision
def test_spans_hold_the_video_tokens_and_the_prompt(generic):
    prepared = generic.prepare(_item())
    ids = prepared.inputs["input_ids"][0]
    video = prepared.spans.video_positions()
    placeholders = torch.isin(ids, torch.tensor(generic.packer.token_ids))
    assert placeholders.nonzero().flatten().tolist() == list(
        range(video.start, video.stop) if isinstance(video, slice) else video
    )
    assert prepared.token_counts["video"] == int(placeholders.sum()) > 0
    assert generic.tokenizer.decode(ids[prepared.spans.prompt]) == PROMPT


@needs_torchvision
def test_stored_depths_are_the_models_hidden_states(generic):
    """The hooks sit on the language model's blocks: depth i is output_hidden_states[i]."""
    prepared = generic.prepare(_item())
    recipe = PoolingRecipe.make("video-llm", 16, video_sequence=True)
    identity = lambda hidden, spans: hidden.float()  # noqa: E731 (every position, unpooled)
    layers = tuple(range(generic.num_layers + 1))
    hooked = generic.pooled_states([prepared], layers, identity, 0).tokens[0]
    with torch.inference_mode():
        reference = generic.model(**prepared.inputs, output_hidden_states=True).hidden_states
    for layer in range(generic.num_layers):
        torch.testing.assert_close(hooked[layer], reference[layer][0], rtol=0, atol=0)
    final_norm = generic.model.model.language_model.norm
    torch.testing.assert_close(final_norm(hooked[-1]), reference[-1][0], rtol=0, atol=0)
    assert recipe.pool(reference[1][0], prepared.spans).shape == (16, generic.hidden_size)


@needs_torchvision
def test_generated_tokens_are_kept_and_never_vision_placeholders(generic):
    out = generic.pooled_states([generic.prepare(_item(1))], (0, 2), lambda h, s: h[-2:], 3)
    prepared = out.prepared[0]
    generated = prepared.inputs["input_ids"][0, prepared.spans.generated]
    assert 1 <= len(generated) <= 3 and prepared.token_counts["generated"] == len(generated)
    assert not torch.isin(generated, torch.tensor(generic.packer.token_ids)).any()


@needs_torchvision
@pytest.mark.parametrize("family", GENERIC_FAMILIES)
def test_the_cli_extracts_real_clips_through_the_generic_path(family, tmp_path):
    model = build_tiny_vlm(family, tmp_path / family)
    (tmp_path / "videos").mkdir()
    videos = clips_folder(tmp_path / "videos", ["bikes.mp4", "flipping_a_pancake.mkv"])
    out = tmp_path / "features.lance"
    args = ["--videos", str(videos), "--model", str(model), "--out", str(out), "--frames", "4"]
    result = runner.invoke(app, ["extract", *args, "--layers", "all", "--new-tokens", "2", "-q"])
    assert result.exit_code == 0, result.output + str(result.exception)
    store = FeatureStore.open(out)
    assert store.failures() == [] and sorted(store.ids()) == ["bikes", "flipping_a_pancake"]
    m = store.manifest
    assert m.layers == (0, 1, 2, 3, 4) and m.tokens_per_layer == 16
    assert "sequence (time) order" in m.pooling and "generated mean" in m.pooling
    rows = store.dataset.to_table(columns=["token_counts"]).to_pylist()
    assert all(r["token_counts"]["video"] > 0 and r["token_counts"]["generated"] for r in rows)


@needs_torchvision
def test_several_queries_follow_the_video_through_the_generic_path(tmp_path):
    family = GENERIC_FAMILIES[0]
    model = build_tiny_vlm(family, tmp_path / family)
    (tmp_path / "videos").mkdir()
    videos = clips_folder(tmp_path / "videos", ["bikes.mp4"])
    args = ["--videos", str(videos), "--model", str(model), "--frames", "4", "--layers", "all"]

    def extract(out, *queries):
        result = runner.invoke(
            app, ["extract", *args, "--out", str(out), *queries, "--tokens-per-layer", "8", "-q"]
        )
        assert result.exit_code == 0, result.output + str(result.exception)
        return FeatureStore.open(out)

    both = extract(tmp_path / "both.lance", "--query", "what=What is it?", "--query", "who=Who?")
    alone = extract(tmp_path / "alone.lance", "--query", "who=Who?")
    # Each query is a pass of its own here (the model's processor writes the whole prompt);
    # the video tokens come before the query, so they are what a one-query run stores.
    torch.testing.assert_close(
        both.read_tokens(["bikes"], query="who"), alone.read_tokens(["bikes"]), atol=2e-3, rtol=0
    )
    result = runner.invoke(
        app,
        ["extract", *args, "--out", str(tmp_path / "b.lance"), "--query-position", "before"],
    )
    assert result.exit_code == 2 and "generic path" in result.output


@pytest.mark.skipif(MISSING is None, reason="torchvision imports here: the generic path runs")
def test_without_torchvision_a_generic_model_is_one_line_naming_the_need(tmp_path):
    from transformers import LlavaOnevisionConfig

    model = tmp_path / "llava-ov"
    LlavaOnevisionConfig().save_pretrained(model)  # the config alone: refused before weights
    (tmp_path / "videos").mkdir()
    videos = clips_folder(tmp_path / "videos", ["bikes.mp4"])
    out = tmp_path / "features.lance"
    args = ["--videos", str(videos), "--model", str(model), "--out", str(out), "-q"]
    result = runner.invoke(app, ["extract", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "llava_onevision" in lines[0] and "torchvision" in lines[0]
    assert "qwen3_vl" in lines[0]  # the families that need no torchvision
    assert not out.exists()


@needs_torchvision
def test_max_pixels_is_refused_where_the_models_processor_sizes_frames(tmp_path):
    model = build_tiny_vlm("llava_onevision", tmp_path / "llava-ov")
    (tmp_path / "videos").mkdir()
    videos = clips_folder(tmp_path / "videos", ["bikes.mp4"])
    out = tmp_path / "features.lance"
    args = ["--videos", str(videos), "--model", str(model), "--out", str(out), "-q"]
    result = runner.invoke(app, ["extract", *args, "--max-pixels", "50176"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "--max-pixels 50176" in line and "generic path" in line and "\n" not in line
    assert not out.exists()
