from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from linkedout.testing import s3

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared data at {path}, which is absent (see README: Data)")
    return path


@contextmanager
def moto_server():
    """A real S3-compatible server (moto's server mode) on 127.0.0.1: its endpoint URL, and the
    server stopped on leaving."""
    pytest.importorskip("moto", reason="moto[server] is in the dev extra: pip install -e '.[dev]'")
    with s3.moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_server():
    """One moto server for the whole session."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket; returns (bucket name, Lance storage options for it)."""
    name = "lo-" + request.node.name.lower().replace("_", "-")[:40]
    return name, s3.make_bucket(s3_server, name)


@pytest.fixture(autouse=True)
def _no_network_credentials(monkeypatch):
    # Tests must never reach a real cloud account configured on the machine.
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key, raising=False)
