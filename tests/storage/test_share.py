from __future__ import annotations

import re

import pytest
import torch

from linkedout.errors import LinkedOutError
from linkedout.storage import FailedItem, FeatureStore, FeatureWriter, export
from linkedout.testing.factories import item_tokens, make_manifest, make_rows


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
    copy = export(source.uri, tmp_path / "shared.lance")
    card = (tmp_path / "shared.lance" / "README.md").read_text()
    assert "9 catalog items" in card
    with_linkedout, with_lance, with_duckdb = (
        _run(code) for code in re.findall(r"```python\n(.*?)```", card, re.S)
    )
    assert with_linkedout["tokens"].shape == (9, 3, 4, 8)
    first = with_linkedout["ids"][0]
    assert torch.equal(with_linkedout["one_layer"][0, 0], item_tokens(first, copy.manifest)[0])
    assert with_lance["layer"].shape == (9, 4, 8)
    assert "│     9 │      1 │" in capsys.readouterr().out  # DuckDB: 9 items, 1 failed


def _run(code: str) -> dict:
    scope: dict = {}
    exec(code, scope)
    return scope
