from __future__ import annotations

import re

import pytest
import torch
import yaml

from linkedout.errors import LinkedOutError
from linkedout.storage import FailedItem, FeatureStore, FeatureWriter, dataset_card, export
from linkedout.storage.pins import create_tag
from linkedout.testing.factories import item_tokens, make_manifest, make_rows
from tests.cli_harness import run_linkedout


@pytest.fixture
def source(tmp_path):
    store = FeatureStore.create(tmp_path / "src.lance", make_manifest(recipe={"max_pixels": 50176}))
    with FeatureWriter(store, commit_every=4) as w:
        w.extend(make_rows(9, store.manifest))
        w.add(FailedItem("broken", "no video stream", "hb", "/v/broken.avi"))
    return store


def test_export_to_s3_and_read_back(source, s3_bucket):
    bucket, options = s3_bucket
    dest = f"s3://{bucket}/team/features.lance"
    copy = export(source.uri, dest, dest_options=options)
    assert copy.uri == dest

    remote = FeatureStore.open(dest, options)
    assert remote.manifest == source.manifest
    assert remote.ids() == source.ids()
    assert [f.item_id for f in remote.failures()] == ["broken"]
    ids = ["item00008", "item00000"]
    assert torch.equal(remote.read_tokens(ids, layers=[2]), source.read_tokens(ids, layers=[2]))
    info = remote.info()
    assert (info.rows, info.failures) == (9, 1) and info.size_bytes > 0
    assert any("item_id" in i for i in info.indices)

    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=options["aws_endpoint"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    card = s3.get_object(Bucket=bucket, Key="team/features.lance/README.md")["Body"].read().decode()
    assert "tests/tiny-qwen2-vl" in card and "| max_pixels | 50176 |" in card
    assert f"Exported from {source.uri}" in card


def test_export_refuses_to_overwrite_and_s3_round_trips_back(source, s3_bucket, tmp_path):
    bucket, options = s3_bucket
    dest = f"s3://{bucket}/f.lance"
    export(source.uri, dest, dest_options=options)
    with pytest.raises(LinkedOutError, match="already holds a Lance dataset"):
        export(source.uri, dest, dest_options=options)
    back = export(dest, tmp_path / "back.lance", src_options=options)
    assert torch.equal(back.load()[1], source.load()[1])


def test_the_cards_code_runs_against_the_export(source, tmp_path, capsys):
    create_tag(source.dataset, source.uri, "release", None)
    proc = run_linkedout(
        ["export", f"{source.uri}@release", tmp_path / "shared.lance", "--license", "cc-by-4.0"]
    )
    assert proc.returncode == 0, proc.stderr
    copy = FeatureStore.open(tmp_path / "shared.lance")
    card = (tmp_path / "shared.lance" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "cc-by-4.0" and front["size_categories"] == ["n<1K"]
    assert {"linkedout", "video-llm", "lance"} <= set(front["tags"])
    assert "9 catalog items" in card and "failed items (no tokens, `error` says why): 1" in card
    assert "at 3 depths (0, 2, 4), each pooled to 4 token slots of 8 dimensions" in card
    assert "Not recorded: written before LinkedOut kept its extract command" in card
    assert "every item carries blake2b-128 digests" in card and "all 9 verified" in card
    snippets = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(snippets) == 5  # LinkedOut, lance, pyarrow, DuckDB, Polars
    with_linkedout, with_lance, with_pyarrow, with_duckdb, with_polars = map(_run, snippets)
    assert with_linkedout["tokens"].shape == (9, 3, 4, 8)
    first = with_linkedout["ids"][0]
    assert torch.equal(with_linkedout["one_layer"][0, 0], item_tokens(first, copy.manifest)[0])
    assert with_lance["rows"].num_rows == 2 and with_lance["ds"].version == copy.version
    assert with_pyarrow["layer"].shape == (9, 4, 8)
    assert "│     9 │      1 │" in capsys.readouterr().out  # DuckDB: 9 items, 1 failed
    assert with_polars["counts"].row(0) == (9, 1)


def test_the_card_names_the_extract_command_that_made_the_data(tmp_path):
    from linkedout.testing.factories import make_manifest

    command = "linkedout extract --out f.lance --videos clips/ --model org/vlm"
    manifest = make_manifest(provenance={"command": command})
    store = FeatureStore.create(tmp_path / "f.lance", manifest)
    with FeatureWriter(store, commit_every=4) as w:
        w.extend(make_rows(3, store.manifest))
    card = dataset_card(FeatureStore.open(store.uri))
    assert f"```bash\n{command}\n```" in card and "license: unknown" in card


def _run(code: str) -> dict:
    scope: dict = {}
    exec(code, scope)
    return scope
