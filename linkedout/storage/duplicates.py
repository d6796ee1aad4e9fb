"""Which row of an item id reads use and `optimize` keeps, when a dataset holds several (only
LinkedOut versions before the declared primary key wrote them: concurrent runs without --shard).
"""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CHOICE_COLUMNS = ["item_id", "error", "extracted_at"]
"""What `kept_positions` reads."""


def has_duplicates(ids: pa.ChunkedArray) -> bool:
    return len(ids) != pc.count_distinct(ids).as_py()


def kept_positions(table: pa.Table) -> np.ndarray:
    """Ascending positions of the one row per item_id that reads use and `optimize` keeps.

    A good row beats a failure; then the later extracted_at; then the later position, so the
    choice is the same every time for one version.
    """
    n = table.num_rows
    stamps = table.column("extracted_at").cast(pa.int64())
    keyed = pa.table(
        {
            "item_id": table.column("item_id"),
            "good": table.column("error").is_null(),
            "at": pc.fill_null(stamps, np.iinfo(np.int64).min),
            "pos": pa.array(np.arange(n, dtype=np.int64)),
        }
    ).sort_by(
        [("item_id", "ascending"), ("good", "ascending"), ("at", "ascending"), ("pos", "ascending")]
    )
    ids = keyed.column("item_id")
    last = np.ones(n, dtype=bool)  # the last row of each item id after the sort wins
    if n > 1:
        last[:-1] = pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy()
    return np.sort(keyed.column("pos").to_numpy()[last])


def surplus_addresses(dataset: lance.LanceDataset) -> np.ndarray:
    """Row addresses of every row but the kept one of each item id."""
    table = dataset.to_table(columns=CHOICE_COLUMNS, with_row_address=True)
    kept = np.zeros(table.num_rows, dtype=bool)
    kept[kept_positions(table)] = True
    return table.column("_rowaddr").to_numpy()[~kept]
