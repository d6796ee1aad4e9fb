"""What to extract: the video files under a folder (with optional titles), or a table of texts.

Tables may be CSV, TSV, JSON Lines or Parquet; every value is read as a string so that item ids
such as `00123` and `123` stay distinct and match the file stems they name.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from linkedout.errors import LinkedOutError, SettingError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
ID_COLUMNS = ("item_id", "item", "id", "video_id")
TEXT_COLUMNS = ("title", "text", "caption", "description")


@dataclass(frozen=True)
class CatalogItem:
    item_id: str
    source: str
    """Absolute path of the video file, or "text" for a text item."""
    title: str | None = None
    """Auxiliary text for a video item; the text itself for a text item."""
    fields: tuple[tuple[str, str], ...] = ()
    """The video's other non-blank columns of the titles table, (column, value), for queries
    that name them."""


@dataclass
class Discovery:
    items: list[CatalogItem]
    """Sorted by item id."""
    duplicates: list[tuple[str, list[str]]] = field(default_factory=list)
    """Item id -> every path that claimed it, in sorted order (the first one is kept)."""
    not_videos: list[str] = field(default_factory=list)
    """Files skipped because their extension is not a video container."""
    untitled: list[str] = field(default_factory=list)
    """Item ids with no title, when a titles table was given."""


# ------------------------------------------------------------------ tables
def read_table(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV, TSV, JSON Lines (or JSON array) or Parquet file, every value a string."""
    path = Path(path)
    if not path.is_file():
        raise LinkedOutError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return _read_parquet(path)
        if suffix in (".jsonl", ".ndjson", ".json"):
            return _read_json(path)
        return _read_delimited(path, suffix)
    except UnicodeDecodeError as e:
        raise LinkedOutError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from e
    except csv.Error as e:
        raise LinkedOutError(f"{path} is not a readable CSV/TSV file: {e}") from e
    except OSError as e:
        raise LinkedOutError(f"cannot read {path}: {e.strerror or e}") from e


def _read_delimited(path: Path, suffix: str) -> list[dict[str, str]]:
    # utf-8-sig: spreadsheet exports often start with a byte-order mark that would glue itself
    # to the first column's name.
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = f.readline()
        f.seek(0)
        tabbed = suffix in (".tsv", ".tab") or header.count("\t") > header.count(",")
        reader = csv.DictReader(f, delimiter="\t" if tabbed else ",")
        # Cells beyond the header land under the key None; missing cells come back as None.
        return [{k.strip(): (v or "") for k, v in row.items() if k is not None} for row in reader]


def _read_json(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise LinkedOutError(f"{path} is not valid JSON: {e.msg} (line {e.lineno})") from e
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LinkedOutError(f"{path} line {number} is not JSON: {e.msg}") from e
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise LinkedOutError(f"{path} record {number} is not a JSON object")
    return [{k: _as_text(v) for k, v in r.items()} for r in records]


def _read_parquet(path: Path) -> list[dict[str, str]]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LinkedOutError(f"{path} is not a readable Parquet file: {reason}") from e
    return [{k: _as_text(v) for k, v in row.items()} for row in table.to_pylist()]


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _pick_column(
    found: list[str], path: Path, given: str | None, candidates: tuple[str, ...], setting: str
) -> str:
    by_lower = {name.lower(): name for name in found}
    if given is not None:
        if given in found:
            return given
        if given.lower() in by_lower:
            return by_lower[given.lower()]
        raise SettingError(setting, given, f"{path} has no such column (found: {', '.join(found)})")
    for name in candidates:
        if name in by_lower:
            return by_lower[name]
    raise LinkedOutError(
        f"{path} has none of the columns {', '.join(candidates)} (found: {', '.join(found)}): "
        f"name the right one with `{setting}`"
    )


@dataclass(frozen=True)
class TitleTable:
    """A titles table read once: each item's title, and its other columns for queries."""

    titles: dict[str, str]
    """Item id -> title; blank titles left out (those items count as untitled), the first
    row of a repeated id kept."""
    columns: list[str]
    """The columns besides the id and the title."""
    fields: dict[str, tuple[tuple[str, str], ...]]
    """Item id -> its non-blank (column, value) of `columns`."""


def _keyed_rows(
    path: str | Path, id_column: str | None, text_column: str | None
) -> tuple[list[tuple[str, dict[str, str]]], str, str]:
    """(item id, row) per row of the table, ids stripped (a blank id is an error), and the
    id and text columns found."""
    path = Path(path)
    rows = read_table(path)
    if not rows:
        raise LinkedOutError(f"{path} holds no rows")
    found = list(rows[0])
    id_key = _pick_column(found, path, id_column, ID_COLUMNS, "id_column")
    text_key = _pick_column(found, path, text_column, TEXT_COLUMNS, "text_column")
    keyed = []
    for number, row in enumerate(rows, 1):
        item_id = row.get(id_key, "").strip()
        if not item_id:
            raise LinkedOutError(f"{path} row {number} has an empty {id_key!r}")
        keyed.append((item_id, row))
    return keyed, id_key, text_key


def _id_and_text(
    path: str | Path, id_column: str | None, text_column: str | None
) -> list[tuple[str, str]]:
    """(item id, text) per row of the table, ids stripped; a blank id is an error."""
    keyed, _, text_key = _keyed_rows(path, id_column, text_column)
    return [(item_id, row.get(text_key, "")) for item_id, row in keyed]


def read_titles(
    path: str | Path, *, id_column: str | None = None, text_column: str | None = None
) -> dict[str, str]:
    """Item id -> title. Blank titles are left out (those items count as untitled); when an id
    repeats, its first title is kept."""
    return read_title_table(path, id_column=id_column, text_column=text_column).titles


def read_title_table(
    path: str | Path, *, id_column: str | None = None, text_column: str | None = None
) -> TitleTable:
    keyed, id_key, text_key = _keyed_rows(path, id_column, text_column)
    columns = [c for c in (keyed[0][1] if keyed else {}) if c not in (id_key, text_key)]
    titles: dict[str, str] = {}
    fields: dict[str, tuple[tuple[str, str], ...]] = {}
    for item_id, row in keyed:
        text = row.get(text_key, "").strip()
        if text:
            titles.setdefault(item_id, text)
        values = tuple((c, row[c].strip()) for c in columns if row.get(c, "").strip())
        fields.setdefault(item_id, values)
    return TitleTable(titles, columns, fields)


def read_texts(
    path: str | Path, *, id_column: str | None = None, text_column: str | None = None
) -> list[CatalogItem]:
    """One text item per row, in the table's order.

    Blank texts are kept: the pipeline records them as failures, so they show up in `info`
    rather than vanishing.
    """
    pairs = _id_and_text(path, id_column, text_column)
    seen: set[str] = set()
    repeated: list[str] = []
    for item_id, _ in pairs:
        if item_id in seen and item_id not in repeated:
            repeated.append(item_id)
        seen.add(item_id)
    if repeated:
        shown = ", ".join(repeated[:5]) + (", ..." if len(repeated) > 5 else "")
        raise LinkedOutError(
            f"{path}: {len(repeated)} item id(s) appear more than once ({shown}): "
            "ids must be unique"
        )
    return [CatalogItem(item_id, "text", title=text) for item_id, text in pairs]


# ------------------------------------------------------------------ videos
def discover_videos(
    root: str | Path,
    titles: dict[str, str] | None = None,
    fields: dict[str, tuple[tuple[str, str], ...]] | None = None,
) -> Discovery:
    """Every video file under `root` (recursively, hidden files and folders skipped).

    The item id is the file name without its extension. When two files share one, the first in
    sorted path order is kept and the clash reported.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SettingError("videos", str(root), "no such directory: pass a folder of video files")
    root = root.resolve()
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(folder, n) for n in names if not n.startswith(".")]
    files.sort()

    claims: dict[str, list[str]] = {}
    not_videos = []
    for file in files:
        if file.suffix.lower() in VIDEO_EXTENSIONS:
            claims.setdefault(file.stem, []).append(str(file))
        else:
            not_videos.append(str(file))
    if not claims:
        raise LinkedOutError(
            f"no video files under {root} (looked for {', '.join(VIDEO_EXTENSIONS)}, "
            "any letter case)"
        )

    items = [
        CatalogItem(item_id, paths[0], (titles or {}).get(item_id), (fields or {}).get(item_id, ()))
        for item_id, paths in sorted(claims.items())
    ]
    return Discovery(
        items=items,
        duplicates=[(i, paths) for i, paths in sorted(claims.items()) if len(paths) > 1],
        not_videos=not_videos,
        untitled=[i.item_id for i in items if i.title is None] if titles is not None else [],
    )
