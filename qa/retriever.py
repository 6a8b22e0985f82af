"""Hybrid retrieval: dense passage search, dense best-sentence search and BM25, fused by score (or rank)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qa.config import Config
from qa.index import Index
from qa.models import Filters


@dataclass
class Hit:
    passage_id: int
    score: float  # fused, in [0, 1]
    dense: float | None = None  # cosine of question and passage
    sentence: float | None = None  # cosine of question and the passage's best sentence
    lexical: float | None = None  # BM25
    rerank: float | None = None  # the cross-encoder's probability that it answers (qa.reranker)
    relevance: float | None = None  # what re-ranked hits are ordered by, in fused-score units

    @property
    def prior(self) -> float:
        """How much the readers trust this passage: the re-ranked relevance when there is one, else the fused score."""
        return self.score if self.relevance is None else self.relevance


class Retriever:
    def __init__(self, config: Config) -> None:
        self.config = config

    def retrieve(self, index: Index, question_vector: np.ndarray, question: str, top_k: int, filters: Filters | None) -> list[Hit]:
        cfg = self.config
        n = max(cfg.candidates, top_k)
        found = index.rankings(question_vector, question, n, filters)
        rankings = (
            ("dense", found.dense, cfg.weight_dense),
            ("sentence", found.sentence, cfg.weight_sentence),
            ("lexical", found.lexical, cfg.weight_lexical),
        )
        if cfg.fusion == "rrf":
            return _fuse_ranks(rankings, cfg.rrf_k, top_k)
        return _fuse_scores(found.dense, dict(found.sentence[:n]), found.lexical, cfg, top_k)


def _fuse_ranks(rankings, rrf_k: float, top_k: int) -> list[Hit]:
    """Weighted reciprocal rank fusion."""
    fused: dict[int, Hit] = {}
    best = sum(w for _, _, w in rankings) / (rrf_k + 1)
    for name, ranking, weight in rankings:
        for rank, (pid, score) in enumerate(ranking):
            hit = fused.setdefault(pid, Hit(pid, 0.0))
            hit.score += weight / (rrf_k + rank + 1)
            setattr(hit, name, score)
    hits = sorted(fused.values(), key=lambda h: -h.score)[:top_k]
    for h in hits:
        h.score = h.score / best if best else 0.0
    return hits


def _fuse_scores(
    dense: list[tuple[int, float]], by_sentence: dict[int, float], lexical: list[tuple[int, float]], cfg: Config, top_k: int
) -> list[Hit]:
    """Weighted sum of the raw scores: the two cosines as they are, BM25 divided by the best BM25.

    A passage missing from a list gets that list's lowest score (it ranked below all of it);
    keeping the scores, not just the ranks, lets a clear winner in one list stand out.
    """
    d, s, lx = dict(dense), by_sentence, dict(lexical)
    d_floor = min(d.values()) if d else 0.0
    s_floor = min(s.values()) if s else 0.0
    l_max = max(lx.values()) if lx else 0.0
    total = cfg.weight_dense + cfg.weight_sentence + cfg.weight_lexical
    hits = []
    for pid in {**d, **s, **lx}:
        lex = lx.get(pid, 0.0) / l_max if l_max > 0 else 0.0
        score = cfg.weight_dense * d.get(pid, d_floor) + cfg.weight_sentence * s.get(pid, s_floor) + cfg.weight_lexical * lex
        hits.append(Hit(pid, score, d.get(pid), s.get(pid), lx.get(pid)))
    hits.sort(key=lambda h: -h.score)
    hits = hits[:top_k]
    for h in hits:
        h.score = max(0.0, min(1.0, h.score / total)) if total else 0.0
    return hits
