from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared data at {path}, which is absent (see README: Data)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server():
    """A real S3-compatible server (moto's server mode) on 127.0.0.1: its endpoint URL, and the
    server stopped on leaving."""
    pytest.importorskip("moto", reason="moto[server] is in the dev extra: pip install -e '.[dev]'")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def s3_server():
    """One moto server for the whole session."""
    with moto_server() as endpoint:
        yield endpoint


def make_bucket(endpoint: str, name: str) -> dict[str, str]:
    """Create bucket `name` on the S3-compatible server at `endpoint`; Lance's storage options
    for it."""
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=name)
    return {
        "aws_endpoint": endpoint,
        "allow_http": "true",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "aws_region": "us-east-1",
    }


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket; returns (bucket name, Lance storage options for it)."""
    name = "lo-" + request.node.name.lower().replace("_", "-")[:40]
    return name, make_bucket(s3_server, name)


@pytest.fixture(autouse=True)
def _no_network_credentials(monkeypatch):
    # Tests must never reach a real cloud account configured on the machine.
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key, raising=False)
