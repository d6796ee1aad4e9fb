"""The service's endpoints: rankings (behind the bearer token when one is set) and status
(health, readiness; metadata and items behind the token too). Each reads the process's
`Service` from `request.app.state.service` (app.py sets it)."""

from __future__ import annotations

import json
import secrets

from fastapi import APIRouter, Depends, Request, Response

from linkedout.service.ranker import RankRequest, RankRequestError
from linkedout.service.results import Recommendations, recommendations_json
from linkedout.service.schema import (
    BatchRequest,
    BatchResponse,
    CatalogInfo,
    IndexInfo,
    ItemResponse,
    Metadata,
    Problem,
    RecommendRequest,
    RecommendResponse,
)
from linkedout.service.state import Service, ServiceError

RANKING_PATHS = ("/recommend", "/recommend/batch")
ERRORS = {code: {"model": Problem} for code in (400, 401, 404, 408, 413, 415, 422, 503)}


def _service(request: Request) -> Service:
    return request.app.state.service


async def authorized(request: Request) -> None:
    """The bearer token, when the server has one (app.state.token). Async: FastAPI runs a
    plain function dependency in its thread pool, a thread hop on every ranking."""
    token = request.app.state.token
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
rankings = APIRouter(dependencies=guarded)
status = APIRouter()


async def _rank(service: Service, requests: list[RankRequest]) -> tuple[list, int]:
    service.ready()
    try:
        return await service.batcher.rank(requests)
    except RankRequestError as e:
        raise ServiceError(404 if e.unknown_user else 422, str(e), index=e.index) from None


@rankings.post("/recommend", response_model=RecommendResponse, responses=ERRORS)
async def recommend(body: RecommendRequest, request: Request) -> Response:
    """Top-k items for one user or watch history."""
    (result,), version = await _rank(_service(request), [_query(body)])
    return _json(_response(result, version))


@rankings.post("/recommend/batch", response_model=BatchResponse, responses=ERRORS)
async def recommend_batch(body: BatchRequest, request: Request) -> Response:
    """Many rankings in one call: one forward and one matrix product for all of them,
    against one catalog version. An error names the request it is about."""
    service = _service(request)
    limit = service.config.max_batch
    if len(body.requests) > limit:
        raise ServiceError(
            413,
            f"the batch holds {len(body.requests)} requests, over this server's {limit}: split it",
        )
    try:
        results, version = await _rank(service, [_query(r) for r in body.requests])
    except ServiceError as e:
        raise ServiceError(e.status, f"requests[{e.index}]: {e.detail}") from None
    return _json({"results": [_response(r, version) for r in results], "catalog_version": version})


# HEAD too: load balancers and uptime probes often check health with it.
@status.api_route("/healthz", methods=["GET", "HEAD"], responses=ERRORS)
async def healthz() -> dict:
    """The process is alive."""
    return {"status": "alive"}


@status.api_route("/readyz", methods=["GET", "HEAD"], responses=ERRORS)
async def readyz(request: Request) -> dict:
    """The run and its catalog are loaded: rankings will be answered. `catalog_error` says why
    newer catalog versions cannot be read (the store is out of reach, say), while the version
    loaded is still served."""
    service = _service(request)
    ranker = service.ready()
    ready = {"status": "ready", "catalog_version": ranker.snapshot.version}
    if service.catalog_error is not None:
        ready["catalog_error"] = service.catalog_error
    return ready


@status.get("/metadata", response_model=Metadata, responses=ERRORS, dependencies=guarded)
async def metadata(request: Request) -> Metadata:
    """The run, its feature manifest, and the catalog version being served."""
    ranker = _service(request).ready()
    snap = ranker.snapshot
    return Metadata(
        run=str(ranker.run.path),
        run_id=ranker.config.run_id,
        fusion=ranker.model.config.fusion,
        ids=ranker.model.config.ids,
        experts=ranker.experts,
        layers=ranker.experts,
        users=len(ranker.user_index),
        max_history_used=ranker.model.config.max_len,
        new_item_lift=ranker.model.config.new_item_lift,
        manifest=ranker.config.manifest,
        catalog=CatalogInfo(version=snap.version, size=snap.size, added=snap.added),
        index=_index_info(_service(request), snap),
    )


def _index_info(service: Service, snap) -> IndexInfo:
    graph, builds = snap.graph, service.builds
    return IndexInfo(
        mode=service.config.index,
        in_use="exact" if graph is None else "graph",
        graph_catalog_version=None if graph is None else graph.catalog_version,
        graph_items=None if graph is None else graph.covered,
        beside_graph=None if graph is None else len(graph.side),
        building=builds is not None and builds.building,
        error=None if builds is None else builds.error,
    )


@status.get("/items/{item_id}", response_model=ItemResponse, responses=ERRORS, dependencies=guarded)
async def item(item_id: str, request: Request) -> ItemResponse:
    """Whether an item is in the catalog being served."""
    ranker = _service(request).ready()
    snap = ranker.snapshot
    if item_id not in snap.index:
        raise ServiceError(
            404,
            f"item {item_id!r} is not in the catalog (version {snap.version}, "
            f"{snap.size:,} items): add it with `linkedout catalog add`",
        )
    return ItemResponse(
        item_id=item_id, trained=item_id in ranker.index, catalog_version=snap.version
    )


def _query(body: RecommendRequest) -> RankRequest:
    return RankRequest(
        history=body.history, user=body.user, k=body.k, exclude=body.exclude, explain=body.explain
    )


def _response(result: Recommendations, version: int) -> dict:
    """A `RecommendResponse`'s fields (the schema documents them; they are built here, not
    validated again: they come from the ranker, not from a client)."""
    data = recommendations_json(result)
    data.pop("history")
    data["catalog_version"] = version
    return data


def _json(data: dict) -> Response:
    """A ranking's answer, encoded once: FastAPI would validate a returned model against the
    response model and encode it through `jsonable_encoder`, which cost more than the ranking
    itself. Scores are finite (the ranker drops the masked ones), so plain JSON holds them."""
    return Response(json.dumps(data, separators=(",", ":")), media_type="application/json")
