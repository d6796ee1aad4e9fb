"""A run's graph index on disk, built over one version of its catalog.

    RUN/index/graph/
        meta.json       format, run id, the catalog version it was built over, settings,
                        how many items, the L2 reduction's norm, build seconds
        items.json      the item id of each graph label, in label order
        projection.pt   the projection's two matrices (read with weights_only=True)
        graph.bin       hnswlib's own file

It is written to a sibling folder and renamed into place, so a reader sees the old index or
the new one, never half of one. A server uses it for later catalog versions too (items added
since are scanned exactly beside it, removed ones dropped: graph_scan.py) and builds a new one
in the background once too much of the catalog lies beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from linkedout.errors import LinkedOutError, first_line
from linkedout.service.graph import GraphIndex, Projection, require_hnswlib
from linkedout.service.graph_settings import GraphSettings

FORMAT = 1
FIT_USERS = 2000
"""Users of the split whose vectors the projection is fitted on (a seeded sample)."""


@dataclass(frozen=True)
class StoredGraph:
    index: GraphIndex
    items: list[str]
    """The item id of each label."""
    catalog_version: int
    run_id: str | None
    built_seconds: float = 0.0


def graph_folder(run: Path) -> Path:
    return Path(run) / "index" / "graph"


def stored_version(run: Path) -> int | None:
    """The catalog version the run's stored graph was built over, from its meta.json alone
    (None: none stored, or unreadable): enough to tell whether loading it would help."""
    try:
        return int(json.loads((graph_folder(run) / "meta.json").read_text())["catalog_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_graph(run: Path, stored: StoredGraph) -> Path:
    folder = graph_folder(run)
    fresh = folder.with_name(f"graph.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fresh.mkdir(parents=True)
    try:
        index = stored.index
        index.graph.save_index(str(fresh / "graph.bin"))
        torch.save(
            {"keys_map": index.projection.keys_map, "users_map": index.projection.users_map},
            fresh / "projection.pt",
        )
        (fresh / "items.json").write_text(json.dumps(stored.items))
        meta = {
            "format": FORMAT,
            "run_id": stored.run_id,
            "catalog_version": stored.catalog_version,
            "items": len(stored.items),
            "settings": asdict(index.settings),
            "max_norm": index.max_norm,
            "lift_coordinate": index.lifted,
            "built_seconds": round(stored.built_seconds, 1),
        }
        (fresh / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        old = folder.with_name(f"graph.{os.getpid()}.{time.monotonic_ns()}.old")
        if folder.exists():
            folder.rename(old)
        fresh.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    return folder


def load_graph(run: Path, run_id: str | None) -> StoredGraph | None:
    """The run's stored graph; None where it has none. One from another run, of a newer
    format or damaged is refused in one line."""
    folder = graph_folder(run)
    if not (folder / "meta.json").exists():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format", FORMAT) > FORMAT:
            raise LinkedOutError(
                f"{folder} is graph index format {meta['format']}, newer than this linkedout "
                f"reads ({FORMAT}): upgrade linkedout, or delete it to build a new one"
            )
        if meta["run_id"] != run_id:
            raise LinkedOutError(
                f"{folder} belongs to another run ({meta['run_id']}, this is {run_id}): "
                "delete it and run `linkedout catalog index` again"
            )
        items = json.loads((folder / "items.json").read_text())
        maps = torch.load(folder / "projection.pt", weights_only=True)
        settings = GraphSettings(**meta["settings"])
        graph = require_hnswlib().Index(space="l2", dim=maps["keys_map"].shape[1] + 1)
        graph.load_index(str(folder / "graph.bin"), max_elements=len(items))
        if not graph.get_current_count() == len(items) == meta["items"]:
            raise ValueError(f"graph.bin holds {graph.get_current_count()} items")
    except LinkedOutError:
        raise
    except Exception as e:  # a damaged folder: one line, and how to get a good one
        raise LinkedOutError(
            f"{folder} is damaged ({first_line(e, 160)}): delete it and run "
            "`linkedout catalog index` again"
        ) from e
    graph.set_ef(max(settings.breadth, settings.candidates))
    graph.set_num_threads(1)
    lifted = bool(meta.get("lift_coordinate", False))
    index = GraphIndex(Projection(**maps), graph, float(meta["max_norm"]), settings, lifted)
    return StoredGraph(
        index, items, int(meta["catalog_version"]), meta["run_id"], meta["built_seconds"]
    )
