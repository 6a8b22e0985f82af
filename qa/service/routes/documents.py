"""Documents: list and read the indexed articles; add, replace and delete them (with the API key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from qa.service.deps import ApiKey, PipelineDep, WriterDep
from qa.service.schemas import (
    ARTICLE_BODY,
    ArticleIn,
    Deleted,
    DocumentDetail,
    DocumentPage,
    Saved,
    SavedDocument,
)
from qa.updates import CorpusWriter

router = APIRouter(prefix="/api/documents", tags=["documents"])


@router.get("", response_model=DocumentPage, summary="List the indexed articles")
def documents(
    pipeline: PipelineDep,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # SQLite's integers are 64-bit
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DocumentPage:
    index = pipeline.index()
    return DocumentPage(total=index.manifest.documents, offset=offset, limit=limit, documents=index.store.documents(offset, limit))


@router.get("/{doc_id:path}", response_model=DocumentDetail, summary="One article, with its text")
def document(doc_id: str, pipeline: PipelineDep) -> DocumentDetail:
    store = pipeline.index().store
    found = store.document(doc_id)
    if found is None:
        raise HTTPException(404, f"no document {doc_id!r}")
    cluster = store.clusters([doc_id]).get(doc_id, doc_id)
    return DocumentDetail(**found, cluster=cluster, copies=[m for m in store.cluster_members(cluster) if m != doc_id])


@router.post(
    "",
    status_code=201,
    response_model=Saved,
    dependencies=[ApiKey],
    summary="Add or replace an article (JSON, or an uploaded file)",
    openapi_extra=ARTICLE_BODY,
)
async def add_document(request: Request, writer: WriterDep) -> Saved:
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is not None and hasattr(upload, "read") and getattr(upload, "filename", ""):
            data = await upload.read()
            docs, summary = await run_in_threadpool(writer.add_file, upload.filename, data)
        else:
            fields = {k: v for k, v in form.items() if isinstance(v, str) and v != ""}
            doc, summary = await run_in_threadpool(_add_article, writer, _article(fields))
            docs = [doc]
    elif kind.startswith("application/json"):
        try:
            article = ArticleIn.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from exc
        doc, summary = await run_in_threadpool(_add_article, writer, article)
        docs = [doc]
    else:
        raise HTTPException(415, "send JSON ({title, text, ...}) or a multipart form with 'file'")
    return Saved(
        documents=[SavedDocument(id=d.id, title=d.title, date=d.date) for d in docs], index_version=summary.version, summary=summary.line()
    )


@router.delete("/{doc_id:path}", response_model=Deleted, dependencies=[ApiKey], summary="Delete an article")
async def delete_document(doc_id: str, writer: WriterDep) -> Deleted:
    # Index updates block on embedding and the build lock: they run off the event loop.
    summary = await run_in_threadpool(writer.delete, doc_id)
    return Deleted(deleted=doc_id, index_version=summary.version)


def _article(fields: dict[str, str]) -> ArticleIn:
    try:
        return ArticleIn(**fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


def _add_article(writer: CorpusWriter, article: ArticleIn):
    return writer.add_text(article.title, article.text, article.id, date=article.date, url=article.url, source=article.source)
