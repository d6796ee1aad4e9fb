"""Share a feature dataset: copy it to any URI and write the dataset card beside the data."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import lance

from linkedout.errors import LinkedOutError
from linkedout.storage.card import dataset_card
from linkedout.storage.location import exists
from linkedout.storage.store import FeatureStore
from linkedout.storage.subset import Subset, write_subset
from linkedout.storage.uri import (
    describe_storage_error,
    is_local,
    list_names,
    normalize,
    write_text,
)
from linkedout.storage.verify import check_copy

CARD_NAME = "README.md"

# The destination check fails fast on an endpoint that does not answer; the copy itself keeps
# Lance's own retries.
_PROBE_OPTIONS = {"client_max_retries": "1", "client_retry_timeout": "15", "connect_timeout": "5s"}


def export(
    src: str | Path,
    dest: str | Path,
    src_options: dict[str, str] | None = None,
    dest_options: dict[str, str] | None = None,
    subset: Subset | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    license: str | None = None,
) -> FeatureStore:
    """Copy the current (or pinned: `URI@TAG`) version of `src` to `dest` and write its card:
    all of it (data, deletions and the item_id index, as stored), or what `subset` keeps, as
    a new dataset whose manifest names the source and version (subset.py). `dest` must be a
    new (or empty) folder or prefix: an export never overwrites a dataset, nor writes among
    other files. `license` goes to the card's front matter (a Hugging Face licence id)."""
    store = FeatureStore.open(src, src_options)
    dest = normalize(dest)
    dest_options = dict(dest_options or {})
    check_destination(dest, dest_options)
    source = f"{store.uri} (version {store.version})"
    created = is_local(dest) and not Path(dest).exists()
    try:
        if subset is not None and subset.selects:
            copy = write_subset(store, dest, subset, dest_options, on_progress)
            source += f", a subset: {copy.manifest.provenance['subset']}"
        else:
            store.dataset.deep_clone(dest, store.version, storage_options=dest_options or None)
            copy = FeatureStore.open(dest, dest_options)
        checked = check_copy(copy, f"the copy at {dest}")
        card = dataset_card(copy, source=source, checked=checked, license=license)
        write_text(dest, CARD_NAME, card, dest_options)
    except (OSError, ValueError) as e:
        _remove_partial(dest, created)
        raise LinkedOutError(
            f"cannot export to {dest}: {describe_storage_error(dest_options, e)}"
        ) from None
    except BaseException:
        _remove_partial(dest, created)
        raise
    return copy


def _remove_partial(dest: str, created: bool) -> None:
    """A failed export leaves nothing behind in a folder it created (a retry would otherwise
    find it holding files)."""
    if created:
        shutil.rmtree(dest, ignore_errors=True)


def check_destination(dest: str, options: dict[str, str], verb: str = "export") -> None:
    """Refuse, before anything is written, a destination that is a file, holds a dataset or
    holds anything else, and one that cannot be reached. `verb` names the command in the
    messages (export, publish)."""
    if is_local(dest):
        path = Path(dest)
        blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise LinkedOutError(f"{blocked} is a file, so {path} cannot be created in it")
        if path.is_file():
            raise LinkedOutError(f"{path} is a file: {verb} to a new folder path")
        if path.is_dir() and any(path.iterdir()):
            if exists(dest, options):
                raise LinkedOutError(_holds_dataset(dest, verb))
            names = sorted(p.name for p in path.iterdir())
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise LinkedOutError(
                f"{path} already holds other files ({shown}): {verb} to a new or empty folder"
            )
        return
    probe = {**_PROBE_OPTIONS, **options}
    try:
        lance.dataset(dest, storage_options=probe)
    except (OSError, ValueError) as e:
        if "not found" not in str(e).lower():
            raise LinkedOutError(
                f"cannot {verb} to {dest}: {describe_storage_error(options, e)}"
            ) from None
    else:
        raise LinkedOutError(_holds_dataset(dest, verb))
    try:
        names = list_names(dest, options)
    except OSError as e:
        raise LinkedOutError(
            f"cannot {verb} to {dest}: {describe_storage_error(options, e)}"
        ) from None
    if names:
        raise LinkedOutError(
            f"{dest} already holds other objects ({', '.join(names[:3])}"
            f"{f' and {len(names) - 3} more' if len(names) > 3 else ''}): "
            f"{verb} to a new or empty prefix"
        )


def _holds_dataset(dest: str, verb: str = "export") -> str:
    return f"{dest} already holds a Lance dataset: {verb} to a new path, or delete it first"
