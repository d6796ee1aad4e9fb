"""Queries added to a stored dataset: the manifest that names them, and their columns, added in
one commit each without rewriting any stored column (`linkedout extract --query` over items
already extracted; extract/adding_queries.py drives it). A mixin of `FeatureStore`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyarrow as pa

from linkedout.storage.columns import MANIFEST_KEY, digest_column, query_column, query_fields
from linkedout.storage.manifest import Manifest
from linkedout.storage.reading import OK

ADD_QUERY_READS = ("item_id", "error", "content_sha256")
"""What `add_query_columns` hands its fill function of each stored row."""


class QueryColumns:
    """Query methods of `FeatureStore` (store.py)."""

    def write_manifest(self, manifest: Manifest) -> None:
        """Commit a manifest that adds queries (one metadata commit, no data rewritten)."""
        self._ds.update_schema_metadata({MANIFEST_KEY.decode(): manifest.to_json()})
        self._committed.add(self._ds.version)
        self.refresh()
        self.manifest = manifest

    def missing_queries(self) -> list[str]:
        """Queries the manifest names whose column the dataset does not hold yet (a run that
        added them was stopped before their column was committed)."""
        names = set(self._ds.schema.names)
        return [
            name for name, _ in self.manifest.named_queries()[1:] if query_column(name) not in names
        ]

    def add_query_columns(
        self,
        names: Sequence[str],
        fill: Callable[[pa.RecordBatch], pa.RecordBatch],
        batch_size: int,
        checkpoint: str | None = None,
    ) -> None:
        """Add the columns of queries `names` (each with its digest column) in one commit,
        without rewriting any stored column: `fill` gets batches of `ADD_QUERY_READS` of the
        stored rows and returns the new columns for them (null where an item gets none). With
        `checkpoint` (a local file), batches already filled by an interrupted call are not
        filled again."""
        from lance.udf import BatchUDF

        wanted = {query_column(n) for n in names}
        wanted |= {digest_column(c) for c in wanted}
        schema = pa.schema([f for f in query_fields(self.manifest) if f.name in wanted])
        if not self._ds.get_fragments():  # nothing stored: the columns alone
            self._ds.add_columns(schema)
        else:
            udf = BatchUDF(fill, output_schema=schema, checkpoint_file=checkpoint)
            self._ds.add_columns(udf, read_columns=list(ADD_QUERY_READS), batch_size=batch_size)
        self._committed.add(self._ds.version)
        self.refresh()

    def query_nulls(self, name: str) -> int:
        """Extracted items that hold no slots for query `name`."""
        column = query_column(name)
        return self._ds.count_rows(filter=f"{OK} AND {column} IS NULL")
