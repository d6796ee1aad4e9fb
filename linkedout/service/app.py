"""The HTTP service over a trained run (FastAPI): rankings, health, metadata, items.

The run loads in a background thread after the socket opens (/readyz says when it is ready);
then a watcher swaps in each new catalog.lance version. Rankings run in one thread per process,
concurrent requests merged into one pass (batching.py): on a few cores, concurrent matrix
products only slow each other down. Requests beyond `max_in_flight` are shed with 503
(middleware.py) rather than queued without bound.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from contextlib import asynccontextmanager
from dataclasses import asdict

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from linkedout.errors import first_line
from linkedout.service.batching import Batcher
from linkedout.service.config import ServeConfig
from linkedout.service.middleware import BodyLimit, LoadShedding, problem
from linkedout.service.ranker import Query, QueryError, Ranker
from linkedout.service.schema import (
    BatchRequest,
    BatchResponse,
    CatalogInfo,
    ItemResponse,
    Metadata,
    Problem,
    RecommendRequest,
    RecommendResponse,
)

log = logging.getLogger("linkedout.serve")

RANKING_PATHS = ("/recommend", "/recommend/batch")
ERRORS = {code: {"model": Problem} for code in (400, 401, 404, 408, 413, 415, 422, 503)}


class ServiceError(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        headers: dict[str, str] | None = None,
        index: int = 0,
    ):
        self.status, self.detail, self.headers = status, detail, headers
        self.index = index  # the request of a batch it is about


class Service:
    """What the endpoints share: the ranker once loaded, and the thread that watches for
    new catalog versions."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.ranker: Ranker | None = None
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self.stop = threading.Event()

    def load_and_watch(self) -> None:
        try:
            ranker = Ranker(self.config.run, self.config.new_item_lift)
        except Exception as e:  # reported by /readyz and every ranking, never raised
            self.load_error = first_line(e, 300)
            log.error("could not load %s: %s", self.config.run, self.load_error)
            return
        self.batcher = Batcher(ranker.rank_at, self.config.max_batch)
        self.ranker = ranker  # last: once a request sees the ranker, the batcher is there
        snap = ranker.snapshot
        log.info(
            "ready: %s, catalog version %d (%d items)", self.config.run, snap.version, snap.size
        )
        while not self.stop.wait(self.config.poll_seconds):
            try:
                if self.ranker.refresh():
                    snap = self.ranker.snapshot
                    log.info("catalog version %d swapped in (%d items)", snap.version, snap.size)
            except Exception as e:  # a bad new version: keep serving the old one
                log.warning("catalog version not swapped in: %s", first_line(e, 300))

    def ready(self) -> Ranker:
        if self.ranker is not None:
            return self.ranker
        if self.load_error is not None:
            raise ServiceError(503, f"the run could not be loaded: {self.load_error}")
        raise ServiceError(503, "the run is still loading: retry shortly", {"Retry-After": "1"})


def create_app(config: ServeConfig) -> FastAPI:
    service = Service(config)
    token = config.token()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(
            target=service.load_and_watch, name="linkedout-catalog", daemon=True
        ).start()
        yield
        service.stop.set()
        if service.batcher is not None:
            service.batcher.close()

    app = FastAPI(
        title="LinkedOut",
        summary="Video recommendations from a trained LinkedOut run.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(LoadShedding, limit=config.max_in_flight, paths=RANKING_PATHS)
    app.add_middleware(BodyLimit, limit=config.max_body_kb * 1024, timeout=config.body_timeout)

    def authorized(request: Request) -> None:
        if token is None:
            return
        sent = request.headers.get("authorization", "")
        if not secrets.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise ServiceError(
                401,
                "this service needs a bearer token: send Authorization: Bearer TOKEN",
                {"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(authorized)]

    async def rank(queries: list[Query]) -> tuple[list, int]:
        service.ready()
        try:
            return await service.batcher.rank(queries)
        except QueryError as e:
            raise ServiceError(404 if e.unknown_user else 422, str(e), index=e.index) from None

    @app.post(
        "/recommend", response_model=RecommendResponse, responses=ERRORS, dependencies=guarded
    )
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        """Top-k items for one user or watch history."""
        (result,), version = await rank([_query(body)])
        return _response(result, version)

    @app.post(
        "/recommend/batch", response_model=BatchResponse, responses=ERRORS, dependencies=guarded
    )
    async def recommend_batch(body: BatchRequest) -> BatchResponse:
        """Many rankings in one call: one forward and one matrix product for all of them,
        against one catalog version. An error names the request it is about."""
        if len(body.requests) > config.max_batch:
            raise ServiceError(
                413,
                f"the batch holds {len(body.requests)} requests, over this server's "
                f"{config.max_batch}: split it",
            )
        try:
            results, version = await rank([_query(r) for r in body.requests])
        except ServiceError as e:
            raise ServiceError(e.status, f"requests[{e.index}]: {e.detail}") from None
        return BatchResponse(
            results=[_response(r, version) for r in results], catalog_version=version
        )

    # HEAD too: load balancers and uptime probes often check health with it.
    @app.api_route("/healthz", methods=["GET", "HEAD"], responses=ERRORS)
    async def healthz() -> dict:
        """The process is alive."""
        return {"status": "alive"}

    @app.api_route("/readyz", methods=["GET", "HEAD"], responses=ERRORS)
    async def readyz() -> dict:
        """The run and its catalog are loaded: rankings will be answered."""
        ranker = service.ready()
        return {"status": "ready", "catalog_version": ranker.snapshot.version}

    @app.get("/metadata", response_model=Metadata, responses=ERRORS, dependencies=guarded)
    async def metadata() -> Metadata:
        """The run, its feature manifest, and the catalog version being served."""
        ranker = service.ready()
        snap = ranker.snapshot
        return Metadata(
            run=str(ranker.run.path),
            run_id=ranker.config.run_id,
            fusion=ranker.model.config.fusion,
            ids=ranker.model.config.ids,
            layers=ranker.layers,
            users=len(ranker.user_index),
            max_history_used=ranker.model.config.max_len,
            new_item_lift=ranker.model.config.new_item_lift,
            manifest=ranker.config.manifest,
            catalog=CatalogInfo(version=snap.version, size=snap.size, added=snap.added),
        )

    @app.get(
        "/items/{item_id}", response_model=ItemResponse, responses=ERRORS, dependencies=guarded
    )
    async def item(item_id: str) -> ItemResponse:
        """Whether an item is in the catalog being served."""
        ranker = service.ready()
        snap = ranker.snapshot
        if item_id not in snap.index:
            raise ServiceError(
                404,
                f"item {item_id!r} is not in the catalog (version {snap.version}, "
                f"{snap.size:,} items): add it with `linkedout catalog add`",
            )
        return ItemResponse(
            item_id=item_id, trained=item_id in ranker.trained, catalog_version=snap.version
        )

    _install_error_handlers(app)
    return app


def _query(body: RecommendRequest) -> Query:
    return Query(
        history=body.history, user=body.user, k=body.k, exclude=body.exclude, explain=body.explain
    )


def _response(result, version: int) -> RecommendResponse:
    data = asdict(result)
    data.pop("history")
    data["gate"] = {str(k): v for k, v in data["gate"].items()}
    return RecommendResponse(**data, catalog_version=version)


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


def app_from_env() -> FastAPI:
    """The app of one server process, its settings handed over by `linkedout serve`."""
    config = ServeConfig.from_env()
    threads = config.threads or max(1, (os.cpu_count() or 1) // config.workers)
    torch.set_num_threads(threads)
    return create_app(config)
