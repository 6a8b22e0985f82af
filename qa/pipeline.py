"""Question in, answer object out: embed the question, retrieve passages, re-rank them (optional), read answers.

The pipeline follows the published index: each question runs against one complete version,
and a newer version is picked up as soon as `CURRENT` names it.
"""

from __future__ import annotations

import threading
import time

from qa.config import Config
from qa.embedding import Embedder
from qa.index import Index, open_index, published_version
from qa.models import Answer, AskResult, Filters, PassageHit, TemporalIntent, TimelineEntry
from qa.readers import Reader, make_reader
from qa.readers.aggregate import same_answer
from qa.reranker import Reranker
from qa.retriever import Hit, Retriever
from qa.temporal import date_prior, temporal_intent, without_phrase


class Pipeline:
    def __init__(self, config: Config, embedder: Embedder | None = None, reader: Reader | None = None) -> None:
        self.config = config
        self.embedder = embedder or Embedder.from_config(config)
        self.retriever = Retriever(config)
        self.reader = reader or make_reader(config)
        self.reranker = Reranker(config)
        self._index: Index | None = None
        self._lock = threading.Lock()

    def index(self) -> Index:
        """The current published version, reloaded when a newer one is published."""
        latest = published_version(self.config)
        loaded = self._index
        if loaded is not None and loaded.version == latest:
            return loaded
        with self._lock:
            if self._index is None or self._index.version != latest:
                # The old version stays open for requests already using it; its files are only
                # removed several versions later.
                self._index = open_index(self.config)
            return self._index

    def ask(self, question: str, top_k: int | None = None, filters: Filters | None = None) -> AskResult:
        self.embedder.question_model  # loaded once, outside the timing
        started = time.perf_counter()
        top_k = top_k or self.config.top_k
        index = self.index()
        vector = self.embedder.embed_questions([question])[0]
        wanted = max(top_k, self.config.read_passages, self.config.rerank_passages)
        intent = temporal_intent(question, filters.as_of if filters else None) if self.config.recency_weight > 0 else None
        # A question that says when re-orders all the candidates by date, not only the first few.
        hits = self.retriever.retrieve(index, vector, question, max(wanted, self.config.candidates) if intent else wanted, filters)
        rows = index.store.passages([h.passage_id for h in hits])
        if intent is not None and not any(rows[h.passage_id].date for h in hits if h.passage_id in rows):
            intent = None  # nothing dated to weigh: the question is read as it is
        if intent is not None:
            hits = self._weigh_dates(hits, rows, intent)[:wanted]
        if self.config.rerank_passages:
            head = [h.passage_id for h in hits[: self.config.rerank_passages]]
            hits = self.reranker.rerank(question, hits, rows, index.store.sentences(head))
        answers = self.reader.read(without_phrase(question, intent), vector, index, hits, rows)
        if self._answer_goes_first(answers, hits):
            hits = sorted(hits, key=lambda h: h.passage_id != answers[0].passage_id)
        kept, copies = self._fold_copies(index, hits, rows)
        passages = [
            PassageHit(
                id=h.passage_id,
                document_id=rows[h.passage_id].document_id,
                title=rows[h.passage_id].title,
                text=rows[h.passage_id].text,
                score=round(h.score, 4),
                rerank=None if h.rerank is None else round(h.rerank, 4),
                start=rows[h.passage_id].start,
                end=rows[h.passage_id].end,
                date=rows[h.passage_id].date,
                url=rows[h.passage_id].url,
                source=rows[h.passage_id].source,
                copies=copies.get(h.passage_id, []),
            )
            for h in kept[:top_k]
        ]
        return AskResult(
            question=question,
            answers=answers,
            passages=passages,
            no_answer=not answers,
            took_ms=round((time.perf_counter() - started) * 1000, 2),
            index_version=index.version,
            temporal=intent,
            timeline=timeline(answers),
        )

    def _weigh_dates(self, hits: list[Hit], rows: dict, intent: TemporalIntent) -> list[Hit]:
        """The hits re-scored by their passages' dates (qa/temporal.py), best first."""
        weight, half_life = self.config.recency_weight, self.config.recency_half_life_days
        for h in hits:
            row = rows.get(h.passage_id)
            prior = date_prior(intent, row.date if row else None, half_life)
            h.score = max(0.0, h.score - weight * (1.0 - prior))
        return sorted(hits, key=lambda h: -h.score)

    @staticmethod
    def _fold_copies(index: Index, hits: list[Hit], rows: dict) -> tuple[list[Hit], dict[int, list[str]]]:
        """The hits with copies of one story folded: a passage of an article whose near-duplicate
        cluster an earlier passage's other article is in is dropped, and that earlier passage lists
        it. Passages of the same article are not copies of each other."""
        found = [h for h in hits if h.passage_id in rows]
        clusters = index.store.clusters(sorted({rows[h.passage_id].document_id for h in found}))
        kept: list[Hit] = []
        first: dict[str, tuple[int, str]] = {}  # cluster -> (kept passage, its document)
        copies: dict[int, list[str]] = {}
        for h in found:
            doc = rows[h.passage_id].document_id
            cluster = clusters.get(doc, doc)
            if cluster in first and first[cluster][1] != doc:
                folded = copies.setdefault(first[cluster][0], [])
                if doc not in folded:
                    folded.append(doc)
                continue
            first.setdefault(cluster, (h.passage_id, doc))
            kept.append(h)
        return kept, copies

    def _answer_goes_first(self, answers: list[Answer], hits: list[Hit]) -> bool:
        """The span reader has read the passages with the question, which retrieval has not: its
        likely answer's passage is the better first passage. Not the sentence reader's (its score
        is a heuristic, and its choice lost places on the calibration fold), and not over an order a
        cross-encoder made, which the reader does not improve on (docs/evaluation.md)."""
        return bool(
            answers and self.config.reader == "span" and answers[0].score >= self.config.answer_passage_first and hits[0].relevance is None
        )


def timeline(answers: list[Answer]) -> list[TimelineEntry]:
    """The answers newest first, each with its date, when they differ and their dates do too
    ("2020-04-06: Arvind Krishna · 2014-08-23: Ginni Rometty"); empty otherwise."""
    distinct: list[Answer] = []
    for a in answers:
        if a.date and not any(same_answer(a.text, b.text) for b in distinct):
            distinct.append(a)
    if len(distinct) < 2 or len({a.date for a in distinct}) < 2:
        return []
    ordered = sorted(distinct, key=lambda a: (a.date, a.score), reverse=True)
    return [TimelineEntry(date=a.date, text=a.text, score=a.score) for a in ordered]
