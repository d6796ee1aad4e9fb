"""The settings of the feature-dataset commands (`info`, `tag`, `export`, `optimize`); their options
are generated from these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from linkedout.errors import SettingError
from linkedout.settings import at_least, check_choices, depths_of, names_of, setting
from linkedout.storage.uri import parse_storage_options, storage_options_setting


@dataclass(frozen=True)
class TagConfig:
    """Which version of a feature dataset `linkedout tag` names, or which tag it deletes."""

    uri: str = setting(argument=True, help="Feature dataset: a local path or s3://bucket/path.")
    name: str = setting(
        argument=True,
        help="Tag name: a letter, then letters, digits, '.', '_' or '-'. Train on the version "
        "it names with --features URI@NAME.",
    )
    version: int | None = None
    """Version to tag (default: the newest; `linkedout info` lists them)."""
    delete: bool = False
    """Delete the tag instead (the version stays until `optimize` prunes it)."""
    storage_options: dict[str, str] = storage_options_setting()

    def __post_init__(self) -> None:
        at_least(self, "version", 1, "versions count from 1")
        if self.delete and self.version is not None:
            raise SettingError("version", self.version, "is not used with --delete: drop it")


@dataclass(frozen=True)
class InfoConfig:
    """What `linkedout info` shows."""

    uri: str = setting(argument=True, help="Feature dataset: a local path or s3://bucket/path.")
    storage_options: dict[str, str] = storage_options_setting()
    failures: int = 10
    """How many failed items to list."""

    def __post_init__(self) -> None:
        at_least(self, "failures", 0, "list 0 or more failed items")


@dataclass(frozen=True)
class VerifyConfig:
    """Which feature dataset `linkedout verify` checks."""

    uri: str = setting(
        argument=True,
        help="Feature dataset: a local path or s3://bucket/path; URI@TAG or URI@VERSION "
        "checks that version.",
    )
    storage_options: dict[str, str] = storage_options_setting()


@dataclass(frozen=True)
class ExportConfig:
    """What `linkedout export` copies, and where."""

    src: str = setting(argument=True, help="Feature dataset to copy (path or URI).")
    dest: str = setting(
        argument=True, help="Where to put the copy: a new path or s3://bucket/path."
    )
    storage_options: dict[str, str] = storage_options_setting()
    src_storage_options: dict[str, str] = setting(
        default_factory=dict,
        flag="src-storage-option",
        cli_type=list[str] | None,
        parse=parse_storage_options,
        help="KEY=VALUE for the source only; repeatable.",
    )
    layers: list[int] = setting(default_factory=list, cli_type=str | None, parse=depths_of)
    """Copy only these stored depths, comma-separated (default: every one): the copy is a
    subset whose manifest names the source and version; `train --layers` reads the same."""
    queries: list[str] = setting(default_factory=list, cli_type=str | None, parse=names_of)
    """Copy only these queries of a multi-query dataset, comma-separated (default: every
    finished one). The first query's column always comes along: it also holds the video slots
    the others share."""
    items: str | None = None
    """A text file of item ids, one per line: copy only those items."""
    license: str | None = None
    """Licence of the data for the card's front matter: a Hugging Face licence id such as
    cc-by-4.0, or other (default: unknown). The backbone's licence and the videos' terms
    decide it, not LinkedOut."""
    where: str | None = None
    """Copy only the rows this Lance SQL filter keeps, e.g. "source LIKE '%/news/%'" or
    "error IS NULL" (not with --items)."""

    def __post_init__(self) -> None:
        if self.items is not None and self.where is not None:
            raise SettingError("items", self.items, "give `items` or `where`, not both")


@dataclass(frozen=True)
class MergeConfig:
    """Which feature datasets `linkedout merge` combines, where, and which row wins a clash."""

    sources: list[str] = setting(
        argument=True,
        help="Feature datasets to merge (paths or URIs; URI@TAG pins one), all of one manifest.",
    )
    out: str = setting(
        short="-o",
        help="A new dataset, or an existing one of the same manifest "
        "to merge into (its rows take part as the first input).",
    )
    prefer: Literal["refuse", "newest", "first"] = "refuse"
    """An item with different features in two inputs: refuse (name the items and stop,
    nothing written), newest (the later extracted_at), first (the earlier input). Features
    always beat a failure, and the same bytes in two inputs are one item."""
    storage_options: dict[str, str] = storage_options_setting()

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class OptimizeConfig:
    """Which dataset `linkedout optimize` compacts, and whether it frees old versions."""

    uri: str = setting(argument=True, help="Feature dataset (path or URI).")
    storage_options: dict[str, str] = storage_options_setting()
    keep_old_versions: bool = False
    """Keep the files of older versions (time travel) instead of freeing them."""
