"""Liveness, readiness and metrics: what a load balancer and Prometheus ask a replica."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qa.index import IndexProblem
from qa.service.deps import PipelineDep, RebuildsDep
from qa.service.schemas import Liveness, Readiness
from qa.updates import REBUILD_PHASES

router = APIRouter(tags=["operations"])


@router.get("/livez", response_model=Liveness, summary="The process answers (restart it when this fails)")
def livez() -> Liveness:
    return Liveness(status="alive")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: the reason says what is missing"}},
    summary="Ready for questions: models loaded and an index version open",
)
def readyz(request: Request, pipeline: PipelineDep) -> Readiness | JSONResponse:
    if not getattr(request.app.state, "models_loaded", False):
        return JSONResponse(Readiness(ready=False, reason="loading the models").model_dump(), status_code=503)
    try:
        version = pipeline.index().version
    except IndexProblem as exc:
        return JSONResponse(Readiness(ready=False, reason=str(exc)).model_dump(), status_code=503)
    return Readiness(ready=True, index_version=version)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics", include_in_schema=True)
def metrics(request: Request, pipeline: PipelineDep, rebuilds: RebuildsDep) -> Response:
    m = request.app.state.metrics
    try:
        m.index_version.set(pipeline.index().version)
    except IndexProblem:
        m.index_version.set(0)
    status = rebuilds.status
    m.build_done.set(status.done)
    m.build_total.set(status.total)
    for phase in REBUILD_PHASES:
        m.build_phase.labels(phase).set(1.0 if status.phase == phase else 0.0)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
