"""Finding videos in a folder and reading title/text tables."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linkedout.errors import LinkedOutError, SettingError
from linkedout.extract.discover import (
    CatalogItem,
    discover_videos,
    read_table,
    read_texts,
    read_titles,
)
from tests.conftest import shared_data


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


# ------------------------------------------------------------------ videos
def test_discovery_walks_nested_folders_and_reports_what_it_skipped(tmp_path):
    _touch(
        tmp_path,
        "a/cat.mp4",
        "a/b/dog.MKV",
        "c/cat.webm",  # same id as a/cat.mp4, later in path order
        "c/d/e/fish.avi",
        "notes.txt",
        ".cache/hidden.mp4",
        "a/.partial.mp4",
    )
    found = discover_videos(tmp_path, titles={"cat": "A cat", "unused": "nobody"})

    assert [i.item_id for i in found.items] == ["cat", "dog", "fish"]
    assert found.items[0] == CatalogItem("cat", str(tmp_path / "a/cat.mp4"), "A cat")
    assert all(Path(i.source).is_absolute() and Path(i.source).is_file() for i in found.items)
    assert found.duplicates == [
        ("cat", [str(tmp_path / "a/cat.mp4"), str(tmp_path / "c/cat.webm")])
    ]
    assert found.not_videos == [str(tmp_path / "notes.txt")]
    assert found.untitled == ["dog", "fish"]


def test_discovery_without_titles_reports_nothing_untitled(tmp_path):
    _touch(tmp_path, "clip.1.mov", "other.M4V")
    found = discover_videos(tmp_path)
    assert [(i.item_id, i.title) for i in found.items] == [("clip.1", None), ("other", None)]
    assert found.untitled == [] and found.duplicates == [] and found.not_videos == []


def test_discovery_errors_say_what_to_pass(tmp_path):
    with pytest.raises(SettingError, match="videos=.*: no such directory: pass a folder"):
        discover_videos(tmp_path / "nope")
    _touch(tmp_path, "readme.txt", ".hidden/clip.mp4")
    with pytest.raises(LinkedOutError, match=r"no video files under .*\.mp4, \.mkv, \.webm"):
        discover_videos(tmp_path)


# ------------------------------------------------------------------ titles
def test_titles_from_csv_tsv_and_jsonl_with_detected_columns(tmp_path):
    (tmp_path / "t.csv").write_text('item,title\n1,"Hello, world"\n2,Second\n', encoding="utf-8")
    (tmp_path / "t.tsv").write_text("Video_ID\tCaption\n1\tHello, world\n2\tSecond\n")
    (tmp_path / "t.jsonl").write_text(
        json.dumps({"id": 1, "description": "Hello, world"})
        + "\n\n"
        + json.dumps({"id": 2, "description": "Second", "extra": [1]})
        + "\n"
    )
    for name in ("t.csv", "t.tsv", "t.jsonl"):
        assert read_titles(tmp_path / name) == {"1": "Hello, world", "2": "Second"}, name


def test_titles_with_explicit_columns_tab_sniffing_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "export.txt"
    path.write_text("\ufeffvid\theadline\tbody\n007\tBond \n008\t\n", encoding="utf-8")
    titles = read_titles(path, id_column="vid", text_column="Headline")
    # Ids stay text ("007"); blank titles are left out so those items count as untitled.
    assert titles == {"007": "Bond"}


def test_titles_from_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"item_id": [10, 11], "text": ["ten", None]}), path)
    assert read_table(path) == [{"item_id": "10", "text": "ten"}, {"item_id": "11", "text": ""}]
    assert read_titles(path) == {"10": "ten"}


def test_a_missing_column_names_the_columns_found_and_the_flag(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("name,title\na,b\n")
    with pytest.raises(LinkedOutError) as caught:
        read_titles(path)
    message = str(caught.value)
    assert "found: name, title" in message and "`id_column`" in message
    with pytest.raises(
        SettingError, match=r"text_column='caption': .* no such column .*name, title"
    ):
        read_titles(path, id_column="name", text_column="caption")


def test_unreadable_tables_are_one_line_errors(tmp_path):
    bad_json = tmp_path / "t.jsonl"
    bad_json.write_text('{"id": 1, "title": "ok"}\n{"id": 2,\n')
    not_parquet = tmp_path / "t.parquet"
    not_parquet.write_text("item,title\n")
    latin1 = tmp_path / "t.csv"
    latin1.write_bytes("item,title\n1,caf\xe9\n".encode("latin-1"))
    cases = {
        bad_json: "line 2 is not JSON",
        not_parquet: "not a readable Parquet file",
        latin1: "not UTF-8",
        tmp_path / "missing.csv": "no such file",
    }
    for path, reason in cases.items():
        with pytest.raises(LinkedOutError) as caught:
            read_titles(path)
        assert reason in str(caught.value) and "\n" not in str(caught.value), path


# ------------------------------------------------------------------ texts
def test_read_texts_over_the_microlens_titles():
    path = shared_data("microlens-50k", "MicroLens-50k_titles.csv")
    items = read_texts(path)
    assert len(items) == 19220  # every row; MicroLens ids are unique
    with open(path, newline="", encoding="utf-8") as f:
        first = list(itertools.islice(csv.DictReader(f), 50))
    assert items[:50] == [CatalogItem(r["item"], "text", title=r["title"]) for r in first]
    assert items[0].item_id == "1" and items[0].title.startswith("Gu long song")


def test_read_texts_keeps_blank_texts_and_the_table_order(tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text("text,id\nzebra,z\n   ,a\n,m\n")
    items = read_texts(path)
    assert items == [
        CatalogItem("z", "text", "zebra"),
        CatalogItem("a", "text", "   "),
        CatalogItem("m", "text", ""),
    ]


def test_read_texts_refuses_repeated_or_blank_ids(tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text("id,text\n1,a\n2,b\n1,c\n2,d\n3,e\n")
    with pytest.raises(LinkedOutError, match=r"2 item id\(s\) appear more than once \(1, 2\)"):
        read_texts(path)
    path.write_text("id,text\n1,a\n ,b\n")
    with pytest.raises(LinkedOutError, match="row 2 has an empty 'id'"):
        read_texts(path)
