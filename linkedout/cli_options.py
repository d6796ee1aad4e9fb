"""A typer command whose options are generated from a config dataclass.

`@options_from(ExtractConfig)` over `def extract(config: ExtractConfig, quiet: ...)` gives the
command one option per setting (nested settings groups flattened), with the field's docstring as
its help and the field's default as its default; the command receives the built config, so no
setting is ever copied by hand. Parameters after `config` are options of the command alone (how
to print, not what to compute).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import shlex
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape

from linkedout.settings import MISSING, choices, docs, types

_FLAGS: dict[str, str] = {}
"""Setting name -> its flag, for settings whose flag is not the name with dashes."""


def flag_of(setting: str) -> str:
    """The command-line spelling of a setting (`commit_every` -> `--commit-every`)."""
    return _FLAGS.get(setting, "--" + setting.replace("_", "-"))


@dataclasses.dataclass(frozen=True)
class Option:
    path: tuple[str, ...]
    """Where the value goes in the config: ("ray", "address") is config.ray.address."""
    flag: str
    short: str | None
    cli_type: Any
    default: Any
    help: str
    parse: Callable[[Any], Any] | None
    argument: bool = False
    """Positional (`linkedout info URI`) rather than an option."""

    @property
    def name(self) -> str:
        return self.path[-1]

    def parameter(self) -> inspect.Parameter:
        default = inspect.Parameter.empty if self.default is MISSING else self.default
        if self.argument:
            info = typer.Argument(help=escape(self.help), show_default=False)
        elif self.cli_type is bool and not self.short:  # --ids/--no-ids, as typer's own bools
            info = typer.Option(f"{self.flag}/--no-{self.flag[2:]}", help=escape(self.help))
        else:
            names = [self.flag, *([self.short] if self.short else [])]
            info = typer.Option(*names, help=escape(self.help))
        annotation = Annotated[self.cli_type, info]
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
        )


def options(cls: type) -> list[Option]:
    """One option per leaf setting of `cls`, in field order."""
    found: list[Option] = []
    for f in dataclasses.fields(cls):
        hint = types(cls)[f.name]
        if dataclasses.is_dataclass(hint):  # a settings group: its fields are flags of their own
            found += [dataclasses.replace(o, path=(f.name, *o.path)) for o in options(hint)]
            continue
        meta = f.metadata
        flag = "--" + (meta.get("flag") or f.name.replace("_", "-"))
        if meta.get("argument"):
            flag = f.name.upper()  # how --help and the errors name a positional: RUN
        if flag != flag_of(f.name):
            _FLAGS[f.name] = flag
        cli_type = meta.get("cli_type") or (
            str | None if choices(hint) and type(None) in typing.get_args(hint) else
            str if choices(hint) else hint
        )  # fmt: skip
        default = f.default
        if meta.get("cli_type") is not None and f.default_factory is not MISSING:
            default = None  # e.g. no --storage-option given; `parse` makes the empty value
        found.append(
            Option(
                (f.name,),
                flag,
                meta.get("short"),
                cli_type,
                default,
                docs(cls).get(f.name, ""),
                meta.get("parse"),
                bool(meta.get("argument")),
            )  # fmt: skip
        )
    names = [o.name for o in found]
    if len(set(names)) != len(names):
        raise TypeError(f"{cls.__name__}: two settings share a name in {names}")
    return found


def build(cls: type, values: dict[str, Any], opts: list[Option]) -> Any:
    """The config (nested groups included) from the command line's values."""
    tree: dict[str, Any] = {}
    for o in opts:
        value = values[o.name]
        node = tree
        for part in o.path[:-1]:
            node = node.setdefault(part, {})
        node[o.name] = o.parse(value) if o.parse else value
    return _construct(cls, tree)


def _construct(cls: type, tree: dict[str, Any]) -> Any:
    hints = types(cls)
    kwargs = {
        name: _construct(hints[name], value) if dataclasses.is_dataclass(hints[name]) else value
        for name, value in tree.items()
    }
    return cls(**kwargs)


def options_from(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the command's options are `cls`'s settings plus the command's own."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]
        opts = options(cls)
        clash = {o.name for o in opts} & {p.name for p in own}
        if clash:
            raise TypeError(f"{command.__name__}: {clash} are settings of {cls.__name__}")

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            extra = {p.name: values.pop(p.name) for p in own}
            return command(build(cls, values, opts), **extra)

        run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [o.parameter() for o in opts]
            + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        )
        run.__annotations__ = {}  # typer must read the signature, not `command`'s hints
        del run.__wrapped__  # inspect.signature would otherwise follow it back to `command`
        return run

    return decorate


def command_line(command: str, config: Any, leave_out: frozenset[str] = frozenset()) -> str:
    """The `linkedout COMMAND ...` line that gives `config`: its positionals and every setting
    that differs from its default. Object-store options are left out (they may hold secrets),
    and so are the settings named in `leave_out` (those whose text form this cannot write)."""
    words = ["linkedout", command]
    for o in options(type(config)):
        if o.name in leave_out or o.name == "storage_options":
            continue
        value = functools.reduce(getattr, o.path, config)
        if o.argument:
            words += [str(v) for v in value] if isinstance(value, list) else [str(value)]
            continue
        if value is None or isinstance(value, dict) or value == _default(type(config), o.path):
            continue
        if isinstance(value, bool):
            words.append(o.flag if value else f"--no-{o.flag[2:]}")
        elif isinstance(value, list | tuple):
            repeated = any(typing.get_origin(t) is list for t in typing.get_args(o.cli_type))
            if repeated:
                words += [part for v in value for part in (o.flag, str(v))]
            else:
                words += [o.flag, ",".join(str(v) for v in value)]
        else:
            words += [o.flag, str(value)]
    return shlex.join(words)


def _default(cls: type, path: tuple[str, ...]) -> Any:
    """The default of the setting at `path` (MISSING for a required one)."""
    for name in path[:-1]:
        cls = types(cls)[name]
    f = next(f for f in dataclasses.fields(cls) if f.name == path[-1])
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default
