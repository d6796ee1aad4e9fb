"""`linkedout serve`: uvicorn over the app, in one or several processes."""

from __future__ import annotations

import os
import signal
import sys

from linkedout.errors import LinkedOutError
from linkedout.service.config import CONFIG_ENV, ServeConfig


def serve(config: ServeConfig) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn finishes the requests in flight, then exits)."""
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
        log_level="info",
        timeout_graceful_shutdown=10,
        # Wider than the app's own shedding: keeps a flood of idle connections from
        # exhausting the process, while the app answers the rest with a 503 body.
        limit_concurrency=config.max_in_flight * 4 + 16,
    )
