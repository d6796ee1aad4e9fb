"""A trained planted run, and `linkedout serve` started on it as a user starts it: the real
command in its own process, on a free local port, stopped with SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from linkedout.recommend.config import TrainConfig
from linkedout.recommend.model import ModelConfig
from linkedout.recommend.train import train
from linkedout.testing.s3 import free_port
from tests.cli_harness import LINKEDOUT
from tests.recommend.planted import make_planted


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="session")
def trained_run(planted, tmp_path_factory) -> Path:
    """Content + IDs, trained briefly: enough for rankings that mean something."""
    out = tmp_path_factory.mktemp("runs") / "moe-ids"
    config = TrainConfig(
        features=str(planted.features),
        interactions=str(planted.interactions),
        out=str(out),
        model=ModelConfig(d_model=32, fusion="moe", ids=True),
        epochs=6,
        batch_size=64,
        lr=3e-3,
        quiet=True,
    )
    return train(config)


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A copy of the run that a test may change (catalog add/remove)."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    def stop(self) -> int:
        """SIGTERM, as a process manager stops it; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def start_server(run: Path, log: Path, *args: str, env: dict | None = None) -> Server:
    port = free_port()
    process = subprocess.Popen(
        [LINKEDOUT, "serve", str(run), "--port", str(port), "--threads", "1", *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    # Worker processes share the socket and each loads the run on its own, so one worker's
    # 200 on /readyz says nothing of the others: wait for every worker's "ready:" log line.
    workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"linkedout serve exited {process.returncode}:\n{log.read_text()}")
        try:
            if (
                httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200
                and log.read_text().count("ready: ") >= workers
            ):
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"linkedout serve was not ready in 120 s:\n{log.read_text()}")


@contextmanager
def servers(logs: Path) -> Iterator:
    """`start(run, *flags)` -> a ready Server; every server is stopped by SIGTERM at the end,
    and must exit 0 after a graceful shutdown."""
    started: list[Server] = []

    def start(run: Path, *args: str, env: dict | None = None) -> Server:
        server = start_server(run, logs / f"serve-{len(started)}.log", *args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            assert server.stop() == 0, server.log.read_text()
            assert "Application shutdown complete" in server.log.read_text()


@contextmanager
def ranking_clients(targets: list[Server], per_server: int) -> Iterator[tuple[list, list]]:
    """`per_server` clients on each server ranking one history back to back while the block
    runs: (responses, failures), filled as they come; the clients are joined on leaving."""
    responses, failures = [], []
    stop = threading.Event()

    def client(server: Server) -> None:
        with server.client() as http:
            while not stop.is_set():
                got = http.post("/recommend", json={"history": ["v0002"], "k": 1000})
                if got.status_code != 200:
                    failures.append(got.text)
                else:
                    responses.append(got.json())

    threads = [
        threading.Thread(target=client, args=(s,)) for s in targets for _ in range(per_server)
    ]
    for t in threads:
        t.start()
    try:
        yield responses, failures
    finally:
        stop.set()
        for t in threads:
            t.join()


@pytest.fixture
def serve(tmp_path) -> Iterator:
    with servers(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory) -> Iterator[Server]:
    """One server on the trained run for a whole module of read-only requests."""
    with servers(tmp_path_factory.mktemp("server")) as start:
        yield start(trained_run, "--max-body-kb", "256", "--body-timeout", "2")
