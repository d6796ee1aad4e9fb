"""Datasets as LinkedOut wrote them before issue 16: item_id without the primary-key metadata,
no digest columns (before 2026-12-07), and rows added by plain Lance appends (which is how two
unsharded runs left duplicates)."""

from __future__ import annotations

from pathlib import Path

import lance
import pyarrow as pa

from linkedout.storage import FailedItem, FeatureRow, Manifest
from linkedout.storage.columns import arrow_schema, rows_to_table


def old_schema(manifest: Manifest) -> pa.Schema:
    schema = arrow_schema(manifest)
    schema = pa.schema(
        [f for f in schema if not f.name.startswith("digest_")], metadata=schema.metadata
    )
    index = schema.get_field_index("item_id")
    return schema.set(index, schema.field(index).remove_metadata())


def old_append(
    uri: str | Path, rows: list[FeatureRow | FailedItem], manifest: Manifest
) -> lance.LanceDataset:
    """Create (old layout) or plainly append to the dataset at `uri`, one commit."""
    schema = old_schema(manifest)
    table = rows_to_table(rows, manifest).select(schema.names).cast(schema) if rows else None
    if table is None:
        table = pa.RecordBatchReader.from_batches(schema, [])
    exists = Path(uri).exists()
    return lance.write_dataset(
        table, str(uri), schema=schema, mode="append" if exists else "create"
    )
