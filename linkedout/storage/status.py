"""What a `FeatureStore` reports about its rows and about itself: plain values, no Lance handle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

import pyarrow as pa

from linkedout.storage.manifest import Manifest


@dataclass(frozen=True)
class StoredStatus:
    content_sha256: str | None
    error: str | None
    title: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def is_current(self, sha: str | None, title: str | None) -> bool:
        """A good row made from the same content and title: nothing to redo."""
        return self.ok and (self.content_sha256, self.title) == (sha, title)

    def is_known_failure(self, sha: str | None, title: str | None) -> bool:
        """A failure stored for the same content and title: trying again would repeat it."""
        return not self.ok and (self.content_sha256, self.title) == (sha, title)


@dataclass(frozen=True)
class Failure:
    item_id: str
    source: str
    error: str


@dataclass(frozen=True)
class StoreInfo:
    uri: str
    manifest: Manifest
    rows: int
    failures: int
    size_bytes: int
    version: int
    versions: int
    created: datetime | None
    updated: datetime | None
    fragments: int
    indices: list[str]
    schema: pa.Schema
    duplicates: int = 0
    """Rows beyond one per item id, which only older LinkedOut versions wrote: `optimize`
    removes them (reads already use one row per item)."""
    query_items: dict[str, int] = field(default_factory=dict)
    """Query name -> items holding its slots (every query beyond the first, whose slots every
    good row holds)."""
    tags: dict[str, int] = field(default_factory=dict)
    """Tag name -> the version it names (`linkedout tag`; kept by `optimize`)."""

    def to_json(self, failed_items: Sequence[Failure] = ()) -> dict:
        """A JSON-ready dict (`linkedout info --json`), listing `failed_items` among the facts.

        The schema is left out: the manifest already says what shapes it holds.
        """
        return {
            "uri": self.uri,
            "manifest": asdict(self.manifest),
            "rows": self.rows,
            "failures": self.failures,
            "failed_items": [asdict(f) for f in failed_items],
            "duplicate_rows": self.duplicates,
            "query_items": self.query_items,
            "size_bytes": self.size_bytes,
            "version": self.version,
            "versions": self.versions,
            "tags": self.tags,
            "fragments": self.fragments,
            "indices": self.indices,
            "created": self.created.isoformat() if self.created else None,
            "updated": self.updated.isoformat() if self.updated else None,
        }


@dataclass(frozen=True)
class OptimizeReport:
    fragments_before: int
    fragments_after: int
    bytes_before: int
    bytes_after: int
    duplicates_removed: int = 0
    """Extra rows of items stored more than once (by older versions), deleted."""
