"""Data that crosses a boundary: articles read from disk, and the answer object the API returns."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field

from pydantic import BaseModel, Field, field_validator


@dataclass
class Document:
    """One article. `text` is the body; every offset in the project points into it."""

    id: str
    title: str
    text: str
    date: str | None = None
    url: str | None = None
    source: str | None = None
    path: str | None = None

    @property
    def hash(self) -> str:
        payload = json.dumps([self.title, self.text, self.date, self.url, self.source], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class Sentence:
    start: int  # offsets in the passage text
    end: int


@dataclass
class Passage:
    document_id: str
    ordinal: int
    start: int  # offsets in the document text
    end: int
    text: str
    sentences: list[Sentence] = field(default_factory=list)


class Filters(BaseModel):
    """Restrict retrieval to some articles."""

    document_id: str | None = None
    source: str | None = None
    date_from: str | None = Field(None, description="ISO date, inclusive")
    date_to: str | None = Field(None, description="ISO date, inclusive")
    as_of: str | None = Field(
        None,
        description="ISO date (YYYY-MM-DD): answer as a reader on that day would. Articles dated after it are left out; "
        "undated ones stay in (date_to drops them)",
        examples=["2022-02-05"],
    )

    @field_validator("as_of")
    @classmethod
    def iso_day(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        value = value.strip()
        try:
            if len(value) != 10:
                raise ValueError
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            raise ValueError(f"not a date: {value!r}; use YYYY-MM-DD, e.g. 2022-02-05") from None

    def empty(self) -> bool:
        return not any(self.model_dump().values())


class AnswerSource(BaseModel):
    """One occurrence of an answer: where a passage says it."""

    document_id: str
    title: str
    date: str | None = None
    url: str | None = None
    passage_id: int
    text: str = Field(description="The span as this passage words it")
    start: int = Field(description="Offset of the span in the passage text")
    end: int
    document_start: int = Field(description="Offset of the span in the document text")
    document_end: int
    score: float = Field(ge=0.0, le=1.0, description="This occurrence's calibrated probability")


class Answer(BaseModel):
    text: str = Field(description="A verbatim span of the article")
    score: float = Field(ge=0.0, le=1.0)
    start: int = Field(description="Offset of the answer in the passage text")
    end: int
    document_start: int = Field(description="Offset of the answer in the document text")
    document_end: int
    sentence: str = Field(description="The sentence that holds the answer")
    sentence_start: int = Field(description="Offset of the sentence in the passage text")
    passage_id: int
    document_id: str
    title: str
    date: str | None = Field(None, description="The date of its newest source")
    url: str | None = None
    sources: list[AnswerSource] = Field(
        default_factory=list,
        description="Every passage that gives this answer (the same text, or a name with words added), best first; "
        "the fields above are the best one's",
    )
    articles: int = Field(1, description="Independent articles that give it: copies of one story count once")
    support: float = Field(
        0.0, ge=0.0, le=1.0, description="Noisy-OR of the best probability in each independent article (not calibrated)"
    )


class PassageHit(BaseModel):
    id: int
    document_id: str
    title: str
    text: str
    score: float = Field(description="Fused retrieval score")
    rerank: float | None = Field(
        None, description="The cross-encoder's probability that the passage answers (set when QA_RERANK_PASSAGES is on)"
    )
    start: int = Field(description="Offset of the passage in the document text")
    end: int
    date: str | None = None
    url: str | None = None
    source: str | None = None
    copies: list[str] = Field(
        default_factory=list, description="Near-duplicate articles whose passages were folded into this one (copies of one story)"
    )


class TemporalIntent(BaseModel):
    """What a question says about time (qa/temporal.py), and the day it is read relative to."""

    kind: str = Field(description="recent (newer passages preferred) or period (passages dated inside it preferred)")
    reference: str = Field(description="The day the question is asked relative to: as_of, else today")
    phrase: str = Field(description="The words of the question that say it")
    start: str | None = Field(None, description="period: its first day")
    end: str | None = Field(None, description="period: its last day")


class TimelineEntry(BaseModel):
    date: str
    text: str
    score: float


class AskResult(BaseModel):
    question: str
    answers: list[Answer]
    passages: list[PassageHit] = Field(
        description="Best first: the retrieval (or cross-encoder) order, except that a likely answer's passage comes first"
    )
    no_answer: bool
    took_ms: float
    index_version: int | None = None
    temporal: TemporalIntent | None = Field(None, description="The question's temporal intent, when it has one (dates then weigh in)")
    timeline: list[TimelineEntry] = Field(
        default_factory=list,
        description="When the answers differ and come from different dates: each answer with its date (its newest source's), newest first",
    )
