"""How much memory a run may fill with data (item features, catalog embeddings): one policy,
resolved once and handed down, so that every holder of data decides against the same figure."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes that data may take in memory; beyond them it is read from disk."""

    nbytes: float

    @classmethod
    def resolve(cls, gib: float | None) -> MemoryBudget:
        """`gib` GiB, or half of the memory available now when None: room is left for the
        model, the optimizer and the OS."""
        if gib is not None:
            return cls(int(gib * 2**30))
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            available = 8 << 30
        return cls(available // 2)

    @classmethod
    def unlimited(cls) -> MemoryBudget:
        return cls(math.inf)

    def fits(self, nbytes: float) -> bool:
        return nbytes <= self.nbytes

    @property
    def gib(self) -> float:
        return self.nbytes / 2**30
