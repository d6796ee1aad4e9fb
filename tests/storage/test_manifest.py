from __future__ import annotations

import pytest

from linkedout.errors import LinkedOutError
from linkedout.storage import FORMAT_VERSION, Manifest
from linkedout.testing.factories import make_manifest


def test_json_round_trip_is_exact():
    m = make_manifest(recipe={"max_pixels": 200704, "new_tokens": 2}, provenance={"engine": "hf"})
    back = Manifest.from_json(m.to_json())
    assert back == m
    assert back.recipe == {"max_pixels": "200704", "new_tokens": "2"}
    assert back.shape == (3, 4, 8)


def test_mismatches_name_recipe_fields_and_ignore_provenance():
    m = make_manifest()
    assert m.mismatches(make_manifest(linkedout_version="2.0", provenance={"engine": "vllm"})) == []
    diffs = m.mismatches(make_manifest(layers=(0, 2), prompt="Describe it."))
    assert [d.split(":")[0] for d in diffs] == ["layers", "query 'default'"]
    assert "stored [0, 2, 4], new [0, 2]" in diffs[0]


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(dtype="int8"), "dtype 'int8' is not one of"),
        (dict(layers=()), "layers is empty"),
        (dict(layers=(1, 1)), "repeat an index"),
        (dict(tokens_per_layer=0), "tokens_per_layer must be >= 1"),
        (dict(backbone_kind="audio"), "backbone_kind 'audio'"),
    ],
)
def test_invalid_manifests_are_refused(change, match):
    with pytest.raises(LinkedOutError, match=match):
        make_manifest(**change)


def test_other_format_versions_are_refused():
    newer = (
        make_manifest()
        .to_json()
        .replace(f'"format_version": {FORMAT_VERSION}', f'"format_version": {FORMAT_VERSION + 1}')
    )
    with pytest.raises(LinkedOutError, match="upgrade linkedout"):
        Manifest.from_json(newer)
    with pytest.raises(LinkedOutError, match="not valid JSON"):
        Manifest.from_json("{oops")


def test_a_reader_of_some_depths_takes_rows_with_more():
    run = make_manifest(layers=(2, 4))
    assert run.mismatches(make_manifest(layers=(0, 2, 4)), reads=[2, 4]) == []
    assert run.mismatches(make_manifest(layers=(0, 2)), reads=[2, 4]) == [
        "layers: read [2, 4], new [0, 2]"
    ]
    assert run.mismatches(make_manifest(layers=(0, 2, 4))) == [
        "layers: stored [2, 4], new [0, 2, 4]"
    ]
