"""Where a run's catalog lives: the run's own catalog.lance, or the copy `linkedout catalog
publish` put in an object store, which several `serve` replicas (on several hosts) then share.

    catalog-location.json   {"uri": "s3://bucket/runs/a/catalog.lance",
                             "storage_options": {"aws_endpoint": "http://...", ...}}

Once that file is in the run directory, every command that reads or changes the run's catalog
(`serve`, `recommend`, `evaluate`, `catalog add` and `remove`) does so at the URI, and the run's
own catalog.lance stays as it was when published. Secrets are never written to it: storage
options naming keys, tokens or passwords are left out, and each host gives its credentials the
usual way (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, an instance role, ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from linkedout.errors import LinkedOutError

LOCATION_FILE = "catalog-location.json"

SECRET_WORDS = ("key", "secret", "token", "password", "sas", "credential")
"""A storage option whose key holds one of these is a credential: never written to the run."""


@dataclass(frozen=True)
class CatalogLocation:
    uri: str
    """A local folder or an object-store URI."""
    storage_options: dict[str, str] = field(default_factory=dict)
    """Lance's storage options to reach it (no credentials)."""
    published: bool = False
    """True when it comes from catalog-location.json, not the run's own catalog.lance."""


def public_options(options: dict[str, str]) -> dict[str, str]:
    """`options` without credentials (what catalog-location.json may hold)."""
    return {k: v for k, v in options.items() if not any(w in k.lower() for w in SECRET_WORDS)}


def read_location(run_path: Path, own: Path) -> CatalogLocation:
    """The run's catalog location: catalog-location.json's when present, else `own`."""
    file = run_path / LOCATION_FILE
    if not file.exists():
        return CatalogLocation(str(own))
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        uri, options = data["uri"], data.get("storage_options", {})
        if not isinstance(uri, str) or not isinstance(options, dict):
            raise ValueError("`uri` must be a string and `storage_options` an object")
    except (ValueError, KeyError, TypeError) as e:
        raise LinkedOutError(
            f"{file} is damaged ({e}): publish the catalog again (`linkedout catalog publish`)"
        ) from None
    return CatalogLocation(uri, {str(k): str(v) for k, v in options.items()}, published=True)


def write_location(run_path: Path, uri: str, options: dict[str, str]) -> Path:
    """Point the run at `uri` (atomically: a reader sees the old file or the new one)."""
    file = run_path / LOCATION_FILE
    tmp = file.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"uri": uri, "storage_options": public_options(options)}, indent=2) + "\n",
        encoding="utf-8",
    )
    os.replace(tmp, file)
    return file
