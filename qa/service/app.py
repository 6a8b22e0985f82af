"""`create_app`: one pipeline, corpus writer and rebuild runner per process, the routers, and the error handlers."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from qa import __version__
from qa.config import Config
from qa.embedding import Embedder
from qa.index import IndexProblem, NoIndex
from qa.ingest import Ingest, ledger_path
from qa.ingest.metrics import IngestCollector
from qa.pipeline import Pipeline
from qa.service.metrics import Metrics, RequestMetrics
from qa.service.middleware import BodyLimit
from qa.service.routes import answers, documents, health, index, pages
from qa.updates import CorpusWriter, Rebuilds, WriteRejected, recover

#: The HTTP status of each kind of rejected write.
REJECTED_STATUS = {"invalid": 422, "unsupported": 415, "missing": 404, "conflict": 409, "busy": 409}


def create_app(config: Config | None = None, embedder: Embedder | None = None, watch: bool = False) -> FastAPI:
    """`watch`: also run the folder watcher, and the feed poller when QA_FEEDS is set (qa/ingest/)."""
    config = config or Config.load()
    embedder = embedder or Embedder.from_config(config)
    pipeline = Pipeline(config, embedder)
    recover(config)  # writes a crash cut short, settled before serving
    ingest = Ingest(config, embedder) if watch else None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        embedder.model, embedder.question_model  # load before answering health checks, so the first question is not slow
        await run_in_threadpool(pipeline.reader.warm)
        if config.rerank_passages:
            await run_in_threadpool(pipeline.reranker.warm)
        app.state.models_loaded = True
        if ingest is not None:
            ingest.start()
        yield
        if ingest is not None:
            await run_in_threadpool(ingest.stop)

    app = FastAPI(
        lifespan=lifespan,
        title="News QA",
        version=__version__,
        description="Extractive answers from news articles: verbatim spans with offsets, scores and sources.",
    )
    app.state.config, app.state.pipeline = config, pipeline
    app.state.writer, app.state.rebuilds = CorpusWriter(config, embedder), Rebuilds(config, embedder)
    app.state.metrics, app.state.models_loaded = Metrics(), False
    app.state.metrics.registry.register(IngestCollector(ledger_path(config)))  # feeds and watched files, from the ledger
    app.state.templates = Jinja2Templates(directory=str(config.web / "templates"))
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    app.mount("/static", StaticFiles(directory=str(config.web / "static")), name="static")
    for module in (answers, documents, index, health, pages):
        app.include_router(module.router)
    add_error_handlers(app)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON with a `detail` a person can act on, and the status that fits."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message = "; ".join(f"{_where(e['loc']) or 'body'}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": message or "invalid request", "errors": _jsonable(errors)}, status_code=422)

    @app.exception_handler(NoIndex)
    async def no_index(_: Request, exc: NoIndex) -> JSONResponse:
        return JSONResponse({"detail": "no index yet: run `qa index`"}, status_code=503)

    @app.exception_handler(IndexProblem)
    async def index_problem(_: Request, exc: IndexProblem) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(WriteRejected)
    async def write_rejected(_: Request, exc: WriteRejected) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=REJECTED_STATUS[exc.kind])


def _where(loc: tuple) -> str:
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    return ".".join(str(p) for p in parts)


def _jsonable(errors: list[dict]) -> list[dict]:
    return [{k: (v if isinstance(v, (str, int, float, list, type(None))) else str(v)) for k, v in e.items()} for e in errors]
