"""catalog.lance through its one owner: versions that append and delete, live rows without the
padding row, and a format number that a reader checks."""

from __future__ import annotations

import shutil

import lance
import pytest
import torch

from linkedout.errors import LinkedOutError
from linkedout.recommend.catalog_dataset import (
    FORMAT,
    FORMAT_KEY,
    TRAINED_VERSION,
    CatalogDataset,
    read_run_id,
)

SHAPE = (6, 2, 3)  # rows (padding included), L, r


def _create(path, run_id="run-1") -> tuple[CatalogDataset, torch.Tensor]:
    e = torch.randn(SHAPE)
    names = [f"v{i}" for i in range(1, SHAPE[0])]
    chunks = iter([e[:4], e[4:]])
    return CatalogDataset.create(path, chunks, names, SHAPE, run_id=run_id), e


def test_training_writes_version_one_with_its_run_id_and_format(tmp_path):
    catalog, e = _create(tmp_path / "catalog.lance")
    assert catalog.version == TRAINED_VERSION and catalog.num_rows == SHAPE[0]
    assert catalog.run_id == "run-1" == read_run_id(tmp_path / "catalog.lance")
    schema = lance.dataset(str(tmp_path / "catalog.lance")).schema
    assert schema.metadata[FORMAT_KEY] == str(FORMAT).encode()
    assert torch.equal(catalog.experts(), e)
    rows = torch.tensor([[3, 1], [3, 0]])
    assert torch.equal(catalog.experts_at(rows), e[rows])
    assert torch.equal(catalog.experts_range(2, 5), e[2:5])
    ids, live = catalog.live()
    assert ids == ["v1", "v2", "v3", "v4", "v5"] and torch.equal(live, e[1:])


def test_appends_and_deletes_are_versions_and_version_one_stays(tmp_path):
    path = tmp_path / "catalog.lance"
    catalog, e = _create(path)
    new = torch.randn(2, *SHAPE[1:])
    assert catalog.append(["n1", "n2"], iter([new[:1], new[1:]])) == 2
    assert CatalogDataset(path).delete(["v2", "n1"]) == 3
    assert CatalogDataset.latest_version(path) == 3
    ids, live = CatalogDataset(path).live()
    assert ids == ["v1", "v3", "v4", "v5", "n2"]
    assert torch.equal(live, torch.cat([e[[1, 3, 4, 5]], new[1:]]))
    assert CatalogDataset(path).live_ids() == set(ids)
    trained = CatalogDataset(path, version=TRAINED_VERSION)
    assert trained.live()[0] == [f"v{i}" for i in range(1, 6)]
    assert torch.equal(trained.experts(), e)


def test_an_id_only_catalog_holds_names_alone(tmp_path):
    catalog = CatalogDataset.create(tmp_path / "c.lance", None, ["a", "b"], (3, 0, 0))
    assert not catalog.content and catalog.live() == (["a", "b"], None)


def test_a_catalog_without_the_format_key_is_format_one(tmp_path):
    """Catalogs written before the key existed stay readable."""
    path = tmp_path / "catalog.lance"
    _create(path)
    table = lance.dataset(str(path)).to_table()
    metadata = {k: v for k, v in table.schema.metadata.items() if k != FORMAT_KEY}
    shutil.rmtree(path)
    lance.write_dataset(table.replace_schema_metadata(metadata), str(path))
    assert CatalogDataset(path).run_id == "run-1"


@pytest.mark.parametrize(
    "damage, fragment",
    [
        ("missing", "catalog.lance is missing"),
        ("newer", f"catalog.lance is catalog format {FORMAT + 1}, newer than this linkedout"),
        ("garbage", "catalog.lance is not a readable catalog"),
    ],
)
def test_a_catalog_that_cannot_be_read_is_one_line(tmp_path, damage, fragment):
    path = tmp_path / "catalog.lance"
    if damage == "newer":
        _create(path)
        table = lance.dataset(str(path)).to_table()
        metadata = {**table.schema.metadata, FORMAT_KEY: str(FORMAT + 1).encode()}
        shutil.rmtree(path)
        lance.write_dataset(table.replace_schema_metadata(metadata), str(path))
    elif damage == "garbage":
        path.mkdir()
        (path / "_versions").mkdir()
        (path / "_versions" / "1.manifest").write_bytes(b"not a manifest")
    with pytest.raises(LinkedOutError) as caught:
        CatalogDataset(path)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
