"""Versions a run can pin: Lance's own named tags on a feature dataset, and `URI@TAG` /
`URI@VERSION`, which open exactly that version wherever a feature dataset is read.

Every commit to a Lance dataset is a version; a tag names one (`linkedout tag URI NAME`), and
`optimize` keeps every tagged version while it prunes the others, so a version a run was
trained on stays readable while a tag names it.
"""

from __future__ import annotations

import re

import lance

from linkedout.errors import LinkedOutError, first_line

TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,99}")
"""A tag: a letter, then letters, digits, `.`, `_` or `-` (all digits would read as a version
number after `@`)."""

Pin = int | str | None
"""A version number, a tag name, or None (the newest version)."""


def split_pin(uri: str) -> tuple[str, Pin]:
    """`URI@TAG` or `URI@VERSION` -> (URI, the pin); a URI without one -> (URI, None). Only an
    `@` after the last `/` pins, so `s3://user@host/...` stays whole."""
    head, at, pin = uri.rpartition("@")
    if not at or "/" in pin or not head or not pin:
        return uri, None
    if pin.isdigit():
        return head, int(pin)
    if not TAG_NAME.fullmatch(pin):
        raise LinkedOutError(
            f"{uri!r} ends in @{pin}, which is neither a version number nor a tag name (a "
            "letter, then letters, digits, '.', '_' or '-')"
        )
    return head, pin


def check_tag_name(name: str) -> None:
    if not TAG_NAME.fullmatch(name):
        raise LinkedOutError(
            f"tag name {name!r} must start with a letter and hold only letters, digits, '.', '_' "
            "or '-' (at most 100 characters)"
        )


def tags(dataset: lance.LanceDataset) -> dict[str, int]:
    """Tag name -> the version it names, in version order."""
    listed = dataset.tags.list()
    return dict(sorted(((n, int(t["version"])) for n, t in listed.items()), key=lambda x: x[1]))


def create_tag(dataset: lance.LanceDataset, uri: str, name: str, version: int | None) -> int:
    """Tag `version` (default: the newest) of the dataset `name`; returns the version."""
    check_tag_name(name)
    existing = tags(dataset)
    if name in existing:
        raise LinkedOutError(
            f"{uri} already has a tag {name!r} (version {existing[name]}): choose another name, "
            f"or delete it first (`linkedout tag {uri} {name} --delete`)"
        )
    version = dataset.version if version is None else version
    kept = [int(v["version"]) for v in dataset.versions()]
    if version not in kept:
        raise LinkedOutError(
            f"{uri} has no version {version} (it keeps {_ranges(kept)}): tag one of those"
        )
    try:
        dataset.tags.create(name, version)
    except (ValueError, OSError) as e:
        raise LinkedOutError(f"cannot tag {uri}: {first_line(e)}") from None
    return version


def delete_tag(dataset: lance.LanceDataset, uri: str, name: str) -> int:
    """Delete tag `name`; returns the version it named (which `optimize` may then prune)."""
    existing = tags(dataset)
    if name not in existing:
        raise LinkedOutError(f"{uri} has no tag {name!r} ({describe_tags(existing)})")
    dataset.tags.delete(name)
    return existing[name]


def describe_tags(existing: dict[str, int]) -> str:
    if not existing:
        return "it has no tags: `linkedout tag URI NAME` makes one"
    return "its tags: " + ", ".join(f"{n} (version {v})" for n, v in existing.items())


def missing_pin(uri: str, pin: Pin, dataset: lance.LanceDataset) -> LinkedOutError:
    """The one line for a pin the dataset at `uri` (opened at its newest version) lacks."""
    if isinstance(pin, str):
        return LinkedOutError(f"{uri} has no tag {pin!r} ({describe_tags(tags(dataset))})")
    kept = [int(v["version"]) for v in dataset.versions()]
    return LinkedOutError(
        f"{uri} has no version {pin} (it keeps {_ranges(kept)}; `optimize` prunes versions no "
        "tag names): train on one of those, or on a tag (`linkedout tag`)"
    )


def _ranges(versions: list[int]) -> str:
    """[1, 2, 3, 7] -> "versions 1-3, 7"."""
    if not versions:
        return "no versions"
    parts, start = [], versions[0]
    for prev, cur in zip(versions, [*versions[1:], None], strict=True):
        if cur is None or cur != prev + 1:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = cur
    return ("version " if len(versions) == 1 else "versions ") + ", ".join(parts)
