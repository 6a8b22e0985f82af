"""Request and response bodies of the JSON API; every endpoint declares one, so /docs shows them."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from qa.models import Filters

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
            "examples": [
                {"title": "Harbour reopens", "text": "The harbour reopened on Monday after a two-year rebuild.", "source": "Local News"}
            ]
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
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "An article file: .txt, .md, .html, .json or .jsonl"}
                    },
                    "required": ["file"],
                }
            },
        },
    }
}


class RebuildRequest(BaseModel):
    full: bool = Field(False, description="Start over instead of updating")
    allow_removals: bool = Field(
        False, description="Remove documents gone from the corpus folder even when they are more than QA_MAX_REMOVE_FRACTION of the index"
    )


class Health(BaseModel):
    status: str = Field(description='"ok", or "no index" before the first `qa index`')
    documents: int
    passages: int
    index_version: int | None
    model: str = Field(description="The embedding model of the index (or the configured one, without an index)")
    built: str | None = Field(None, description="When the served version was published (ISO 8601)")


class DocumentSummary(BaseModel):
    id: str
    title: str
    date: str | None = None
    url: str | None = None
    source: str | None = None
    path: str | None = Field(None, description="The article's file, relative to the corpus folder")
    passages: int


class DocumentDetail(DocumentSummary):
    text: str
    hash: str = Field(description="SHA-256 of the article's content: what incremental indexing compares")
    cluster: str | None = Field(
        None, description="The id of the article's cluster of near-duplicates (wire copies, re-posts): its smallest id, or its own"
    )
    copies: list[str] = Field(default_factory=list, description="The other articles of its cluster, by id")


class DocumentPage(BaseModel):
    total: int
    offset: int
    limit: int
    documents: list[DocumentSummary]


class SavedDocument(BaseModel):
    id: str
    title: str
    date: str | None = None


class Saved(BaseModel):
    documents: list[SavedDocument]
    index_version: int | None
    summary: str = Field(description="What the index build did, in one line")


class Deleted(BaseModel):
    deleted: str
    index_version: int | None


class IngestStatus(BaseModel):
    """The watched folder and the feeds (qa/ingest/), from the ledger."""

    last_ingest: str | None = Field(None, description="When a watcher or poller build last changed the index (UTC)")
    added_last_hour: int = Field(0, description="Articles the watcher and the poller added in the last hour")
    feeds: int = Field(0, description="Feeds followed")
    failing_feeds: int = Field(0, description="Feeds whose last poll failed (retried after a backoff)")
    waiting_entries: int = Field(0, description="Feed entries seen or fetched, not yet indexed")


class IndexStatus(BaseModel):
    phase: str = Field(
        description="idle, reading, embedding, publishing, done, failed, or refused: the corpus folder is missing, or the build "
        "would remove more than QA_MAX_REMOVE_FRACTION of the documents (`error` says which; nothing was published)"
    )
    done: int
    total: int
    full: bool
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    summary: dict | None = Field(None, description="The finished build's counts")
    ingest: IngestStatus | None = Field(None, description="Watched folder and feeds; null when nothing was ever ingested")


class Liveness(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    index_version: int | None = None
    reason: str | None = Field(None, description="What is missing, when not ready")
