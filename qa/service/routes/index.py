"""The index: health, background rebuilds and their progress."""

from __future__ import annotations

from fastapi import APIRouter

from qa.index import NoIndex
from qa.ingest import ingest_status
from qa.service.deps import ApiKey, ConfigDep, PipelineDep, RebuildsDep
from qa.service.schemas import Health, IndexStatus, RebuildRequest

router = APIRouter(prefix="/api", tags=["index"])


@router.get("/health", response_model=Health, summary="Whether an index is served, and which")
def health(config: ConfigDep, pipeline: PipelineDep) -> Health:
    try:
        index = pipeline.index()
    except NoIndex:
        return Health(status="no index", documents=0, passages=0, index_version=None, model=config.model)
    m = index.manifest
    return Health(status="ok", documents=m.documents, passages=m.passages, index_version=m.version, model=m.model, built=m.created)


@router.post(
    "/index/rebuild",
    status_code=202,
    response_model=IndexStatus,
    dependencies=[ApiKey],
    summary="Start a background rebuild (incremental, or full)",
)
def rebuild(rebuilds: RebuildsDep, request: RebuildRequest | None = None) -> IndexStatus:
    rebuilds.start(full=bool(request and request.full), allow_removals=bool(request and request.allow_removals))
    return IndexStatus(**rebuilds.status_dict())


@router.get("/index/status", response_model=IndexStatus, summary="Progress of the last background rebuild, and the last ingest")
def index_status(rebuilds: RebuildsDep, config: ConfigDep) -> IndexStatus:
    return IndexStatus(**rebuilds.status_dict(), ingest=ingest_status(config))
