"""QwenVLBackbone on tiny random checkpoints: preprocessing parity with transformers' own code,
exact spans, the layer numbering convention, batching and greedy generation."""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import GPT2Config
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from linkedout.errors import LinkedOutError
from linkedout.extract.backbones.base import ItemInput, Prepared
from linkedout.extract.backbones.qwen_pixels import PackSettings, pack_video
from linkedout.extract.backbones.qwen_vl import VIDEO_TOKEN, QwenVLBackbone, QwenVLPacker
from linkedout.testing.tiny_qwen import FAMILIES, QWEN3
from tests.conftest import shared_data

CPU = torch.device("cpu")
# 12 merged tokens per temporal patch at most (Qwen2) or about that (Qwen3's 32-pixel tokens):
# keeps every forward tiny.
MAX_PIXELS = 28 * 28 * 12
SETTINGS = PackSettings(min_pixels=56 * 56, max_pixels=28 * 28 * 20)


@pytest.fixture(scope="session", params=FAMILIES)
def backbone(request, checkpoints) -> QwenVLBackbone:
    return QwenVLBackbone.load(
        str(checkpoints[request.param]), CPU, torch.float32, max_pixels=MAX_PIXELS
    )


@pytest.fixture(scope="session")
def clip() -> ItemInput:
    """Three frames of a real clip (an odd count, so the last temporal patch is padded)."""
    import decord

    reader = decord.VideoReader(str(shared_data("videos", "dog_eating_854132.mp4")))
    indices = [0, 10, 20]
    return ItemInput(
        text="A dog eats from a bowl. Describe this video.",
        frames=reader.get_batch(indices).asnumpy(),
        frame_seconds=tuple(float(s) for s in reader.get_frame_timestamp(indices)[:, 0]),
    )


def random_item(text: str, n_frames: int, height: int, width: int, seed: int) -> ItemInput:
    frames = np.random.default_rng(seed).integers(0, 256, (n_frames, height, width, 3), np.uint8)
    return ItemInput(
        text=text, frames=frames, frame_seconds=tuple(0.5 * i for i in range(n_frames))
    )


def image_processor(settings: PackSettings) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(
        min_pixels=settings.min_pixels,
        max_pixels=settings.max_pixels,
        patch_size=settings.patch_size,
        temporal_patch_size=settings.temporal_patch_size,
        merge_size=settings.merge_size,
        image_mean=list(settings.image_mean),
        image_std=list(settings.image_std),
    )


def all_layers(backbone: QwenVLBackbone, batch: list[Prepared]) -> list[torch.Tensor]:
    """Every depth of a padded forward of `batch` as extraction captures it (`LayerCapture`):
    `[B, S, D]` per layer, layer 0 = input of block 1, layer i = what block i + 1 reads."""
    layers = tuple(range(backbone.num_layers + 1))
    tokens = backbone.pooled_states(batch, layers, lambda hidden, spans: hidden, 0).tokens
    return [tokens[:, layer] for layer in layers]


# (a) pack_video against transformers' torchvision-free image processor -------------------------


@pytest.mark.parametrize(
    ("height", "width"),
    [(56, 84), (50, 75), (123, 77), (20, 30), (300, 500)],
    ids=["multiple-of-28", "non-multiple", "odd", "below-min-pixels", "above-max-pixels"],
)
def test_pack_video_of_a_still_equals_the_image_processor(height, width):
    frame = np.random.default_rng(height).integers(0, 256, (height, width, 3), np.uint8)
    expected = image_processor(SETTINGS)(images=[Image.fromarray(frame)], return_tensors="np")
    pixels, grid = pack_video(np.stack([frame, frame]), SETTINGS)
    assert grid == tuple(expected["image_grid_thw"][0])
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, expected["pixel_values"])
    if height * width > SETTINGS.max_pixels:
        assert grid[1] * grid[2] * 14 * 14 <= SETTINGS.max_pixels


def test_pack_video_orders_frames_inside_each_temporal_patch():
    """Each patch vector is (channel, time, row, column), the layout the vision tower's Conv3d
    reads; an odd frame count repeats the last frame."""
    frames = np.random.default_rng(1).integers(0, 256, (3, 70, 100, 3), np.uint8)
    pixels, (grid_t, grid_h, grid_w) = pack_video(frames, SETTINGS)
    assert grid_t == 2
    per_frame = pixels.reshape(grid_t, grid_h * grid_w, 3, 2, 14 * 14)
    processor = image_processor(SETTINGS)
    for index in range(4):
        still = Image.fromarray(frames[min(index, 2)])
        expected = processor(images=[still], return_tensors="np")["pixel_values"]
        expected = expected.reshape(grid_h * grid_w, 3, 2, 14 * 14)[:, :, 0]
        np.testing.assert_array_equal(per_frame[index // 2, :, :, index % 2], expected)


# (b) against the real video processor, which needs torchvision --------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None,
    reason="transformers' Qwen2VLVideoProcessor resizes with torchvision, which is not installed",
)
def test_pack_video_matches_the_transformers_video_processor():
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    frames = np.random.default_rng(2).integers(0, 256, (5, 123, 77, 3), np.uint8)
    processor = Qwen2VLVideoProcessor(
        min_pixels=SETTINGS.min_pixels,
        max_pixels=SETTINGS.max_pixels,
        cap_pixels_per_frame=False,
    )
    expected = processor(videos=[frames], return_tensors="np")
    pixels, grid = pack_video(frames, SETTINGS)
    assert grid == tuple(expected["video_grid_thw"][0])
    # torchvision's antialiased bicubic and PIL's differ. On these noise frames (the hardest case
    # for a resampler) the mean gap is 0.4 grey levels, the 99th percentile 0.06 in normalised
    # units (4 grey levels), the worst pixel 21 (measured with transformers 5.19). The vLLM
    # backend is not exposed to it: it is given the packer's resized frames.
    gap = np.abs(pixels - expected["pixel_values_videos"])
    assert gap.mean() < 0.01 and np.quantile(gap, 0.99) < 0.1


# Loading -------------------------------------------------------------------------------------


def test_load_reads_the_checkpoint(checkpoints):
    expected = {  # the video processor's (min, max) pixels, per frame or (Qwen3) per clip
        "qwen2_vl": (3136, 12845056),
        "qwen2_5_vl": (3136, 28 * 28 * 768),
        **dict.fromkeys(QWEN3, (4096, 25165824)),
    }
    for family, pixels in expected.items():
        path = checkpoints[family]
        backbone = QwenVLBackbone.load(str(path), CPU, torch.float32)
        assert backbone.kind == "video-llm"
        assert (backbone.num_layers, backbone.hidden_size) == (4, 64)
        assert len(backbone.decoder_layers()) == 4
        # video_preprocessor_config.json wins over preprocessor_config.json where both exist.
        assert (backbone.settings.min_pixels, backbone.settings.max_pixels) == pixels
        assert backbone.settings.budget == ("clip" if family in QWEN3 else "frame")
        assert backbone.settings.patch_size == (16 if family in QWEN3 else 14)
        expected_revision = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
        assert backbone.revision == expected_revision
    path = checkpoints["qwen2_5_vl"]
    overridden = QwenVLBackbone.load(str(path), CPU, torch.float32, max_pixels=9999, min_pixels=10)
    assert (overridden.settings.min_pixels, overridden.settings.max_pixels) == (10, 9999)
    named = QwenVLBackbone.load(str(path), CPU, torch.float32, model_id="org/name", revision="abc")
    assert (named.model_id, named.revision) == ("org/name", "abc")


@pytest.mark.parametrize("family", FAMILIES)
def test_both_checkpoint_layouts_pack_the_same_inputs(checkpoints, saved_checkpoints, family, clip):
    """A Hub-style folder and the one transformers 5's save_pretrained writes (nested
    processor_config.json, chat_template.jinja, no preprocessor_config.json) are one model."""
    hub = QwenVLPacker.load(str(checkpoints[family]), max_pixels=MAX_PIXELS)
    saved = QwenVLPacker.load(str(saved_checkpoints[family]), max_pixels=MAX_PIXELS)
    assert not (saved_checkpoints[family] / "preprocessor_config.json").exists()
    assert hub.settings == saved.settings
    assert hub.tokenizer.chat_template == saved.tokenizer.chat_template
    a, b = hub.prepare(clip), saved.prepare(clip)
    assert a.spans == b.spans and a.token_counts == b.token_counts
    assert a.inputs.keys() == b.inputs.keys()
    for key in a.inputs:
        assert torch.equal(a.inputs[key], b.inputs[key]), key


def test_unsupported_architecture_is_a_user_error(tmp_path):
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(LinkedOutError, match=r"gpt2 model.*Qwen2-VL \(qwen2_vl\).*Qwen3\.5"):
        QwenVLBackbone.load(str(tmp_path), CPU, torch.float32)


# (c) spans and the layer convention on a real clip -------------------------------------------


def expected_placeholder(backbone: QwenVLBackbone, item: ItemInput, t: int, per_patch: int) -> str:
    """What the family's transformers processor expands the one video token into."""
    if backbone.family not in QWEN3:
        return VIDEO_TOKEN * t * per_patch
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    # Its timestamps are frame index / fps: with fps 1 the "indices" are our frame times.
    times = Qwen3VLProcessor._calculate_timestamps(None, list(item.frame_seconds), 1.0, 2)
    assert len(times) == t
    return "".join(
        f"<{time:.1f} seconds><|vision_start|>{VIDEO_TOKEN * per_patch}<|vision_end|>"
        for time in times
    )


def test_spans_are_exactly_the_video_and_prompt_tokens(backbone, clip):
    prepared = backbone.prepare(clip)
    ids = prepared.inputs["input_ids"][0]
    spans, tokenizer = prepared.spans, backbone.tokenizer
    video_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    t, h, w = spans.video_grid
    video = spans.video_positions()
    positions = list(range(len(ids)))[video] if isinstance(video, slice) else video
    assert len(positions) == t * h * w == prepared.token_counts["video"]
    assert t == 2  # three frames, padded to two temporal patches
    assert (ids == video_id).nonzero().flatten().tolist() == positions
    assert len(spans.video_frames) == (t if backbone.family in QWEN3 else 0)
    assert tokenizer.decode(ids[spans.prompt]) == clip.text
    assert spans.prompt.stop - spans.prompt.start == prepared.token_counts["prompt"]
    # What the transformers processor tokenizes: the chat template with the placeholder expanded.
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": clip.text}]}
    ]
    chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    placeholder = expected_placeholder(backbone, clip, t, h * w)
    assert tokenizer.decode(ids) == chat.replace(VIDEO_TOKEN, placeholder)
    types = prepared.inputs["mm_token_type_ids"][0]
    assert types.nonzero().flatten().tolist() == positions
    assert prepared.inputs["video_grid_thw"].tolist() == [[t, 2 * h, 2 * w]]
    if backbone.family == "qwen2_5_vl":  # 2 frames per temporal patch, 0.4 s apart
        assert prepared.inputs["second_per_grid_ts"].tolist() == pytest.approx([0.8])
    assert ("second_per_grid_ts" in prepared.inputs) == (backbone.family == "qwen2_5_vl")


def test_stored_depths_are_the_models_hidden_states(backbone, clip):
    """Depth i is output_hidden_states[i], plus, for Qwen3-VL, the DeepStack vision features
    the model adds to the video positions after each of its first blocks: transformers records
    a block's output before that addition, extraction stores what the next block reads."""
    prepared = backbone.prepare(clip)
    hooked = [layer[0] for layer in all_layers(backbone, [prepared])]
    inputs, _ = backbone.collate([prepared])
    model = backbone.model.model
    with torch.inference_mode():
        reference = backbone.model(**inputs, output_hidden_states=True).hidden_states
        injected = []
        if backbone.family.startswith("qwen3_vl"):
            features = model.get_video_features(
                inputs["pixel_values_videos"], inputs["video_grid_thw"]
            )
            injected = [torch.cat(feature) for feature in features.deepstack_features]
    n = backbone.num_layers
    assert len(hooked) == len(reference) == n + 1
    assert len(injected) == (2 if backbone.family.startswith("qwen3_vl") else 0)
    video = prepared.spans.video_positions()
    for layer in range(n):
        expected = reference[layer][0].clone()
        if 1 <= layer <= len(injected):
            expected[video] += injected[layer - 1]
            assert not torch.equal(expected, reference[layer][0])
        torch.testing.assert_close(hooked[layer], expected, rtol=0, atol=0)
    # The model's last entry is after the final norm; our layer n is the raw residual stream.
    final_norm = model.language_model.norm
    torch.testing.assert_close(final_norm(hooked[n]), reference[n][0], rtol=0, atol=0)


# (d) a padded batch gives each item's states alone ---------------------------------------------


def test_batch_equals_single_items(backbone):
    items = [
        random_item("A short title.", n_frames=4, height=60, width=90, seed=3),
        random_item("A much longer title about a cartoon sailor on a ship.", 3, 100, 70, 4),
    ]
    prepared = [backbone.prepare(item) for item in items]
    assert prepared[0].spans.video_grid != prepared[1].spans.video_grid
    batched = all_layers(backbone, prepared)
    worst = 0.0
    for row, item in enumerate(prepared):
        single = all_layers(backbone, [item])
        length = item.inputs["input_ids"].shape[1]
        for b, s in zip(batched, single):
            worst = max(worst, (b[row, :length] - s[0]).abs().max().item())
    print(f"{backbone.family}: batch vs single max abs diff {worst:.2e}")
    assert worst < 1e-6  # states are ~0.1: this is float32 rounding


# (e) generation --------------------------------------------------------------------------------


def test_generate_appends_the_greedy_tokens(backbone):
    """(The tiny model emits no end-of-turn token within 4 steps here; a real one may stop
    early, and then `spans.generated` is shorter.)"""
    prepared = backbone.prepare(random_item("Describe this video.", 4, 60, 90, seed=5))
    length = prepared.inputs["input_ids"].shape[1]
    out = backbone.generate(prepared, new_tokens=4)
    assert out.spans.generated == slice(length, length + 4)
    assert out.token_counts == {**prepared.token_counts, "generated": 4}
    assert (out.spans.prompt, out.spans.video) == (prepared.spans.prompt, prepared.spans.video)
    ids = out.inputs["input_ids"]
    assert torch.equal(ids[:, :length], prepared.inputs["input_ids"])
    assert out.inputs["attention_mask"].tolist() == [[1] * (length + 4)]
    assert out.inputs["mm_token_type_ids"][0, length:].tolist() == [0] * 4
    # One forward over prompt + generated reproduces every greedy step: the positions (M-RoPE
    # included) of the appended tokens match those used during decoding. Vision placeholders
    # are never generated (a forward would look for their features).
    inputs, _ = backbone.collate([out])
    with torch.inference_mode():
        logits = backbone.model(**inputs).logits[0, length - 1 : length + 3]
    config = backbone.model.config
    placeholders = [config.image_token_id, config.video_token_id]
    assert not set(ids[0, length:].tolist()) & set(placeholders)
    logits = logits.index_fill(1, torch.tensor(placeholders), float("-inf"))
    assert logits.argmax(-1).tolist() == ids[0, length:].tolist()


def test_generated_tokens_keep_the_positions_they_were_decoded_at(backbone):
    """One forward over prompt + generated tokens computes what decoding computed, even with 32
    frames, where the video's temporal positions run past those of the text after it."""
    prepared = backbone.prepare(random_item("Hi.", 32, 60, 90, seed=8))
    length, new = prepared.inputs["input_ids"].shape[1], 4
    out = backbone.generate(prepared, new_tokens=new)
    one_pass = all_layers(backbone, [out])
    with torch.inference_mode():
        decoded = backbone.model.generate(
            **prepared.inputs,
            do_sample=False,
            max_new_tokens=new,
            output_hidden_states=True,
            return_dict_in_generate=True,
        ).hidden_states
    # Decoding step k (k >= 1) feeds generated token k - 1.
    for step in range(1, new):
        for layer in range(backbone.num_layers):
            torch.testing.assert_close(
                one_pass[layer][0, length + step - 1], decoded[step][layer][0, -1]
            )


# Prompts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["|>", "assistant", "You are a helpful assistant.", "  spaced  ", "émoji 🎬 描述\nline", ""],
)
def test_prompt_span_holds_any_text(backbone, text):
    prepared = backbone.prepare(random_item(text, 2, 56, 56, seed=9))
    ids = prepared.inputs["input_ids"][0]
    assert backbone.tokenizer.decode(ids[prepared.spans.prompt]) == text
    # After <|vision_end|> (Qwen3: the last patch's, then the template's own).
    gap = 2 if backbone.family in QWEN3 else 1
    assert prepared.spans.prompt.start == prepared.spans.video.stop + gap


def test_prepare_rejects_a_prompt_holding_the_video_token(backbone):
    item = random_item(f"sneaky {VIDEO_TOKEN}", 2, 56, 56, seed=6)
    with pytest.raises(LinkedOutError, match="must not contain"):
        backbone.prepare(item)


def test_an_item_longer_than_the_models_positions_is_refused_with_the_way_out(
    backbone, clip, monkeypatch
):
    """Such an item fails alone (the run goes on), its reason saying what makes it fit."""
    prepared = backbone.prepare(clip)
    length = prepared.inputs["input_ids"].shape[1]
    monkeypatch.setattr(backbone, "max_positions", length + 1)
    assert backbone.refuse(prepared, new_tokens=1) is None
    assert backbone.refuse(prepared, new_tokens=2) == (
        f"{length + 2} tokens ({prepared.token_counts['video']} of them video) exceed the "
        f"model's {length + 1} positions: lower --frames or --max-pixels"
    )


# (g) several queries of one video ---------------------------------------------------------------
QUERIES = ("What does this video show?", "Describe its style and mood.", "Who would enjoy it?")


@pytest.mark.parametrize("position", ["after", "before"])
def test_queries_of_one_video_equal_a_pass_of_each_alone(backbone, clip, position):
    """After the video, the prefix (video included) runs once and each query continues from a
    copy of its keys and values; every query's states equal a full forward of it alone."""
    from dataclasses import replace

    from linkedout.extract.pool import PoolingRecipe

    recipe = PoolingRecipe.make("video-llm", 16, timestamps=backbone.family in QWEN3)
    layers = tuple(range(backbone.num_layers + 1))
    asked = backbone.packer.ask(replace(clip, queries=QUERIES, query_position=position))
    assert (asked.shared is not None) == (position == "after")
    tokens = backbone.asked_states([asked], layers, recipe, 0).tokens[0]
    alone = torch.stack(
        [backbone.pooled_states([p], layers, recipe.pool, 0).tokens[0] for p in asked.queries]
    )
    torch.testing.assert_close(tokens, alone, atol=1e-5, rtol=0)
    video = recipe.video_slot_count
    if position == "after":
        assert all(torch.equal(tokens[0, :, :video], tokens[q, :, :video]) for q in (1, 2))
    else:
        assert not torch.allclose(tokens[0, 1:, :video], tokens[1, 1:, :video])


def test_a_batch_of_videos_with_queries_equals_each_video_alone(backbone, clip):
    """Prefixes of different lengths share one padded pass (per video where a layer is
    recurrent); each video's queries continue from its own cache."""
    from dataclasses import replace

    from linkedout.extract.pool import PoolingRecipe

    recipe = PoolingRecipe.make("video-llm", 16, timestamps=backbone.family in QWEN3)
    layers = tuple(range(backbone.num_layers + 1))
    short = replace(random_item("", 2, 56, 56, 1), queries=QUERIES[:2])
    videos = [backbone.packer.ask(replace(clip, queries=QUERIES)), backbone.packer.ask(short)]
    assert videos[0].shared != videos[1].shared
    together = backbone.asked_states(videos, layers, recipe, 0).tokens
    for asked, tokens in zip(videos, together, strict=True):
        alone = backbone.asked_states([asked], layers, recipe, 0).tokens[0]
        torch.testing.assert_close(tokens, alone, atol=1e-5, rtol=0)
