"""`linkedout serve`: uvicorn over the app, in one or several processes."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys

from linkedout.errors import LinkedOutError
from linkedout.service.config import CONFIG_ENV, ServeConfig


def serve(config: ServeConfig) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn finishes the requests in flight, then exits)."""
    check_port(config.host, config.port)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise LinkedOutError(
            f"linkedout serve needs {e.name}, which is not installed: "
            "pip install 'linkedout[serve]'"
        ) from None

    # uvicorn finishes a graceful shutdown by re-raising the signal it caught, to the handler
    # that was there before it: this one makes that a plain exit 0, as a stopped service
    # should report to its process manager.
    for caught in (signal.SIGTERM, signal.SIGINT):
        signal.signal(caught, lambda *_: sys.exit(0))
    # Worker processes build their own app from these settings (uvicorn starts them by
    # import string), so one code path serves 1 or N processes.
    os.environ[CONFIG_ENV] = config.to_env()
    uvicorn.run(
        "linkedout.service.app:app_from_env",
        factory=True,
        host=config.host,
        port=config.port,
        workers=config.workers,
        http="linkedout.service.protocol:JSONErrorsProtocol",
        log_level="info",
        log_config=log_config(),
        timeout_graceful_shutdown=10,
        # Wider than the app's own shedding: keeps a flood of idle connections from
        # exhausting the process, while the app answers the rest with a 503 body.
        limit_concurrency=config.max_in_flight * 4 + 16,
    )


def log_config() -> dict:
    """uvicorn's logging, with the app's own lines ("ready: ...", catalog swaps, load errors)
    on the same stream and format: by default they are INFO records nobody prints. Each
    worker process applies it too."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["linkedout"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address `serve` cannot listen on, before anything is loaded
    (uvicorn would find out only after starting, and exit 3 among its log lines). A server
    started between this check and uvicorn's bind still makes uvicorn fail: a rare race."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise LinkedOutError(f"--host {host!r} is not an address here ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: a closed connection's TIME_WAIT does not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise LinkedOutError(
                    f"port {port} on {host} is already in use (another server?): stop it, or "
                    "choose a free one with --port"
                ) from None
            raise LinkedOutError(
                f"cannot listen on {host}:{port} ({e.strerror}): choose another --host or --port"
            ) from None
