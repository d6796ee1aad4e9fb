"""What is at a dataset URI before it is opened or created: whether a Lance dataset exists, a
folder that must not become one, and the one-line reason a URI does not open."""

from __future__ import annotations

import time
from pathlib import Path

import lance

from linkedout.errors import LinkedOutError
from linkedout.storage.uri import describe_storage_error, is_local, normalize


def exists(uri: str | Path, storage_options: dict[str, str] | None = None) -> bool:
    """Whether a Lance dataset exists at `uri` (any Lance dataset, LinkedOut's or not)."""
    try:
        lance.dataset(normalize(uri), storage_options=storage_options or None)
    except (ValueError, OSError):
        return False
    return True


def appears(uri: str | Path, storage_options: dict[str, str] | None, wait: float = 5.0) -> bool:
    """Wait up to `wait` seconds for a dataset another process is creating at `uri`."""
    deadline = time.monotonic() + wait
    while not exists(uri, storage_options):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def refuse_foreign_directory(uri: str) -> None:
    # Lance would happily create its folders inside any directory; a typo'd --out must not
    # turn someone's video folder into a dataset.
    if not is_local(uri):
        return
    path = Path(uri.removeprefix("file://"))
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise LinkedOutError(
            f"{path} exists and is not a Lance dataset: choose a new path for the feature dataset"
        )


def not_a_dataset(uri: str, error: Exception, options: dict[str, str]) -> str:
    if is_local(uri):
        path = Path(uri.removeprefix("file://"))
        if not path.exists():
            return (
                f"no feature dataset at {path}: the path does not exist "
                "(check it, or create one with `linkedout extract`)"
            )
        return (
            f"{path} is not a Lance dataset (no _versions folder): "
            "point at a dataset written by `linkedout extract`"
        )
    return f"cannot open a Lance dataset at {uri}: {describe_storage_error(options, error)}"
