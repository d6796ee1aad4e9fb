"""`linkedout extract --engine ray` on a Ray cluster this test starts on this machine."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.extract.config import ExtractConfig, RayOptions
from linkedout.extract.pipeline import extract
from linkedout.storage import FeatureStore
from tests.factories import clips_folder

ray = pytest.importorskip(
    "ray", reason="Ray is in the distributed extra: pip install '.[distributed]'"
)

# Small clips only: two model replicas on two cores share them.
CLIPS = ("carphone_pristine.mp4", "tests_data_test.avi", "bikes.mp4", "chaplin.mp4")
runner = CliRunner()


@pytest.fixture(scope="module")
def cluster():
    """Two CPU workers for the replicas, and slots for the decode tasks beside them."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = clips_folder(tmp_path_factory.mktemp("videos"), CLIPS)
    (folder / "broken.mp4").write_text("this is not a video")
    return folder


def _config(videos: Path, model: str, out: str, **changes) -> ExtractConfig:
    config = ExtractConfig(
        out=out,
        videos=videos,
        model=model,
        frames=4,
        max_pixels=28 * 28 * 12,
        layers="all",
        commit_every=2,
    )
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="module")
def local_run(checkpoints, videos, tmp_path_factory) -> Path:
    """The single-process run the cluster runs must equal, on one torch thread as each Ray
    replica is: CPU matmuls may sum in another order with another thread count."""
    out = tmp_path_factory.mktemp("local") / "features.lance"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract(_config(videos, str(checkpoints["qwen2_5_vl"]), str(out)))
    finally:
        torch.set_num_threads(threads)
    return out


def _rows(uri: str, options: dict | None = None) -> dict[str, torch.Tensor]:
    store = FeatureStore.open(uri, options)
    ids = sorted(store.ids())
    return dict(zip(ids, store.read_tokens(ids), strict=True))


def _assert_equal_datasets(a: str, b: str, b_options: dict | None = None) -> None:
    store_a, store_b = FeatureStore.open(a), FeatureStore.open(b, b_options)
    rows_a, rows_b = _rows(a), _rows(b, b_options)
    assert sorted(rows_a) == sorted(rows_b) == sorted(Path(c).stem for c in CLIPS)
    for item_id, tokens in rows_a.items():  # bitwise, not approximately
        assert torch.equal(tokens.view(torch.int16), rows_b[item_id].view(torch.int16)), item_id
    assert [f.item_id for f in store_a.failures()] == [f.item_id for f in store_b.failures()]
    made_a, made_b = (dataclasses.asdict(s.manifest) for s in (store_a, store_b))
    made_a.pop("provenance"), made_b.pop("provenance")  # who ran it may differ; how, not
    assert made_a == made_b


def test_two_ray_workers_write_the_single_process_dataset_and_resume(
    cluster, checkpoints, videos, local_run, tmp_path
):
    out = str(tmp_path / "features.lance")
    config = _config(
        videos, str(checkpoints["qwen2_5_vl"]), out, engine="ray", ray=RayOptions(workers=2)
    )
    summary = extract(config)
    assert (summary.new, summary.failed) == (len(CLIPS), 1)
    _assert_equal_datasets(str(local_run), out)
    provenance = FeatureStore.open(out).manifest.provenance
    assert (provenance["backend"], provenance["engine"]) == ("transformers", "ray")
    assert provenance["ray"] == ray.__version__
    again = extract(config)  # a re-run skips what is stored; the failure is not retried forever
    assert (again.new, again.skipped) == (0, len(CLIPS))


def test_ray_extraction_writes_straight_to_s3(cluster, checkpoints, videos, local_run, s3_bucket):
    bucket, options = s3_bucket
    uri = f"s3://{bucket}/catalog/features.lance"
    args = ["--videos", str(videos), "--model", str(checkpoints["qwen2_5_vl"]), "--out", uri]
    args += ["--frames", "4", "--max-pixels", str(28 * 28 * 12), "--layers", "all", "--quiet"]
    args += ["--engine", "ray", "--workers", "2"]
    for key, value in options.items():
        args += ["--storage-option", f"{key}={value}"]
    result = runner.invoke(app, ["extract", *args])
    assert result.exit_code == 0, result.output + str(result.exception)
    _assert_equal_datasets(str(local_run), uri, options)


def test_without_ray_the_engine_says_how_to_install_it(checkpoints, videos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is absent
    out = tmp_path / "features.lance"
    args = ["--videos", str(videos), "--model", str(checkpoints["qwen2_5_vl"]), "--out", str(out)]
    result = runner.invoke(app, ["extract", *args, "--engine", "ray", "--quiet"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "linkedout[distributed]" in lines[0], lines
    assert not out.exists()
