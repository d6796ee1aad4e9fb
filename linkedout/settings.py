"""Typed settings: the config dataclasses are the one place a setting is defined.

A setting is a dataclass field. Its attribute docstring is its documentation (and the CLI's
`--help`), its default the only default, and a `Literal[...]` type its choices, checked by
`check_choices` from the class's `__post_init__`. `setting(...)` adds what only the command line
needs: another flag name, a short alias, and the text form a value takes on the command line
(`--shard 0/4` for the tuple (0, 4)). `linkedout.cli_options` turns such a class into options.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import textwrap
import typing
from collections.abc import Callable
from typing import Any

from linkedout.errors import SettingError

MISSING = dataclasses.MISSING


def setting(
    default: Any = MISSING,
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    flag: str | None = None,
    short: str | None = None,
    cli_type: Any = None,
    parse: Callable[[Any], Any] | None = None,
    help: str | None = None,
    argument: bool = False,
) -> Any:
    """A dataclass field with command-line facts: `flag` (default: the name with dashes),
    `short` (e.g. "-o"), and `cli_type` + `parse` when the command line spells the value in
    another type than the field's (parse turns the former into the latter); `help` stands in
    for a docstring (a setting shared by several configs, documented once); `argument` makes
    it positional (`linkedout info URI`), in field order."""
    metadata = {
        "flag": flag,
        "short": short,
        "cli_type": cli_type,
        "parse": parse,
        "help": help,
        "argument": argument,
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


@functools.cache
def docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal after each field), as litgpt's
    jsonargparse reads them, else the setting's `help`: {field: text, whitespace collapsed}."""
    found = {f.name: f.metadata["help"] for f in dataclasses.fields(cls) if f.metadata.get("help")}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # classes without source (built in a REPL)
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                found[node.target.id] = " ".join(after.value.value.split())
    return found


@functools.cache
def types(cls: type) -> dict[str, Any]:
    """Field types with the postponed annotations resolved."""
    return typing.get_type_hints(cls)


def choices(annotation: Any) -> tuple[str, ...] | None:
    """The values of a `Literal[...]` (also inside `Literal[...] | None`), else None."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            return typing.get_args(arg)
    return None


def check_choices(config: object) -> None:
    """Refuse a value outside its field's `Literal[...]`, naming the setting."""
    for f in dataclasses.fields(config):
        allowed = choices(types(type(config))[f.name])
        value = getattr(config, f.name)
        if allowed and value is not None and value not in allowed:
            raise SettingError(f.name, value, f"use {', '.join(map(str, allowed))}")


def at_least(config: object, name: str, low: float, reason: str) -> None:
    """Refuse `config.name` below `low`, or NaN or infinite (None passes: it means "the
    default"). NaN compares false with everything, so without the check it passes every bound."""
    finite(config, name)
    value = getattr(config, name)
    if value is not None and value < low:
        raise SettingError(name, value, reason)


def finite(config: object, name: str) -> None:
    """Refuse `config.name` when it is NaN or infinite (None passes)."""
    value = getattr(config, name)
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(name, value, "give a finite number")


def comma_list(text: str) -> tuple[str, ...]:
    """`a, b,,c` on the command line -> ("a", "b", "c"): blanks between commas ignored."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def names_of(text: str | list[str] | None) -> list[str]:
    """`a,b` on the command line -> ["a", "b"] (none given: [])."""
    if text is None:
        return []
    if isinstance(text, list):
        return text
    return list(comma_list(text))


def depths_of(text: str | list[int] | None) -> list[int]:
    """`4,8` on the command line -> [4, 8] (none given: []): stored depths, as the manifest
    numbers them (`linkedout info` lists them)."""
    if text is None:
        return []
    if isinstance(text, list):
        return text
    parts = comma_list(text)
    if not all(p.isdigit() for p in parts):
        raise SettingError(
            "layers", text, "write stored depths as 4,8 (`linkedout info` lists them)"
        )
    depths = [int(p) for p in parts]
    if len(set(depths)) != len(depths):
        raise SettingError("layers", text, "names a depth twice")
    return depths
