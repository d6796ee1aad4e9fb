"""`FeatureStore`'s reads: tokens of the items asked for (one query or several, only the depths
asked for) and whole-dataset loads. A mixin over the store's handle (`_ds`, `manifest`, `uri`,
`_offset_map`, `failures`), kept apart so store.py reads as opening,
writing and maintenance."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from linkedout.errors import LinkedOutError, MissingItemsError
from linkedout.storage.columns import (
    TORCH_DTYPES,
    arrow_to_tokens,
    layer_arrays,
    query_column,
    tokens_column,
)

OK = "error IS NULL"
"""Rows of items extracted without error."""


class StoreReads:
    """Reading methods of `FeatureStore` (store.py)."""

    def layer_positions(self, layers: Sequence[int] | None) -> list[int]:
        """Validate requested layer indices (model depths, as in the manifest)."""
        if layers is None:
            return list(self.manifest.layers)
        unknown = [x for x in layers if x not in self.manifest.layers]
        if unknown:
            raise LinkedOutError(
                f"layers {unknown} are not stored in {self.uri}; it holds layers "
                f"{list(self.manifest.layers)}"
            )
        return list(layers)

    def read_tokens(
        self,
        item_ids: Sequence[str],
        layers: Sequence[int] | None = None,
        query: str | None = None,
    ) -> torch.Tensor:
        """`[N, L, T, D]` for these ids in this order, reading only the requested layers, as
        query `query` made them (default: the first stored query, the `tokens` column)."""
        if query is not None:
            return self._read_asked(item_ids, self.layer_positions(layers), [query])
        layers = self.layer_positions(layers)
        rows = self.row_offsets(item_ids)
        if not len(rows):
            return self._empty(len(layers))
        table = self._ds.take(rows, columns=[tokens_column(x) for x in layers])
        return arrow_to_tokens(layer_arrays(table, layers), self.manifest)

    def read_queries(
        self,
        item_ids: Sequence[str],
        layers: Sequence[int],
        queries: Sequence[str],
        slots: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """`[N, len(queries) * L, T, D]`: each query's layers in turn (query-major), the
        experts of a model over (query, depth); no queries is the first stored one. `slots`
        (start, stop) keeps those of the T slots alone."""
        if not queries:
            tokens = self.read_tokens(item_ids, layers)
        else:
            tokens = self._read_asked(item_ids, self.layer_positions(layers), queries)
        return tokens if slots is None else tokens[:, :, slots[0] : slots[1]].contiguous()

    def _read_asked(
        self, item_ids: Sequence[str], layers: list[int], queries: Sequence[str]
    ) -> torch.Tensor:
        """`read_queries` of named queries in one take: each query's own column, and `tokens`
        once (the first query's slots, and the video slots queries after the video share)."""
        columns = [self._query_column(q) for q in queries]  # None: the first query, `tokens`
        own = [c for c in columns if c is not None]
        shared = self.manifest.query_position == "after"
        rows = self.row_offsets(item_ids)
        if not len(rows):
            return self._empty(len(queries) * len(layers))
        with_tokens = None in columns or (shared and bool(own))
        read = [tokens_column(x, c) for c in own for x in layers]
        if with_tokens:
            read += [tokens_column(x) for x in layers]
        table = self._ds.take(rows, columns=read)
        for query, column in zip(queries, columns, strict=True):
            absent = [] if column is None else _absent(table, column, item_ids)
            if absent:
                raise MissingItemsError(
                    f"{len(absent)} item(s) of {self.uri} hold no slots for query {query!r} "
                    f"(e.g. {absent[0]!r}): their video was not found when the query was added; "
                    "re-run `linkedout extract` with their videos",
                    absent,
                )
        first = arrow_to_tokens(layer_arrays(table, layers), self.manifest) if with_tokens else None
        slots = self.manifest.query_slots
        parts = []
        for column in columns:
            if column is None:
                parts.append(first)
                continue
            mine = arrow_to_tokens(layer_arrays(table, layers, column), self.manifest, slots=slots)
            video = self.manifest.tokens_per_layer - slots
            parts.append(torch.cat([first[:, :, :video], mine], dim=2) if shared else mine)
        return torch.cat(parts, dim=1)

    def row_offsets(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row offsets of these stored ids, in order; ids not stored are one error."""
        offsets = self._offset_map()
        missing = [i for i in item_ids if i not in offsets]
        if missing:
            raise MissingItemsError(self._missing_message(missing), missing)
        return np.fromiter((offsets[i] for i in item_ids), dtype=np.int64, count=len(item_ids))

    def _empty(self, experts: int) -> torch.Tensor:
        return torch.empty(
            (0, experts, *self.manifest.shape[1:]), dtype=TORCH_DTYPES[self.manifest.dtype]
        )

    def query_names(self, wanted: Sequence[str]) -> list[str]:
        """`wanted` checked against the stored queries (`all`: every one); a one-line error
        names those stored."""
        stored = [name for name, _ in self.manifest.named_queries()]
        if list(wanted) == ["all"]:
            return stored
        unknown = [q for q in wanted if q not in stored]
        if unknown:
            raise self._no_query(unknown[0])
        if len(set(wanted)) != len(wanted):
            raise LinkedOutError(f"queries {', '.join(wanted)} name one twice")
        return list(wanted)

    def _no_query(self, query: str) -> LinkedOutError:
        stored = [name for name, _ in self.manifest.named_queries()]
        return LinkedOutError(
            f"{self.uri} holds no query {query!r}; its queries: "
            f"{', '.join(stored) or '- (text features)'}"
        )

    def _query_column(self, query: str | None) -> str | None:
        """The column holding query `query`'s own slots; None for the first (`tokens`)."""
        stored = [name for name, _ in self.manifest.named_queries()]
        if query is None or (stored and query == stored[0]):
            return None
        if query not in stored:
            raise self._no_query(query)
        if query in self.missing_queries():
            raise LinkedOutError(
                f"query {query!r} of {self.uri} was never finished: re-run the `linkedout "
                "extract` that added it"
            )
        return query_column(query)

    def iter_batches(
        self, batch_size: int = 1024, layers: Sequence[int] | None = None
    ) -> Iterator[tuple[list[str], torch.Tensor]]:
        """Stream `(ids, [B, L, T, D])` over every stored item without holding them all."""
        for ids, columns in self._scan(batch_size, self.layer_positions(layers)):
            yield ids, arrow_to_tokens(columns, self.manifest)

    def load(
        self,
        layers: Sequence[int] | None = None,
        queries: Sequence[str] = (),
        slots: tuple[int, int] | None = None,
    ) -> tuple[list[str], torch.Tensor]:
        """Every stored item as `(ids, [N, L, T, D])` in one tensor (`[N, Q * L, T, D]` for
        several queries and a range of slots, as `read_queries`)."""
        layers = self.layer_positions(layers)
        if len(queries) > 1 or (queries and self._query_column(queries[0]) is not None):
            ids = self.ids()
            chunks = [
                self.read_queries(ids[start : start + 8192], layers, queries, slots)
                for start in range(0, len(ids), 8192)
            ]
            empty = self.read_queries([], layers, queries, slots)
            return ids, torch.cat(chunks) if chunks else empty
        ids, out = self._load_tokens(layers)
        return ids, out if slots is None else out[:, :, slots[0] : slots[1]].contiguous()

    def _load_tokens(self, layers: list[int]) -> tuple[list[str], torch.Tensor]:
        out = torch.empty(
            (len(self), len(layers), *self.manifest.shape[1:]),
            dtype=TORCH_DTYPES[self.manifest.dtype],
        )
        ids: list[str] = []
        for batch_ids, columns in self._scan(8192, layers):
            arrow_to_tokens(columns, self.manifest, out=out[len(ids) : len(ids) + len(batch_ids)])
            ids.extend(batch_ids)
        return ids, out

    def _scan(self, batch_size: int, layers: list[int]):
        if self.duplicate_rows():
            yield from self._take_kept(batch_size, layers)
            return
        columns = ["item_id", *(tokens_column(x) for x in layers)]
        for batch in self._ds.to_batches(columns=columns, filter=OK, batch_size=batch_size):
            if batch.num_rows:
                yield batch.column(0).to_pylist(), layer_arrays(batch, layers)

    def _take_kept(self, batch_size: int, layers: list[int]):
        # A scan would yield every copy of a duplicated item; take just the row kept for each.
        offsets = self._offset_map()
        ids = list(offsets)
        rows = np.fromiter(offsets.values(), dtype=np.int64, count=len(ids))
        columns = [tokens_column(x) for x in layers]
        for start in range(0, len(ids), batch_size):
            table = self._ds.take(rows[start : start + batch_size], columns=columns)
            yield ids[start : start + batch_size], layer_arrays(table, layers)

    def _missing_message(self, missing: list[str]) -> str:
        failed = {f.item_id: f.error for f in self.failures() if f.item_id in set(missing[:5])}
        shown = ", ".join(
            f"{i!r} (failed: {failed[i]})" if i in failed else repr(i) for i in missing[:5]
        )
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return (
            f"{len(missing)} item id(s) not stored in {self.uri}: {shown}{more}; "
            "extract them first or drop them from the request"
        )


def _absent(table: pa.Table, column: str, item_ids: Sequence[str]) -> list[str]:
    """The ids whose row of a read holds no `column` (a struct: Lance's take returns it whole,
    a scan returns its children flat)."""
    if column not in table.schema.names:
        column = next(n for n in table.schema.names if n.startswith(column + "."))
    valid = table.column(column).is_valid().to_pylist()
    return [i for i, ok in zip(item_ids, valid, strict=True) if not ok]
