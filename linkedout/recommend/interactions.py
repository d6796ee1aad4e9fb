"""Reading user-item interaction logs into per-user chronological sequences.

Accepted: CSV, TSV and Parquet tables with one row per interaction, and the MicroLens pairs format
(`user<TAB>item item ...`, one line per user, items already in order). Ids stay strings throughout
so `007` and `7` remain different items, as they are in the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq

from linkedout.errors import LinkedOutError

USER_COLUMNS = ("user", "user_id", "userid", "uid")
ITEM_COLUMNS = ("item", "item_id", "itemid", "video_id", "video", "iid")
TIME_COLUMNS = ("timestamp", "ts", "time", "datetime")

PARQUET_SUFFIXES = (".parquet", ".pq")
# Enough lines to tell a pairs file from a table without reading a large file twice.
_SNIFF_BYTES = 1 << 16


@dataclass(frozen=True)
class InteractionLog:
    """Every user's items in the order they were consumed."""

    users: list[str]
    """One entry per user, in order of first appearance in the source."""
    sequences: list[list[str]]
    """`sequences[i]` is `users[i]`'s item ids, oldest first (ties keep file order)."""
    source: str
    """The path read."""

    def __len__(self) -> int:
        return len(self.users)

    @property
    def num_interactions(self) -> int:
        return sum(len(s) for s in self.sequences)


def read_interactions(
    path: str | Path,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
) -> InteractionLog:
    """Read a CSV, TSV, Parquet or MicroLens pairs log (see the module doc).

    Columns not given are found by name, case-insensitively; a time column, when there is one,
    orders each user's items. Every problem with the file raises a one-line `LinkedOutError`.
    """
    path = Path(path)
    if not path.exists():
        raise LinkedOutError(f"interactions file {path} does not exist")
    if not path.is_file():
        raise LinkedOutError(f"interactions path {path} is not a file")
    if path.stat().st_size == 0:
        raise LinkedOutError(f"interactions file {path} is empty")
    if _is_parquet(path):
        table, columns = _read_parquet(path, user_col, item_col, time_col)
    else:
        head = _head_lines(path)
        delimiter = _delimiter(path, head)
        if delimiter == "\t" and _is_pairs(head, (user_col, item_col, time_col)):
            return _read_pairs(path, user_col, item_col, time_col)
        table, columns = _read_csv(path, delimiter, user_col, item_col, time_col)
    return _group(table, columns, path)


def _is_parquet(path: Path) -> bool:
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return True
    with path.open("rb") as f:
        return f.read(4) == b"PAR1"


def _head_lines(path: Path) -> list[str]:
    with path.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
        truncated = bool(f.read(1))
    lines = head.decode("utf-8-sig", errors="replace").splitlines()
    # The last line of a truncated read is usually cut mid-way.
    return lines[:-1] if truncated and len(lines) > 1 else lines


def _delimiter(path: Path, head: list[str]) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix in (".tsv", ".tab"):
        return "\t"
    first = next((line for line in head if line.strip()), "")
    return "\t" if "\t" in first else ","


def _is_pairs(head: list[str], given: tuple[str | None, ...]) -> bool:
    """`user<TAB>item item ...` lines: two fields, no header row, some line with several items."""
    rows = [line.split("\t") for line in head if line.strip()]
    if not rows or any(len(row) != 2 for row in rows):
        return False
    names = {n.lower() for n in (*USER_COLUMNS, *ITEM_COLUMNS, *TIME_COLUMNS)}
    names |= {n.lower() for n in given if n is not None}
    if any(field.strip().lower() in names for field in rows[0]):
        return False
    return any(len(row[1].split()) > 1 for row in rows)


def _read_pairs(
    path: Path, user_col: str | None, item_col: str | None, time_col: str | None
) -> InteractionLog:
    flags = [f for f, v in (("--user-col", user_col), ("--item-col", item_col)) if v is not None]
    flags += ["--time-col"] if time_col is not None else []
    if flags:
        raise LinkedOutError(
            f"{path} is in the MicroLens pairs format (user<TAB>item item ...), which has no "
            f"named columns; drop {', '.join(flags)}"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise LinkedOutError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    by_user: dict[str, list[str]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        user, tab, items = line.partition("\t")
        if not tab:
            if line.strip():
                raise LinkedOutError(
                    f"{path}:{lineno}: expected 'user<TAB>item item ...', found no tab"
                )
            continue
        ids = items.split()
        if ids:
            # A user listed on several lines continues their sequence in file order.
            by_user.setdefault(user.strip(), []).extend(ids)
    if not by_user:
        raise LinkedOutError(f"{path} holds no interactions (every line lists no items)")
    return InteractionLog(list(by_user), list(by_user.values()), str(path))


@dataclass(frozen=True)
class _Columns:
    user: str
    item: str
    time: str | None

    @property
    def names(self) -> list[str]:
        return [self.user, self.item] + ([self.time] if self.time else [])


def _read_csv(
    path: Path, delimiter: str, user_col: str | None, item_col: str | None, time_col: str | None
) -> tuple[pa.Table, _Columns]:
    parse = pv.ParseOptions(delimiter=delimiter)
    try:
        with pv.open_csv(path, parse_options=parse) as reader:
            header = reader.schema.names
        columns = _find_columns(header, user_col, item_col, time_col, path)
        # Every column as text: type inference would turn `007` into 7.
        convert = pv.ConvertOptions(
            column_types={name: pa.string() for name in columns.names},
            include_columns=columns.names,
        )
        table = pv.read_csv(path, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise LinkedOutError(f"{path}: cannot read as a table: {_one_line(e)}") from None
    return table, columns


def _read_parquet(
    path: Path, user_col: str | None, item_col: str | None, time_col: str | None
) -> tuple[pa.Table, _Columns]:
    try:
        header = pq.read_schema(path).names
        columns = _find_columns(header, user_col, item_col, time_col, path)
        table = pq.read_table(path, columns=columns.names)
    except pa.ArrowInvalid as e:
        raise LinkedOutError(f"{path}: cannot read as Parquet: {_one_line(e)}") from None
    return table, columns


def _find_columns(
    header: list[str],
    user_col: str | None,
    item_col: str | None,
    time_col: str | None,
    path: Path,
) -> _Columns:
    user = _pick(header, user_col, USER_COLUMNS, "user", "--user-col", path)
    item = _pick(header, item_col, ITEM_COLUMNS, "item", "--item-col", path)
    time = _pick(header, time_col, TIME_COLUMNS, "timestamp", "--time-col", path)
    if user is None or item is None:
        role, flag = ("user", "--user-col") if user is None else ("item", "--item-col")
        raise LinkedOutError(
            f"{path}: no {role} column among {_listing(header)}; name it with {flag} COLUMN"
        )
    if user == item:
        raise LinkedOutError(f"{path}: column {user!r} cannot be both the user and the item id")
    return _Columns(user, item, time)


def _pick(
    header: list[str],
    given: str | None,
    candidates: tuple[str, ...],
    role: str,
    flag: str,
    path: Path,
) -> str | None:
    if given is not None:
        if given in header:
            return given
        folded = [name for name in header if name.lower() == given.lower()]
        if len(folded) == 1:
            return folded[0]
        raise LinkedOutError(
            f"{path}: {flag} {given!r} is not a column; the columns are {_listing(header)}"
        )
    matches = [name for name in header if name.lower() in candidates]
    if len(matches) > 1:
        raise LinkedOutError(
            f"{path}: both {matches[0]!r} and {matches[1]!r} look like the {role} column; "
            f"choose one with {flag} COLUMN"
        )
    return matches[0] if matches else None


def _group(table: pa.Table, columns: _Columns, path: Path) -> InteractionLog:
    if table.num_rows == 0:
        raise LinkedOutError(f"{path} holds no interactions (a header and no rows)")
    users = _ids(table, columns.user, path)
    items = _ids(table, columns.item, path)
    encoded = pc.dictionary_encode(users)  # codes follow first appearance
    codes = encoded.indices.to_numpy()
    if columns.time is not None:
        times = _sort_key(table.column(columns.time).combine_chunks(), columns.time, path)
        order = np.lexsort((times, codes))  # stable: equal times keep file order
    else:
        order = np.argsort(codes, kind="stable")
    ordered = items.take(pa.array(order)).to_pylist()
    bounds = np.cumsum(np.bincount(codes, minlength=len(encoded.dictionary))).tolist()
    sequences = [ordered[start:end] for start, end in zip([0, *bounds[:-1]], bounds)]
    return InteractionLog(encoded.dictionary.to_pylist(), sequences, str(path))


def _ids(table: pa.Table, name: str, path: Path) -> pa.Array:
    """A column as non-empty strings (Parquet may store ids as integers)."""
    column = table.column(name).combine_chunks()
    if not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string())
    blank = pc.fill_null(pc.equal(column, ""), True).to_numpy(zero_copy_only=False)
    if blank.any():
        rows = np.flatnonzero(blank)
        raise LinkedOutError(
            f"{path}: column {name!r} is empty on {len(rows)} row(s), the first being data row "
            f"{rows[0] + 1}; fill in or drop those rows"
        )
    return column


def _sort_key(column: pa.Array, name: str, path: Path) -> np.ndarray:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = _parse_times(column, name, path)
    if column.null_count:
        raise LinkedOutError(f"{path}: time column {name!r} has {column.null_count} empty value(s)")
    if not (
        pa.types.is_integer(column.type)
        or pa.types.is_floating(column.type)
        or pa.types.is_temporal(column.type)
    ):
        raise LinkedOutError(
            f"{path}: time column {name!r} holds {column.type}, not numbers or times; "
            "name another with --time-col COLUMN"
        )
    values = column.to_numpy(zero_copy_only=False)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        # NaN sorts last: those rows would silently become validation and test targets.
        rows = np.flatnonzero(~np.isfinite(values))
        raise LinkedOutError(
            f"{path}: time column {name!r} is NaN or infinite on {len(rows)} row(s), the first "
            f"being data row {rows[0] + 1}; give those rows a time or drop them"
        )
    return values


def _parse_times(column: pa.Array, name: str, path: Path) -> pa.Array:
    # Integers first so epoch nanoseconds keep their order exactly; naive ISO times before
    # zoned ones, since a log either carries offsets on every value or on none.
    targets = (pa.int64(), pa.float64(), pa.timestamp("ns"), pa.timestamp("ns", tz="UTC"))
    error: pa.ArrowInvalid | None = None
    for target in targets:
        try:
            return pc.cast(column, target)
        except pa.ArrowInvalid as e:
            error = e
    raise LinkedOutError(
        f"{path}: time column {name!r} is neither numbers nor ISO 8601 times "
        f"({_one_line(error)}); fix it or name another with --time-col COLUMN"
    )


def _listing(header: list[str]) -> str:
    return ", ".join(repr(name) for name in header) if header else "(none)"


def _one_line(error: BaseException | None) -> str:
    return " ".join(str(error).split())
