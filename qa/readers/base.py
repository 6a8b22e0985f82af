"""What every reader shares: the `Reader` protocol, the sentences it reads, and the answer it makes.

A reader turns retrieved passages into extractive answers: verbatim spans with offsets. Both
readers start the same way (the sentences of the best passages, ranked against the question by
their index-time embeddings) and end the same way (an `Answer` for a span of a passage); the steps
between are theirs.
"""

from __future__ import annotations

import re
from typing import Protocol

import numpy as np

from qa.index import Index
from qa.index.base import PassageRow, SentenceRow
from qa.index.lexical import query_terms
from qa.models import Answer
from qa.retriever import Hit

_WHY = re.compile(r"\s*(why\b|what (was|is|were|are) the (reason|cause|motive|purpose)s?\b|for what reason)", re.I)


class Reader(Protocol):
    def read(
        self, question: str, question_vector: np.ndarray, index: Index, hits: list[Hit], rows: dict[int, PassageRow]
    ) -> list[Answer]: ...

    def warm(self) -> None:
        """Loads what the first question would otherwise wait for."""


def is_why(question: str) -> bool:
    """A question that asks for a reason: its answer is a clause, often spread over an article."""
    return bool(_WHY.match(question))


def stem(word: str) -> str:
    """A crude stem, enough to match 'partner' with 'partnership' and 'analyse' with 'analysed'."""
    w = word.lower()
    return w[:5] if len(w) > 5 else w


def question_stems(question: str) -> set[str]:
    return {stem(t) for t in query_terms(question)}


_CHOICE = re.compile(r"\bor\b", re.I)


def echoes(question: str, span: str) -> bool:
    """Whether the span only repeats the question: every content word of it is one of the question's
    ("Who is the harbour master of Quenby?" -> "Harbour master"). Such a span names what is asked
    about, not the answer. Words match whole, a plural "s" aside: the readers' five-letter stem
    would make "Powerserver" an echo of "power". A question that offers a choice ("X or Y?") holds
    its answer, so it is never an echo, and neither is a span without content words."""

    def words(text: str) -> set[str]:
        return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in query_terms(text)}

    span_words = words(span)
    return bool(span_words) and not _CHOICE.search(question) and span_words <= words(question)


def sentence_cosines(
    index: Index, hits: list[Hit], question_vector: np.ndarray
) -> tuple[dict[int, list[SentenceRow]], np.ndarray] | None:
    """The sentences of the hits' passages and each one's cosine with the question, in hit order.

    None when the passages have no sentences. The vectors were stored at index time, so no model runs.
    """
    sentences = index.store.sentences([h.passage_id for h in hits])
    ids = [s.id for h in hits for s in sentences[h.passage_id]]
    if not ids:
        return None
    return sentences, index.sentence_embeddings(ids) @ question_vector


def trim(text: str, start: int, end: int, trailing: str = ",;:") -> tuple[int, int]:
    """text[start:end] without surrounding spaces, leading clause punctuation and `trailing` characters."""
    while start < end and (text[start].isspace() or text[start] in ",;:"):
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in trailing):
        end -= 1
    return start, end


def make_answer(row: PassageRow, start: int, end: int, sentence_start: int, sentence_end: int, score: float) -> Answer:
    """The answer object for passage[start:end], inside passage[sentence_start:sentence_end]."""
    return Answer(
        text=row.text[start:end],
        score=round(score, 4),
        start=start,
        end=end,
        document_start=row.start + start,
        document_end=row.start + end,
        sentence=row.text[sentence_start:sentence_end],
        sentence_start=sentence_start,
        passage_id=row.id,
        document_id=row.document_id,
        title=row.title,
        date=row.date,
        url=row.url,
    )
