"""The sentence reader: the best sentences of the retrieved passages, with a heuristic answer span.

It needs no model of its own (the sentence vectors were stored at index time), reads in about a
millisecond, and answers why-questions with the reason clause of the best sentence, which the span
reader hands over to it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from qa.config import Config
from qa.index import Index
from qa.index.base import PassageRow
from qa.index.lexical import STOP_WORDS
from qa.models import Answer
from qa.readers.base import (
    is_why,
    make_answer,
    question_stems,
    sentence_cosines,
    stem,
    trim,
)
from qa.retriever import Hit

_WORD = re.compile(r"[\w'’%$£€.-]*\w|[\w$£€]")
_CAUSE = re.compile(
    r"\b(because|since|as a result of|due to|after|in order to|so that|so as to|aimed at|to help|"
    r"trying to|tried to|demanded|in a bid to|as part of|owing to|thanks to)\b",
    re.IGNORECASE,
)
# A trailing attribution (", Bloomberg reported", ", IBM said in an email", ", according to X") is
# not part of a reason; a relative clause (", which he said was late") is kept.
_ATTRIBUTION = re.compile(
    r",\s*(?!(?:which|that|who|whom|whose|where|when|while|as)\b)"
    r"(?:according to\b[^,;]*|[^,;]{1,60}?\b(?:said|says|reported|reports|told|added|noted|stated|announced|wrote|confirmed)\b[^,;]*)"
    r"[\s.;:]*$",
    re.IGNORECASE,
)
_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"
_NUMBER = re.compile(r"\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|hundred|thousand|million|billion)\b", re.I)
_DAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
# A year, a month or a weekday, or a day of the month next to a month: a lone small number is not a date.
_DATE = re.compile(
    rf"\b(\d{{4}}s?|{_MONTHS}|{_DAYS}|yesterday|today|\d{{1,2}}(st|nd|rd|th)?\s+({_MONTHS})|({_MONTHS})\s+\d{{1,2}})\b", re.I
)


@dataclass
class Candidate:
    passage: PassageRow
    sentence_start: int
    sentence_end: int
    score: float


class SentenceReader:
    def __init__(self, config: Config) -> None:
        self.config = config

    def warm(self) -> None:
        pass  # nothing to load

    def read(
        self, question: str, question_vector: np.ndarray, index: Index, hits: list[Hit], rows: dict[int, PassageRow]
    ) -> list[Answer]:
        hits = [h for h in hits if h.passage_id in rows][: self.config.read_passages]
        if not hits:
            return []
        why = is_why(question)
        if why:  # reasons are spread over an article: read all of the best one
            hits, rows = _whole_document(index, hits, rows)
        found = sentence_cosines(index, hits, question_vector)
        if found is None:
            return []
        sentences, cosines = found
        q_stems = question_stems(question)
        sentence_words = [
            {stem(w) for w in re.findall(r"\w+", rows[h.passage_id].text[s.start : s.end])} for h in hits for s in sentences[h.passage_id]
        ]
        weights = _local_idf(q_stems, sentence_words)
        total = sum(weights.values())
        cfg = self.config
        candidates: list[Candidate] = []
        k = 0
        for h in hits:
            row = rows[h.passage_id]
            for s in sentences[h.passage_id]:
                text = row.text[s.start : s.end]
                words = sentence_words[k]
                overlap = sum(weights[t] for t in q_stems & words) / total if total else 0.0
                score = (
                    cfg.reader_weight_cosine * float(cosines[k]) + cfg.reader_weight_overlap * overlap + cfg.reader_weight_passage * h.prior
                )
                if why:  # a why-question wants a reason: favour sentences that give one
                    score += 0.15 if _CAUSE.search(text) else -0.1
                candidates.append(Candidate(row, s.start, s.end, score))
                k += 1
        candidates.sort(key=lambda c: -c.score)
        answers: list[Answer] = []
        seen: set[tuple[str, int]] = set()
        for c in candidates:
            score = max(0.0, min(1.0, c.score))
            if len(answers) >= self.config.max_answers or score < self.config.sentence_threshold:
                break
            row = c.passage
            key = (row.document_id, row.start + c.sentence_start)
            sentence = row.text[c.sentence_start : c.sentence_end]
            if key in seen or any(a.sentence == sentence and a.document_id == row.document_id for a in answers):
                continue  # the same sentence reached through an overlapping window
            seen.add(key)
            s, e = answer_span(question, sentence, q_stems, why)
            answers.append(make_answer(row, c.sentence_start + s, c.sentence_start + e, c.sentence_start, c.sentence_end, score))
        return answers


def _local_idf(terms: set[str], documents: list[set[str]]) -> dict[str, float]:
    """IDF of each question word over the sentences being read: a word most of them share (the
    article's subject) tells them apart less than one only a few have."""
    n = len(documents)
    return {t: math.log((n + 1) / (sum(t in d for d in documents) + 0.5)) for t in terms}


def _whole_document(index: Index, hits: list[Hit], rows: dict[int, PassageRow]) -> tuple[list[Hit], dict[int, PassageRow]]:
    top = hits[0]
    doc_id = rows[top.passage_id].document_id
    extra = [pid for pid in index.store.document_passage_ids(doc_id) if pid not in rows]
    rows = {**rows, **index.store.passages(extra)}
    return hits + [Hit(pid, top.score, relevance=top.relevance) for pid in extra], rows


def answer_span(question: str, sentence: str, q_stems: set[str], why: bool) -> tuple[int, int]:
    """(start, end) of the answer inside the sentence.

    Why-questions get the causal clause; others get the run of words, between the words the
    question already has, that best fits what it asks for (a number, a date, a name).
    """
    if why:
        m = _CAUSE.search(sentence)
        start = m.start() if m else 0
        tail = _ATTRIBUTION.search(sentence, start)
        return _clause(sentence, start, tail.start() if tail and tail.start() > start else len(sentence))
    tokens = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(sentence)]
    if not tokens:
        return 0, len(sentence)
    in_q = [stem(t) in q_stems for _, _, t in tokens]
    runs: list[tuple[int, int]] = []  # token index ranges not containing question words nor clause punctuation
    i = 0
    while i < len(tokens):
        if in_q[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(tokens) and not in_q[j + 1] and not re.search(r"[,;:()—–]", sentence[tokens[j][1] : tokens[j + 1][0]]):
            j += 1
        runs.append((i, j))
        i = j + 1
    wants = _answer_type(question)
    q_positions = [k for k, q in enumerate(in_q) if q]
    best, best_score = None, -1e9
    for i, j in runs:
        while i <= j and tokens[i][2].lower() in STOP_WORDS:
            i += 1
        while j >= i and tokens[j][2].lower() in STOP_WORDS:
            j -= 1
        if i > j:
            continue
        text = sentence[tokens[i][0] : tokens[j][1]]
        n = j - i + 1
        score = 0.0
        if wants == "number" and _NUMBER.search(text) or wants == "date" and _DATE.search(text):
            score += 2
        elif wants == "name" and any(t[2][:1].isupper() and not _DATE.fullmatch(t[2]) for t in tokens[i : j + 1]):
            score += 1.5
        if q_positions:
            distance = min(min(abs(p - i), abs(p - j)) for p in q_positions)
            score -= 0.05 * distance
        score -= 0.08 * max(0, n - 2)  # answers are short: most are one to three words
        if score > best_score:
            best, best_score = (tokens[i][0], tokens[j][1]), score
    if best is None:
        return _clause(sentence, 0, len(sentence))
    return best


def _answer_type(question: str) -> str:
    q = question.lower()
    if re.search(r"\bhow (many|much|long|far|old|big|large|tall|often)\b|\bwhat (percentage|number|amount)\b", q):
        return "number"
    if re.search(r"\bwhen\b|\bwhat (year|date|day|month|time|century)\b|\bwhich (year|date)\b", q):
        return "date"
    if re.search(r"\bwho\b|\bwhom\b|\bwhose\b|\bwhere\b|\bwhich (company|country|city|team|person)\b", q):
        return "name"
    return "other"


def _clause(sentence: str, start: int, end: int) -> tuple[int, int]:
    """A clause of the sentence, trimmed; the whole sentence when nothing is left."""
    start, end = trim(sentence, start, end, trailing=".,;:")
    return (start, end) if end > start else (0, len(sentence))
