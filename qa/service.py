"""The FastAPI application: the JSON answer API, document management, and the web form."""

from __future__ import annotations

import contextlib
import hmac
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qa import __version__
from qa.config import Config
from qa.embedding import Embedder
from qa.index import IndexProblem, NoIndex
from qa.models import AskResult, Filters
from qa.pipeline import Pipeline
from qa.updates import IndexManager, UpdateError

IBM_EXAMPLE = {"question": "Why did IBM partner with Inspur?", "top_k": 5}


class AskRequest(BaseModel):
    question: str = Field(description="The question, in plain words")
    top_k: int = Field(5, description="Passages to return (1-50)")
    filters: Filters | None = None

    model_config = {"json_schema_extra": {"examples": [IBM_EXAMPLE]}}


class ArticleIn(BaseModel):
    title: str = Field(min_length=1)
    text: str = Field(min_length=1)
    id: str | None = Field(None, description="Replaces the article with this id when it exists")
    date: str | None = None
    url: str | None = None
    source: str | None = None

    model_config = {
        "json_schema_extra": {
            "examples": [{"title": "Harbour reopens", "text": "The harbour reopened on Monday after a two-year rebuild.", "source": "Local News"}]
        }
    }

    @field_validator("title", "text")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


# The add-article endpoint reads its body itself (JSON or a file), so its schema is spelled out here.
ARTICLE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ArticleIn.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary",
                                            "description": "An article file: .txt, .md, .html, .json or .jsonl"}},
                    "required": ["file"],
                }
            },
        },
    }
}


class RebuildRequest(BaseModel):
    full: bool = Field(False, description="Start over instead of updating")


class BodyLimit:
    """Refuses request bodies over the limit with 413, whether or not they declare their length."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse({"detail": f"request body over the limit of {self.limit} bytes"}, status_code=413)
        await response({"type": "http"}, _no_receive, send)


class _TooLarge(Exception):
    pass


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app(config: Config | None = None, embedder: Embedder | None = None) -> FastAPI:
    config = config or Config.load()
    embedder = embedder or Embedder.from_config(config)
    pipeline = Pipeline(config, embedder)
    manager = IndexManager(config, embedder)
    manager.recover()
    templates = Jinja2Templates(directory=str(config.web / "templates"))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        embedder.model  # load before answering health checks, so the first question is not slow
        await run_sync(pipeline.reader.warm)
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="News QA",
        version=__version__,
        description="Extractive answers from news articles: verbatim spans with offsets, scores and sources.",
    )
    app.state.config, app.state.pipeline, app.state.manager = config, pipeline, manager
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.mount("/static", StaticFiles(directory=str(config.web / "static")), name="static")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message = "; ".join(f"{_where(e['loc']) or 'body'}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": message or "invalid request", "errors": jsonable(errors)}, status_code=422)

    @app.exception_handler(NoIndex)
    async def no_index(_: Request, exc: NoIndex) -> JSONResponse:
        return JSONResponse({"detail": "no index yet: run `qa index`"}, status_code=503)

    @app.exception_handler(IndexProblem)
    async def index_problem(_: Request, exc: IndexProblem) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(UpdateError)
    async def update_error(_: Request, exc: UpdateError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    def require_key(request: Request) -> None:
        if not config.api_key:
            raise HTTPException(403, "write endpoints are disabled: set QA_API_KEY to enable them")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.encode(), config.api_key.encode()):
            raise HTTPException(403, "wrong API key")

    def check_question(question: str, top_k: int) -> None:
        if not question.strip():
            raise HTTPException(422, "question: must not be empty")
        if len(question) > config.max_question_chars:
            raise HTTPException(422, f"question: longer than {config.max_question_chars} characters")
        if not 1 <= top_k <= config.max_top_k:
            raise HTTPException(422, f"top_k: must be between 1 and {config.max_top_k}")

    # Answers.

    @app.post("/api/ask", response_model=AskResult, tags=["answers"], summary="Answer a question")
    def ask(request: Annotated[AskRequest, Body(openapi_examples={"ibm": {"value": IBM_EXAMPLE}})]) -> AskResult:
        check_question(request.question, request.top_k)
        return pipeline.ask(request.question, request.top_k, request.filters)

    @app.get("/api/ask", response_model=AskResult, tags=["answers"], summary="Answer a question (query string)")
    def ask_get(
        q: Annotated[str, Query(description="The question", examples=["Why did IBM partner with Inspur?"])],
        top_k: int = 5,
        document_id: str | None = None,
        source: str | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
    ) -> AskResult:
        check_question(q, top_k)
        filters = Filters(document_id=document_id, source=source, date_from=date_from, date_to=date_to)
        return pipeline.ask(q, top_k, filters)

    @app.get("/api/health", tags=["index"])
    def health() -> dict[str, Any]:
        try:
            index = pipeline.index()
        except NoIndex:
            return {"status": "no index", "documents": 0, "passages": 0, "index_version": None, "model": config.model}
        m = index.manifest
        return {"status": "ok", "documents": m.documents, "passages": m.passages, "index_version": m.version,
                "model": m.model, "built": m.created}

    # Documents.

    @app.get("/api/documents", tags=["documents"])
    def documents(offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # SQLite's integers are 64-bit
                  limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict:
        index = pipeline.index()
        return {"total": index.manifest.documents, "offset": offset, "limit": limit,
                "documents": index.store.documents(offset, limit)}

    @app.get("/api/documents/{doc_id:path}", tags=["documents"])
    def document(doc_id: str) -> dict:
        found = pipeline.index().store.document(doc_id)
        if found is None:
            raise HTTPException(404, f"no document {doc_id!r}")
        return found

    @app.post("/api/documents", status_code=201, tags=["documents"], dependencies=[Depends(require_key)],
              summary="Add or replace an article (JSON, or an uploaded file)", openapi_extra=ARTICLE_BODY)
    async def add_document(request: Request) -> dict:
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if upload is not None and hasattr(upload, "read") and getattr(upload, "filename", ""):
                data = await upload.read()
                docs, summary = await run_sync(manager.add_file, upload.filename, data)
            else:
                fields = {k: v for k, v in form.items() if isinstance(v, str) and v != ""}
                try:
                    article = ArticleIn(**fields)
                except ValidationError as exc:
                    raise RequestValidationError(exc.errors()) from exc
                doc, summary = await run_sync(add_article, article)
                docs = [doc]
        elif kind.startswith("application/json"):
            try:
                article = ArticleIn.model_validate_json(await request.body())
            except ValidationError as exc:
                raise RequestValidationError(exc.errors()) from exc
            doc, summary = await run_sync(add_article, article)
            docs = [doc]
        else:
            raise HTTPException(415, "send JSON ({title, text, ...}) or a multipart form with 'file'")
        return {"documents": [{"id": d.id, "title": d.title, "date": d.date} for d in docs],
                "index_version": summary.version, "summary": summary.line()}

    def add_article(article: ArticleIn):
        return manager.add_text(article.title, article.text, article.id, date=article.date, url=article.url,
                                source=article.source)

    @app.delete("/api/documents/{doc_id:path}", tags=["documents"], dependencies=[Depends(require_key)])
    async def delete_document(doc_id: str) -> dict:
        summary = await run_sync(manager.delete, doc_id)
        return {"deleted": doc_id, "index_version": summary.version}

    # Index management.

    @app.post("/api/index/rebuild", status_code=202, tags=["index"], dependencies=[Depends(require_key)])
    def rebuild(request: RebuildRequest | None = None) -> dict:
        manager.start_rebuild(full=bool(request and request.full))
        return manager.status_dict()

    @app.get("/api/index/status", tags=["index"])
    def index_status() -> dict:
        return manager.status_dict()

    # The web form.

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request, q: str = "", top_k: int = 5) -> HTMLResponse:
        result, error = None, None
        if q:
            try:
                check_question(q, top_k)
                result = pipeline.ask(q, top_k)
            except HTTPException as exc:
                error = exc.detail
            except IndexProblem as exc:
                error = "No index yet: run `qa index`." if isinstance(exc, NoIndex) else str(exc)
        return templates.TemplateResponse(
            request, "index.html", {"q": q, "result": result, "error": error, "examples": examples()}
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> RedirectResponse:
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @app.get("/add", response_class=HTMLResponse, include_in_schema=False)
    def add_page(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "add.html", {"max_bytes": config.max_body_bytes})

    def examples() -> list[str]:
        """Questions drawn from the corpus: what each of a few articles reports."""
        try:
            titles = pipeline.index().store.sample_titles(3)
        except IndexProblem:
            return []
        return [f"What happened: {t.rstrip('.?!')}?" for t in titles]

    return app


async def run_sync(fn, *args):
    """Index updates block on embedding and the build lock: keep them off the event loop."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def _where(loc: tuple) -> str:
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    return ".".join(str(p) for p in parts)


def jsonable(errors: list[dict]) -> list[dict]:
    return [{k: (v if isinstance(v, (str, int, float, list, type(None))) else str(v)) for k, v in e.items()} for e in errors]

