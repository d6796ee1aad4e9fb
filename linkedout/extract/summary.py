"""What one extraction did, as `linkedout extract` reports it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ExtractSummary:
    uri: str
    items: int = 0
    new: int = 0
    replaced: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    attempted: int = 0
    """Items this run tried to extract (those not already stored)."""
    known_failures: int = 0
    """Items stored as failures of the same content and title: skipped, or retried with
    --retry-failed."""
    failed_again: int = 0
    """Known failures retried (--retry-failed) that failed again."""
    failure_reasons: Counter[str] = field(default_factory=Counter)
    """Reason -> how many of this run's items failed with it."""
    queries_added: list[str] = field(default_factory=list)
    """Queries this run added to the items stored before it."""
    given_queries: int = 0
    """Stored items that got the added queries."""

    def all_failed(self) -> str | None:
        """A one-line error when every item this run tried failed (their failures are stored),
        naming the most common reason; None when any succeeded or none was tried. Known
        failures that failed again do not count: a re-run over one bad upload is not an error."""
        failed = sum(self.failure_reasons.values())
        attempted = self.attempted - self.failed_again
        if not attempted or failed < attempted:
            return None
        reason, count = self.failure_reasons.most_common(1)[0]
        return (
            f"all {failed} items failed ({count}x: {reason}); see "
            f"`linkedout info {self.uri} --failures {failed}`"
        )

    def line(self) -> str:
        done = self.new + self.replaced
        added = (
            f", {', '.join(self.queries_added)} added to {self.given_queries} stored"
            if self.queries_added
            else ""
        )
        rate = (done + self.given_queries) / self.seconds if self.seconds > 0 else 0.0
        known = ""
        if self.failed_again:
            known = f" ({self.failed_again} of them failed before with the same bytes)"
        elif self.known_failures:
            known = (
                f", {self.known_failures} known failure(s) skipped (stored failed with the same "
                "bytes; --retry-failed tries them again)"
            )
        return (
            f"{self.uri}: {self.new} new, {self.replaced} replaced, {self.skipped} skipped "
            f"(already stored){added}, {self.failed} failed{known} in {self.seconds:.1f}s "
            f"({rate:.2f} items/s)"
        )
