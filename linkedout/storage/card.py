"""The dataset card: the README.md an export writes beside the data, what a person opening the
folder reads first. Hugging Face's dataset-card form (YAML front matter: licence, size category,
tags), then the manifest in words, the command that made the data, its counts, versions and
tags, and code that opens it with LinkedOut, lance, pyarrow, DuckDB and Polars (a test runs
every snippet)."""

from __future__ import annotations

from linkedout import __version__
from linkedout.storage.columns import digest_column
from linkedout.storage.store import FeatureStore
from linkedout.storage.verify import VerifyReport

# Hugging Face's size_categories values, by upper bound of the item count.
_SIZES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
]


def size_category(rows: int) -> str:
    return next((name for bound, name in _SIZES if rows < bound), "n>100M")


def dataset_card(
    store: FeatureStore,
    source: str | None = None,
    checked: VerifyReport | None = None,
    license: str | None = None,
) -> str:
    """A README for people who receive the dataset: what is in it and how to load it."""
    info = store.info()
    m = info.manifest
    first = m.layers[0]
    recipe = "".join(f"| {k} | {_cell(v)} |\n" for k, v in sorted(m.recipe.items()))
    provenance = "".join(
        f"| {k} | {_cell(v)} |\n" for k, v in sorted(m.provenance.items()) if k != "command"
    )
    schema = "\n".join(f"    {f.name}: {f.type}" for f in info.schema)
    command = m.provenance.get("command")
    made_by = (
        f"```bash\n{command}\n```"
        if command
        else "Not recorded: written before LinkedOut kept its extract command in the manifest."
    )
    queries = (
        "".join(f"- `{name}`: {text}\n" for name, text in m.queries)
        if m.queries
        else f"- {m.prompt or '(text backbone: the item text alone)'}\n"
    )
    tags = (
        ", ".join(f"`{name}` (version {v})" for name, v in sorted(info.tags.items()))
        or "none (`linkedout tag URI NAME` names a version)"
    )
    return f"""---
license: {license or "unknown"}
pretty_name: LinkedOut features of {m.backbone}
size_categories:
- {size_category(info.rows)}
tags:
- linkedout
- video-recommendation
- hidden-states
- {m.backbone_kind}
- lance
---

# LinkedOut feature dataset

Multi-layer hidden states of `{m.backbone}` for {info.rows} catalog items, written by
[LinkedOut](https://pypi.org/project/linkedout/) {m.linkedout_version} (format version
{m.format_version}). {_in_words(m)}
{f"Exported from {source} by linkedout {__version__}." if source else ""}

## How it was made
{made_by}

What every item was asked:
{queries}
| field | value |
|---|---|
| backbone | {m.backbone} |
| backbone revision | {m.backbone_revision or "unknown"} |
| backbone kind | {m.backbone_kind} |
| tapped layers (0 = embeddings) | {", ".join(str(x) for x in m.layers)} |
| tokens per layer | {m.tokens_per_layer} |
| hidden size | {m.hidden_size} |
| dtype | {m.dtype} |
| pooling | {m.pooling or "-"} |
| frames per video | {m.frames_per_video or "-"} |
{recipe}{provenance}
## Contents
- items with features: {info.rows}
- failed items (no tokens, `error` says why): {info.failures}
- integrity: {_integrity(store, checked)}
- size: {info.size_bytes / 2**20:.1f} MiB in {info.fragments} fragment(s)
- version {info.version} ({info.versions} version(s) kept); tags: {tags}

One row per item. `tokens` is a struct with one field per tapped layer, `layer_<index>`, each an
Arrow `fixed_shape_tensor` of shape `[{m.tokens_per_layer}, {m.hidden_size}]`, so one layer can
be read without the others. bfloat16 values are stored as their raw uint16 bits. The manifest
above is stored as JSON in the schema metadata under `linkedout.manifest`.

```
{schema}
```

## Load it
With LinkedOut (any local path or `s3://` URI; `URI@TAG` or `URI@VERSION` pins a version):
```python
from linkedout.storage import FeatureStore
store = FeatureStore.open("{info.uri}")
ids, tokens = store.load()                       # tokens: torch.Tensor [N, L, T, D]
one_layer = store.read_tokens(ids[:4], layers=[{first}])  # reads only that layer
```
With `lance` (one layer of two items, read without the other layers; `version=` takes a tag):
```python
import lance
ds = lance.dataset("{info.uri}")
rows = ds.take([0, 1], columns=["item_id", "tokens.layer_{first}"])
print(ds.version, ds.tags.list())
```
With pyarrow (the tensors of one layer as a NumPy array, failed items filtered out):
```python
import lance, pyarrow.compute as pc
table = lance.dataset("{info.uri}").to_table(columns=["item_id", "error", "tokens.layer_{first}"])
table = table.filter(pc.is_null(table["error"]))
layer = table["tokens.layer_{first}"].combine_chunks().to_numpy_ndarray()   # [N, T, D]
```
With DuckDB, over the scalar columns (DuckDB has no Arrow tensor type):
```python
import duckdb, lance
rows = lance.dataset("{info.uri}").to_table(columns=["item_id", "error", "source", "title"])
duckdb.sql("SELECT count(*) - count(error) AS items, count(error) AS failed FROM rows").show()
```
With Polars, the same (a lance dataset is a pyarrow dataset Polars can scan lazily):
```python
import lance, polars as pl
frame = pl.scan_pyarrow_dataset(lance.dataset("{info.uri}")).select("item_id", "error")
ok = pl.col("error").is_null()
counts = frame.select(ok.sum().alias("items"), (~ok).sum().alias("failed")).collect()
```
"""


def _in_words(m) -> str:
    queries = len(m.named_queries())
    asked = f", each of {queries} queries in its own column" if queries > 1 else ""
    return (
        f"Each item holds a `[layers, tokens, dim]` = `{list(m.shape)}` tensor of {m.dtype} "
        f"values: the backbone's hidden states at {len(m.layers)} depths "
        f"({', '.join(str(x) for x in m.layers)}), each pooled to {m.tokens_per_layer} token "
        f"slots of {m.hidden_size} dimensions{asked}."
    )


def _cell(value: str) -> str:
    return str(value).replace("\n", " ").replace("|", "\\|")


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
