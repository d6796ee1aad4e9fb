"""Share a feature dataset: copy it to any URI and write the dataset card beside the data."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import lance

from linkedout import __version__
from linkedout.errors import LinkedOutError
from linkedout.storage.columns import digest_column
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
from linkedout.storage.verify import VerifyReport, verify

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
) -> FeatureStore:
    """Copy the current (or pinned: `URI@TAG`) version of `src` to `dest` and write its card:
    all of it (data, deletions and the item_id index, as stored), or what `subset` keeps, as
    a new dataset whose manifest names the source and version (subset.py). `dest` must be a
    new (or empty) folder or prefix: an export never overwrites a dataset, nor writes among
    other files."""
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
        card = dataset_card(copy, source=source, checked=checked)
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


def check_copy(copy: FeatureStore, what: str) -> VerifyReport:
    """Verify what an export or merge wrote (every row against its digests): a copy that
    does not hold is an error, never a dataset someone trains on."""
    report = verify(copy)
    if report.corrupt_count or report.missing_count or report.schema:
        raise LinkedOutError(
            f"{what} does not verify ({'; '.join(report.problems())}): the source may be "
            "damaged; run `linkedout verify` on it"
        )
    return report


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


def _integrity(store: FeatureStore, checked: VerifyReport | None) -> str:
    """What the card says about digests: from the check of the copy, else from the schema."""
    digests = digest_column("tokens") in store.dataset.schema.names
    if checked is not None and checked.unverifiable:
        old = (
            "written before LinkedOut stored digests: `linkedout verify` reads and "
            "shape-checks them, but cannot check their bytes"
        )
        if not checked.verified:
            return f"all {checked.unverifiable} items were {old}"
        verified = f"{checked.verified} items carry digests and verified"
        return f"{verified}; {checked.unverifiable} were {old}"
    if digests:
        verified = (
            f", all {checked.verified} verified when this copy was written" if checked else ""
        )
        return (
            "every item carries blake2b-128 digests of its tensors' bytes, per depth "
            f"(`digest_tokens`){verified}; `linkedout verify {store.uri}` checks them again"
        )
    return "written before LinkedOut stored digests: `linkedout verify` cannot check their bytes"


def dataset_card(
    store: FeatureStore, source: str | None = None, checked: VerifyReport | None = None
) -> str:
    """A README for people who receive the dataset: what is in it and how to load it."""
    info = store.info()
    m = info.manifest
    layers = ", ".join(str(x) for x in m.layers)
    first = m.layers[0]
    recipe = "".join(f"| {k} | {v} |\n" for k, v in sorted(m.recipe.items()))
    provenance = "".join(f"| {k} | {v} |\n" for k, v in sorted(m.provenance.items()))
    prompt = (m.prompt or "").replace("\n", " ").replace("|", "\\|")
    schema = "\n".join(f"    {f.name}: {f.type}" for f in info.schema)
    return f"""# LinkedOut feature dataset

Multi-layer hidden states of `{m.backbone}` for {info.rows} catalog items, written by
[LinkedOut](https://pypi.org/project/linkedout/) {m.linkedout_version} (format version
{m.format_version}). Each item holds a `[layers, tokens, dim]` = `{list(m.shape)}` tensor of
{m.dtype} values: the backbone's hidden states at {len(m.layers)} depths, pooled to
{m.tokens_per_layer} token slots per depth.
{f"Exported from {source} by linkedout {__version__}." if source else ""}

## How it was made
| field | value |
|---|---|
| backbone | {m.backbone} |
| backbone revision | {m.backbone_revision or "unknown"} |
| backbone kind | {m.backbone_kind} |
| tapped layers (0 = embeddings) | {layers} |
| tokens per layer | {m.tokens_per_layer} |
| hidden size | {m.hidden_size} |
| dtype | {m.dtype} |
| pooling | {m.pooling or "-"} |
| prompt | {prompt or "-"} |
| frames per video | {m.frames_per_video or "-"} |
{recipe}{provenance}
## Contents
- items with features: {info.rows}
- integrity: {_integrity(store, checked)}
- failed items (no tokens, `error` says why): {info.failures}
- size: {info.size_bytes / 2**20:.1f} MiB in {info.fragments} fragment(s)

One row per item. `tokens` is a struct with one field per tapped layer, `layer_<index>`, each an
Arrow `fixed_shape_tensor` of shape `[{m.tokens_per_layer}, {m.hidden_size}]`, so one layer can
be read without the others. bfloat16 values are stored as their raw uint16 bits. The manifest
above is stored as JSON in the schema metadata under `linkedout.manifest`.

```
{schema}
```

## Load it
With LinkedOut (any local path or `s3://` URI):
```python
from linkedout.storage import FeatureStore
store = FeatureStore.open("{info.uri}")
ids, tokens = store.load()                       # tokens: torch.Tensor [N, L, T, D]
one_layer = store.read_tokens(ids[:4], layers=[{first}])  # reads only that layer
```
With `lance` alone:
```python
import lance
ds = lance.dataset("{info.uri}")
table = ds.to_table(columns=["item_id", "tokens.layer_{first}"], filter="error IS NULL")
layer = table.column("tokens.layer_{first}").combine_chunks().to_numpy_ndarray()   # [N, T, D]
```
With DuckDB, over the scalar columns (DuckDB has no Arrow tensor type):
```python
import duckdb, lance
rows = lance.dataset("{info.uri}").to_table(columns=["item_id", "error", "source", "title"])
duckdb.sql("SELECT count(*) - count(error) AS items, count(error) AS failed FROM rows").show()
```
"""
