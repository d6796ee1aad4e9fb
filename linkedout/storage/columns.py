"""The dataset's Arrow schema, the rows -> table build and the tensor <-> Arrow conversions.

On-disk layout of one row (format version 1):

    item_id          string, unique        catalog item id (video file stem unless mapped); declared
                                           Lance's (unenforced) primary key, see `PRIMARY_KEY`
    tokens           struct, null=failed   one field per tapped layer, `layer_<index>`, each an
                                           `arrow.fixed_shape_tensor` of shape [T, D]
    error            string, null=ok       why extraction failed; such rows hold no tokens
    content_sha256   string                sha256 of the video file or the text
    source           string                path/URI of the video, or `text`
    title            string                auxiliary text given to the backbone, if any
    frame_indices    list<int32>           sampled frame numbers (videos)
    frame_seconds    list<float32>         their timestamps in seconds (videos)
    token_counts     struct<video, prompt, generated: int32>   tokens per span before pooling
    extracted_at     timestamp[us, UTC]
    extract_seconds  float32               backbone seconds spent on this item
    digest_tokens    list<string>          per stored depth, in the manifest's order, the
                                           blake2b-128 hex digest of that layer's raw [T, D]
                                           bytes, written with them (`linkedout verify` checks
                                           them; absent from datasets written before 2026-12-07)
    query_<name>     struct, null=not yet  one per query beyond the first (the manifest's
                                           `queries`), fields `layer_<index>` of [S, D]: with
                                           queries after the video S = T - V, the query's own
                                           slots (its video slots are those of `tokens`, the
                                           same bits); with queries before it, S = T
    digest_query_<name>  list<string>      the digests of that query's layers, as digest_tokens

One struct field per layer is what lets a reader fetch a subset of layers without reading the
others: Lance stores each struct child as its own column. bfloat16 has no Arrow type, so it is
stored as its raw uint16 bits and reinterpreted on read (the manifest's dtype says which).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from linkedout.storage.manifest import Manifest
from linkedout.storage.rows import FailedItem, FeatureRow

MANIFEST_KEY = b"linkedout.manifest"

PRIMARY_KEY = {"lance-schema:unenforced-primary-key": "true"}
"""item_id's field metadata. Lance does not enforce it on append, but with it a merge_insert that
inserts a key another writer committed meanwhile is a commit conflict, re-planned against the
new version: that is what keeps one row per item under concurrent writers."""

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}
_ARROW_VALUE_TYPES: dict[str, pa.DataType] = {
    "float16": pa.float16(),
    "bfloat16": pa.uint16(),
    "float32": pa.float32(),
}
TOKEN_SPANS: tuple[str, ...] = ("video", "prompt", "generated")


def layer_column(layer: int) -> str:
    return f"layer_{layer}"


def tokens_column(layer: int, column: str = "tokens") -> str:
    """Nested column path of one layer (of `tokens` or a query column), for projections that
    read only that layer."""
    return f"{column}.{layer_column(layer)}"


def query_column(name: str) -> str:
    """The column of one query's slots (queries beyond the first; the first's are `tokens`)."""
    return f"query_{name}"


def layer_type(manifest: Manifest, slots: int | None = None) -> pa.DataType:
    _, t, d = manifest.shape
    return pa.fixed_shape_tensor(_ARROW_VALUE_TYPES[manifest.dtype], [slots or t, d])


def tensor_bytes(manifest: Manifest, slots: int | None = None) -> int:
    """Bytes one row holds in a tensor column: `tokens`, or a query column of `slots`."""
    layers, tokens, dim = manifest.shape
    return layers * (slots or tokens) * dim * _numpy_bits_dtype(manifest.dtype).itemsize


def _tokens_type(manifest: Manifest, slots: int | None = None) -> pa.StructType:
    return pa.struct(
        [pa.field(layer_column(x), layer_type(manifest, slots)) for x in manifest.layers]
    )


DIGEST_PREFIX = "digest_"


def digest_column(column: str) -> str:
    """The column holding the per-depth digests of tensor column `column`."""
    return DIGEST_PREFIX + column


def digested_column(name: str) -> str | None:
    """The tensor column whose digests column `name` holds (None: not a digest column)."""
    return name.removeprefix(DIGEST_PREFIX) if name.startswith(DIGEST_PREFIX) else None


def is_tensor_column(name: str) -> bool:
    """`tokens` or a `query_<name>` column (not a digest column)."""
    return name == "tokens" or name.startswith("query_")


DIGEST_TYPE = pa.list_(pa.string())


def query_fields(manifest: Manifest) -> list[pa.Field]:
    """The `query_<name>` columns of every query beyond the first, each with its digests."""
    out = []
    for name, _ in manifest.named_queries()[1:]:
        out.append(pa.field(query_column(name), _tokens_type(manifest, manifest.query_slots)))
        out.append(pa.field(digest_column(query_column(name)), DIGEST_TYPE))
    return out


def arrow_schema(manifest: Manifest) -> pa.Schema:
    return pa.schema(
        [
            pa.field("item_id", pa.string(), nullable=False, metadata=PRIMARY_KEY),
            pa.field("tokens", _tokens_type(manifest)),
            pa.field("error", pa.string()),
            pa.field("content_sha256", pa.string()),
            pa.field("source", pa.string()),
            pa.field("title", pa.string()),
            pa.field("frame_indices", pa.list_(pa.int32())),
            pa.field("frame_seconds", pa.list_(pa.float32())),
            pa.field("token_counts", pa.struct([(s, pa.int32()) for s in TOKEN_SPANS])),
            pa.field("extracted_at", pa.timestamp("us", tz="UTC")),
            pa.field("extract_seconds", pa.float32()),
            pa.field(digest_column("tokens"), DIGEST_TYPE),
            *query_fields(manifest),
        ],
        metadata={MANIFEST_KEY: manifest.to_json().encode()},
    )


def declares_primary_key(schema: pa.Schema) -> bool:
    """Whether item_id carries `PRIMARY_KEY` (datasets of older versions do not)."""
    metadata = schema.field("item_id").metadata or {}
    return all(metadata.get(k.encode()) == v.encode() for k, v in PRIMARY_KEY.items())


def rows_to_table(rows: Sequence[FeatureRow | FailedItem], manifest: Manifest) -> pa.Table:
    """Rows and failures as one table in the layout above (a failure holds no tokens)."""
    schema = arrow_schema(manifest)
    good = [r if isinstance(r, FeatureRow) else None for r in rows]
    tokens, digests = tensor_columns([g.tokens if g else None for g in good], manifest)
    columns = {
        "item_id": [r.item_id for r in rows],
        "tokens": tokens,
        digest_column("tokens"): digests,
        "error": [None if isinstance(r, FeatureRow) else r.error for r in rows],
        "content_sha256": [r.content_sha256 for r in rows],
        "source": [r.source for r in rows],
        "title": [r.title for r in rows],
        "frame_indices": [_opt_list(g.frame_indices, int) if g else None for g in good],
        "frame_seconds": [_opt_list(g.frame_seconds, float) if g else None for g in good],
        "token_counts": [
            {s: g.token_counts.get(s) for s in TOKEN_SPANS} if g and g.token_counts else None
            for g in good
        ],
        "extracted_at": [r.extracted_at for r in rows],
        "extract_seconds": [g.extract_seconds if g else None for g in good],
    }
    for name, _ in manifest.named_queries()[1:]:
        column = query_column(name)
        columns[column], columns[digest_column(column)] = tensor_columns(
            [g.queries.get(name) if g else None for g in good], manifest, manifest.query_slots
        )
    arrays = [
        columns[f.name]
        if isinstance(columns[f.name], pa.Array)
        else pa.array(columns[f.name], f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _opt_list(values, cast) -> list | None:
    return None if values is None else [cast(v) for v in values]


def tensor_columns(
    tokens: Sequence[torch.Tensor | None], manifest: Manifest, slots: int | None = None
) -> tuple[pa.StructArray, pa.ListArray]:
    """Stack per-item `[L, T, D]` tensors (None for a failed item) into the `tokens` column, or
    `[L, slots, D]` ones into a query column; with its digest column (null where the tensor
    is)."""
    n = len(tokens)
    valid = [t is not None for t in tokens]
    layers, t, d = manifest.shape
    shape = (layers, slots or t, d)
    dense = torch.zeros((n, *shape), dtype=TORCH_DTYPES[manifest.dtype])
    for i, t in enumerate(tokens):
        if t is not None:
            dense[i] = t
    array = _as_numpy_bits(dense)
    struct_type = _tokens_type(manifest, slots)
    children = []
    for j, f in enumerate(struct_type):
        layer = np.ascontiguousarray(array[:, j])
        storage = pa.FixedSizeListArray.from_arrays(
            pa.array(layer.reshape(-1), type=f.type.storage_type.value_type),
            list_size=shape[1] * shape[2],
        )
        children.append(pa.ExtensionArray.from_storage(f.type, storage))
    mask = None if all(valid) else pa.array([not v for v in valid])
    digests = [
        [layer_digest(array[i, j]) for j in range(layers)] if ok else None
        for i, ok in enumerate(valid)
    ]
    return (
        pa.StructArray.from_arrays(children, fields=list(struct_type), mask=mask),
        pa.array(digests, DIGEST_TYPE),
    )


def layer_digest(values: np.ndarray | memoryview | bytes) -> str:
    """blake2b-128 of one layer's raw bytes (as stored: bfloat16 as its uint16 bits)."""
    return hashlib.blake2b(values, digest_size=16).hexdigest()


def layer_arrays(
    data: pa.Table | pa.RecordBatch, layers: Sequence[int], column: str = "tokens"
) -> list[pa.ChunkedArray | pa.Array]:
    """Pick the per-layer columns out of a read, in the requested order.

    Lance returns nested projections as flat `tokens.layer_i` columns from scans but as a
    `tokens` struct (in schema order) from `take`; this hides the difference.
    """
    names = data.schema.names
    if column in names:
        struct = data.column(column)
        if isinstance(struct, pa.ChunkedArray):
            return [
                pa.chunked_array(
                    [c.field(layer_column(x)) for c in struct.chunks],
                    type=struct.type.field(layer_column(x)).type,
                )
                for x in layers
            ]
        return [struct.field(layer_column(x)) for x in layers]
    return [data.column(tokens_column(x, column)) for x in layers]


def arrow_to_tokens(
    layer_columns: Sequence[pa.ChunkedArray | pa.Array],
    manifest: Manifest,
    out: torch.Tensor | None = None,
    slots: int | None = None,
) -> torch.Tensor:
    """Per-layer `[T, D]` tensor columns (all rows valid) -> `[N, len(columns), T, D]`
    (`[slots, D]` ones for a query column).

    With `out`, values are copied straight into it (one copy from Arrow memory, none extra).
    """
    _, t, d = manifest.shape
    t = slots or t
    n = len(layer_columns[0]) if layer_columns else 0
    if out is None:
        out = torch.empty((n, len(layer_columns), t, d), dtype=TORCH_DTYPES[manifest.dtype])
    bits_dtype = _numpy_bits_dtype(manifest.dtype)
    target = (
        out.view(torch.int16).numpy().view(bits_dtype)
        if out.dtype == torch.bfloat16
        else out.numpy()
    )
    for j, column in enumerate(layer_columns):
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        row = 0
        for chunk in chunks:
            storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
            values = storage.flatten().to_numpy(zero_copy_only=False)
            rows = len(chunk)
            target[row : row + rows, j] = values.view(bits_dtype).reshape(rows, t, d)
            row += rows
    return out


def _numpy_bits_dtype(dtype: str) -> np.dtype:
    return {"float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16)}.get(
        dtype, np.dtype(np.float32)
    )


def _as_numpy_bits(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()
