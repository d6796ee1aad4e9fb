"""`linkedout extract --backend vllm` against the transformers backend, on real clips.

Runs where vLLM imports (`make vllm-env` builds that environment on CPUs; `make test-vllm` runs
these tests there). Each family gets its own engine; one process holds one engine at a time.
"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import pytest
import torch

from linkedout.extract.config import ExtractConfig
from linkedout.extract.defaults import DEFAULT_PROMPT
from linkedout.extract.pipeline import extract
from linkedout.storage import FeatureStore
from tests.factories import clips_folder

vllm = pytest.importorskip(
    "vllm", reason="vLLM is not installed here: `make vllm-env && make test-vllm` runs these"
)

CLIPS = (
    "carphone_pristine.mp4",
    "tests_data_test.avi",
    "bikes.mp4",
    "chaplin.mp4",
    "flipping_a_pancake.mkv",
    "big_buck_bunny_0_30.webm",
)
# fp32 on both sides; the two engines sum attention and matmuls in other orders, so states
# agree to float32 rounding of values around 0.1 (measured: under 2e-7), not bitwise.
TOLERANCE = 1e-5
QUERIES = ("what=What does this video show?", "mood=Describe its style and mood.")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = clips_folder(tmp_path_factory.mktemp("videos"), CLIPS)
    return folder


def _config(videos: Path, model: Path, out: Path, **changes) -> ExtractConfig:
    config = ExtractConfig(
        out=str(out),
        videos=videos,
        model=str(model),
        frames=4,
        max_pixels=28 * 28 * 12,
        layers="all",
        dtype="float32",
        store_dtype="float32",
        tokens_per_layer=8,
    )
    return dataclasses.replace(config, **changes)


def _rows(run: ExtractConfig) -> dict[str, torch.Tensor]:
    store = FeatureStore.open(run.out)
    ids = sorted(store.ids())
    return dict(zip(ids, store.read_tokens(ids), strict=True))


def _free_engine() -> None:
    from vllm.distributed.parallel_state import (
        destroy_distributed_environment,
        destroy_model_parallel,
    )

    gc.collect()
    destroy_model_parallel()
    destroy_distributed_environment()


def _generated_tokens(engine, model: Path, videos: Path) -> dict[str, list[list[int]]]:
    """Each backend's greedy tokens for the same packed clips."""
    from linkedout.extract.backbones import load_backbone
    from linkedout.extract.backbones.base import ItemInput
    from linkedout.extract.decode import decode_video
    from linkedout.extract.queries import fill as fill_prompt

    reference = load_backbone(str(model), dtype="float32", max_pixels=28 * 28 * 12)
    items = []
    for clip in CLIPS:
        decoded = decode_video(videos / clip, 4)
        items.append(ItemInput(fill_prompt(DEFAULT_PROMPT, None), decoded.frames, decoded.seconds))
    out: dict[str, list[list[int]]] = {"transformers": [], "vllm": []}
    for item in items:
        prepared = reference.generate(reference.prepare(item), 5)
        out["transformers"].append(
            prepared.inputs["input_ids"][0, prepared.spans.generated].tolist()
        )
    for prepared, _ in engine.states([engine.prepare(item) for item in items], (1,), 5):
        out["vllm"].append(prepared.inputs["input_ids"][0, prepared.spans.generated].tolist())
    return out


@pytest.fixture(scope="module")
def qwen2_runs(checkpoints, videos, tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen2_vl")
    model = checkpoints["qwen2_vl"]
    runs = {
        "transformers": _config(videos, model, root / "hf.lance", new_tokens=3),
        "vllm_batch": _config(
            videos, model, root / "vllm6.lance", backend="vllm", batch_size=6, new_tokens=3
        ),
        "vllm_single": _config(
            videos, model, root / "vllm1.lance", backend="vllm", batch_size=1, new_tokens=3
        ),
    }
    for position in ("after", "before"):  # two queries, each its own request in vLLM
        asked = {"query": list(QUERIES), "query_position": position, "new_tokens": 3}
        runs[f"transformers_{position}"] = _config(
            videos, model, root / f"hf-{position}.lance", **asked
        )
        runs[f"vllm_{position}"] = _config(
            videos, model, root / f"vllm-{position}.lance", backend="vllm", batch_size=6, **asked
        )
    from linkedout.extract.backbones import load_backbone

    engine = load_backbone(str(model), dtype="float32", max_pixels=28 * 28 * 12, backend="vllm")
    summaries = {}
    for name, config in runs.items():
        summaries[name] = extract(config, backbone=None if name == "transformers" else engine)
    # An item longer than the engine takes: one clip gets a long title, the engine a short limit.
    titles = root / "titles.csv"
    titles.write_text("item_id,title\nbikes," + "an extremely long winded title " * 12 + "\n")
    engine.max_model_len = 200
    too_long = dataclasses.replace(
        runs["vllm_batch"], out=str(root / "too_long.lance"), titles=titles
    )
    summaries["too_long"] = extract(too_long, backbone=engine)
    runs["too_long"] = too_long
    generated = _generated_tokens(engine, model, videos)
    del engine
    _free_engine()
    return runs, summaries, generated


def test_vllm_rows_equal_the_transformers_rows(qwen2_runs):
    runs, summaries, _ = qwen2_runs
    assert summaries["vllm_batch"].new == len(CLIPS)
    reference, served = _rows(runs["transformers"]), _rows(runs["vllm_batch"])
    assert sorted(reference) == sorted(served) == sorted(Path(c).stem for c in CLIPS)
    for item_id, tokens in reference.items():
        assert (served[item_id] - tokens).abs().max() < TOLERANCE, item_id
        assert tokens.abs().max() > 100 * TOLERANCE  # the comparison is not between zeros


@pytest.mark.parametrize("position", ["after", "before"])
def test_several_queries_give_the_transformers_rows(qwen2_runs, position):
    runs, summaries, _ = qwen2_runs
    assert summaries[f"vllm_{position}"].new == len(CLIPS)
    ours = FeatureStore.open(runs[f"vllm_{position}"].out)
    reference = FeatureStore.open(runs[f"transformers_{position}"].out)
    ids = sorted(reference.ids())
    for name in ("what", "mood"):
        expected = reference.read_tokens(ids, query=name)
        assert (ours.read_tokens(ids, query=name) - expected).abs().max() < TOLERANCE


def test_generated_tokens_and_counts_are_the_transformers_ones(qwen2_runs):
    runs, _, generated = qwen2_runs
    assert generated["vllm"] == generated["transformers"]
    assert all(len(tokens) >= 1 for tokens in generated["vllm"])
    tables = [
        FeatureStore.open(runs[name].out).dataset.to_table(columns=["item_id", "token_counts"])
        for name in ("transformers", "vllm_batch")
    ]
    counts = [dict(zip(t["item_id"].to_pylist(), t["token_counts"].to_pylist())) for t in tables]
    assert counts[0] == counts[1]
    assert all(c["generated"] >= 1 for c in counts[0].values())


def test_a_batch_of_six_gives_the_rows_of_six_single_requests(qwen2_runs):
    runs, _, _ = qwen2_runs
    batched, single = _rows(runs["vllm_batch"]), _rows(runs["vllm_single"])
    for item_id, tokens in single.items():
        assert (batched[item_id] - tokens).abs().max() < TOLERANCE, item_id


def test_an_item_longer_than_the_engine_takes_fails_alone(qwen2_runs):
    runs, summaries, _ = qwen2_runs
    assert (summaries["too_long"].new, summaries["too_long"].failed) == (len(CLIPS) - 1, 1)
    (failure,) = FeatureStore.open(runs["too_long"].out).failures()
    assert failure.item_id == "bikes" and "exceed the vLLM engine's 200" in failure.error


def test_the_manifest_records_the_backend(qwen2_runs):
    runs, _, _ = qwen2_runs
    provenance = FeatureStore.open(runs["vllm_batch"].out).manifest.provenance
    assert provenance["backend"] == "vllm" and provenance["vllm"] == vllm.__version__
    hf = dataclasses.asdict(FeatureStore.open(runs["transformers"].out).manifest)
    served = dataclasses.asdict(FeatureStore.open(runs["vllm_batch"].out).manifest)
    hf.pop("provenance"), served.pop("provenance")
    assert hf == served  # how the rows were made is the same; only who ran them differs


def test_qwen2_5_vl_rows_equal_where_transformers_places_positions_as_qwen_does(
    qwen2_runs, checkpoints, videos, tmp_path
):
    """Qwen2.5-VL spaces a video's temporal positions by its seconds per frame pair. After the
    video, Qwen's reference code (and vLLM) continue text at the largest position + 1;
    transformers 5 continues at the largest *spatial* one, so the prompt's positions differ
    wherever the scaled time axis is the longer one. With two frames (one temporal patch) the
    two rules agree, and so must the rows."""
    model = checkpoints["qwen2_5_vl"]
    hf = _config(videos, model, tmp_path / "hf.lance", frames=2, new_tokens=2)
    served = dataclasses.replace(hf, out=str(tmp_path / "vllm.lance"), backend="vllm", batch_size=6)
    extract(hf)
    extract(served)
    _free_engine()
    reference, rows = _rows(hf), _rows(served)
    assert sorted(reference) == sorted(rows)
    for item_id, tokens in reference.items():
        assert (rows[item_id] - tokens).abs().max() < TOLERANCE, item_id


def test_vllm_runs_inside_the_ray_pipeline_one_engine_per_worker(qwen2_runs, videos, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is in the distributed extra")
    from linkedout.extract.config import RayOptions

    runs, _, _ = qwen2_runs
    config = dataclasses.replace(
        runs["vllm_batch"], out=str(tmp_path / "ray.lance"), engine="ray", ray=RayOptions()
    )
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        summary = extract(config)
    finally:
        ray.shutdown()
    assert summary.new == len(CLIPS)
    reference, served = _rows(runs["transformers"]), _rows(config)
    for item_id, tokens in reference.items():
        assert (served[item_id] - tokens).abs().max() < TOLERANCE, item_id
    provenance = FeatureStore.open(config.out).manifest.provenance
    assert (provenance["backend"], provenance["engine"]) == ("vllm", "ray")
    assert provenance["vllm"] == vllm.__version__


def test_qwen3_vl_rows_equal_with_timestamps_and_deepstack(
    qwen2_runs, checkpoints, videos, tmp_path
):
    """Qwen3-VL: vLLM writes the `<t seconds>` markers itself from the frames' times we give it
    (its expansion must equal our packer's ids, checked per item), and DeepStack adds vision
    features between the first blocks, which both backends' hooks read as the next block's
    input. Rows, generated tokens included, must agree as Qwen2-VL's do."""
    model = checkpoints["qwen3_vl"]
    hf = _config(videos, model, tmp_path / "hf.lance", new_tokens=2)
    served = dataclasses.replace(hf, out=str(tmp_path / "vllm.lance"), backend="vllm", batch_size=6)
    extract(hf)
    summary = extract(served)
    _free_engine()
    assert (summary.new, summary.failed) == (len(CLIPS), 0)
    reference, rows = _rows(hf), _rows(served)
    assert sorted(reference) == sorted(rows)
    for item_id, tokens in reference.items():
        assert (rows[item_id] - tokens).abs().max() < TOLERANCE, item_id
    tables = [
        FeatureStore.open(run.out).dataset.to_table(columns=["item_id", "token_counts"])
        for run in (hf, served)
    ]
    counts = [dict(zip(t["item_id"].to_pylist(), t["token_counts"].to_pylist())) for t in tables]
    assert counts[0] == counts[1]
    assert "timestamp" in FeatureStore.open(served.out).manifest.pooling
