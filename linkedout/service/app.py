"""The HTTP service over a trained run (FastAPI): the app, its middleware and its errors; the
endpoints are in routes.py, what a process holds between requests in state.py.

The run loads in a background thread after the socket opens (/readyz says when it is ready);
then a watcher swaps in each new catalog.lance version. Rankings run in one thread per process,
concurrent requests merged into one pass (batching.py): on a few cores, concurrent matrix
products only slow each other down. Requests beyond `max_in_flight` are shed with 503
(middleware.py) rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from linkedout.service import routes
from linkedout.service.config import ServeConfig
from linkedout.service.middleware import BodyLimit, LoadShedding, problem
from linkedout.service.routes import RANKING_PATHS
from linkedout.service.state import Service, ServiceError

log = logging.getLogger("linkedout.serve")


SHUTDOWN_WAIT = 15.0
"""Seconds a shutdown waits for a catalog poll under way (its client retries are bounded
well below: ranker.POLL_OPTIONS)."""


def create_app(config: ServeConfig) -> FastAPI:
    service = Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        watcher = threading.Thread(
            target=service.load_and_watch, name="linkedout-catalog", daemon=True
        )
        watcher.start()
        yield
        service.stop.set()
        # A poll may be inside the object store's client (a store out of reach retries for
        # seconds): the process must not exit under it, which aborts it. Bounded: a first load
        # still running is left to end with the process.
        await asyncio.to_thread(watcher.join, SHUTDOWN_WAIT)
        if service.batcher is not None:
            service.batcher.close()

    app = FastAPI(
        title="LinkedOut",
        summary="Video recommendations from a trained LinkedOut run.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.token = config.token()
    app.add_middleware(LoadShedding, limit=config.max_in_flight, paths=RANKING_PATHS)
    app.add_middleware(BodyLimit, limit=config.max_body_kb * 1024, timeout=config.body_timeout)
    app.include_router(routes.rankings)
    app.include_router(routes.status)
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, e: ServiceError):
        return problem(e.status, e.detail, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        status, detail = _validation_sentence(e.errors(), request.headers.get("content-type"))
        return problem(status, detail)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        if e.status_code == 404:
            detail = f"no endpoint {request.method} {request.url.path}: see /docs"
        elif e.status_code == 405:
            detail = f"{request.url.path} does not take {request.method}: see /docs"
        else:
            detail = str(e.detail)
        return problem(e.status_code, detail, getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return problem(500, f"internal error ({type(e).__name__}): see the server's log")


def _validation_sentence(errors, content_type: str | None) -> tuple[int, str]:
    """Pydantic's first error as one sentence: where, and what was wrong."""
    if not errors:
        return 422, "the request is not valid: see /docs"
    error = errors[0]
    at_body = tuple(error.get("loc", ())) == ("body",)
    if at_body and error.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        if "json" not in (content_type or ""):
            return 415, "send the body as JSON, with the header Content-Type: application/json"
        return 422, "the request body must be a JSON object (see /docs)"
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        return 400, f"the request body is not valid JSON ({reason}): send a JSON object"
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
    message = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
    if error.get("type") == "missing" and not where:
        return 422, "the request has no JSON body: send a JSON object (see /docs)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, f"{where or 'the body'}: {message}{more}"


def default_threads(workers: int) -> int:
    """Torch threads of one server process: its share of the cores, less one for its HTTP loop
    (ServeConfig.threads)."""
    return max(1, (os.cpu_count() or 1) // workers - 1)


def app_from_env() -> FastAPI:
    """The app of one server process, its settings handed over by `linkedout serve`."""
    config = ServeConfig.from_env()
    threads = config.threads or default_threads(config.workers)
    torch.set_num_threads(threads)
    return create_app(config)
