"""Named queries: the questions a Video LLM is asked of every video (`--query`, `--queries`).

A query is a name and a text. The name becomes part of the dataset's layout (the column of that
query's slots, `query_<name>`), so it is a short lower-case identifier; the text may hold
`{title}` (filled per video from `--titles`; lines holding it are dropped for untitled videos).
Any other column of the titles table may be named the same way (`{channel}`). One query, named
`default`, is what `--prompt` gives when no query is named.

A query file is YAML (`name: text` pairs, or a list of `{name, text}` mappings) or JSONL (one
`{"name": ..., "text": ...}` object per line).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from linkedout.errors import LinkedOutError

DEFAULT_QUERY = "default"
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Query:
    name: str
    text: str


def check_queries(queries: list[Query], origin: str) -> list[Query]:
    """Refuse bad names, empty texts, repeated names and unknown `{fields}`, one line each."""
    seen: set[str] = set()
    for q in queries:
        if not NAME.fullmatch(q.name):
            raise LinkedOutError(
                f"{origin}: query name {q.name!r} is not a short lower-case identifier (a-z, "
                "0-9, _; at most 32, starting with a letter): it names the query's column"
            )
        if q.name in seen:
            raise LinkedOutError(f"{origin}: query name {q.name!r} is given twice: rename one")
        seen.add(q.name)
        if not q.text.strip():
            raise LinkedOutError(f"{origin}: query {q.name!r} is empty: give it a question")
    return queries


def named_fields(text: str) -> list[str]:
    """The `{field}` names a query text holds, in order."""
    return list(dict.fromkeys(_FIELD.findall(text)))


def check_fields(queries: list[Query], columns: list[str] | None, titles: str | None) -> None:
    """Refuse a query naming a field no video has: neither `title` nor a column of the titles
    table (`columns`; None when no table is given)."""
    for q in queries:
        for name in named_fields(q.text):
            if name == "title" or (columns is not None and name in columns):
                continue
            if columns is None:
                raise LinkedOutError(
                    f"query {q.name!r} names {{{name}}}: pass --titles with a {name!r} column"
                )
            raise LinkedOutError(
                f"query {q.name!r} names {{{name}}}, a column {titles} lacks (it has: "
                f"{', '.join(columns) or 'no other column'}, and the title)"
            )


def parse_query_flags(values: list[str] | None) -> list[Query]:
    """`--query NAME=TEXT` values -> queries (checked)."""
    queries = []
    for value in values or []:
        name, sep, text = value.partition("=")
        if not sep:
            raise LinkedOutError(
                f"--query {value!r}: write NAME=TEXT, e.g. --query style='Describe its style.'"
            )
        queries.append(Query(name.strip(), text))
    return check_queries(queries, "--query")


def read_query_file(path: Path) -> list[Query]:
    """Queries of a YAML or JSONL file (checked); a parse error names its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LinkedOutError(f"cannot read the query file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise LinkedOutError(f"the query file {path} is not UTF-8 text") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        queries = _jsonl(path, text)
    else:
        queries = _yaml(path, text)
    if not queries:
        raise LinkedOutError(f"the query file {path} holds no query")
    return check_queries(queries, str(path))


def _jsonl(path: Path, text: str) -> list[Query]:
    queries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise LinkedOutError(f"{path}, line {number}: not JSON ({e.msg})") from None
        queries.append(_entry(entry, f"{path}, line {number}"))
    return queries


def _yaml(path: Path, text: str) -> list[Query]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "somewhere"
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise LinkedOutError(f"{path}, {where}: not YAML ({reason})") from None
    if data is None:
        return []
    if isinstance(data, dict):
        return [_entry({"name": k, "text": v}, f"{path}, query {k!r}") for k, v in data.items()]
    if isinstance(data, list):
        return [_entry(e, f"{path}, entry {i + 1}") for i, e in enumerate(data)]
    raise LinkedOutError(
        f"{path}: write `name: text` lines or a list of {{name, text}} entries (got "
        f"{type(data).__name__})"
    )


def _entry(entry: object, where: str) -> Query:
    if not isinstance(entry, dict) or set(entry) != {"name", "text"}:
        raise LinkedOutError(f"{where}: an entry is a mapping of exactly `name` and `text`")
    name, text = entry["name"], entry["text"]
    if not isinstance(name, str) or not isinstance(text, str):
        raise LinkedOutError(f"{where}: `name` and `text` must both be strings")
    return Query(name, text)


def fill(text: str, title: str | None, fields: tuple[tuple[str, str], ...] = ()) -> str:
    """A query's text for one video: `{title}` and the other `{column}` fields filled; the
    lines naming a field the video lacks (no title, a blank column) are dropped."""
    values = dict(fields)
    if title:
        values["title"] = title
    lines = text.splitlines()
    kept = [line for line in lines if all(n in values for n in named_fields(line))]
    if len(kept) < len(lines):
        text = "\n".join(kept).strip()
    # One pass: a filled value is never searched for fields itself.
    return _FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), text)
