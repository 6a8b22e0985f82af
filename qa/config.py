"""The one configuration object: defaults, overridden by `QA_*` environment variables, then by flags.

Every tunable of the project lives here, so no module repeats a constant.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: How the embedding model runs: sentence-transformers on torch, or the same weights exported to
#: ONNX Runtime (several times faster on a CPU, same vectors), optionally with int8 weights.
BACKENDS = ("torch", "onnx", "onnx-int8")


@dataclass(frozen=True)
class Config:
    # Where things are.
    corpus: Path = Path("corpus")
    index: Path = Path("index")
    web: Path = Path(__file__).resolve().parent.parent / "web"

    # Embedding.
    model: str = DEFAULT_MODEL
    batch_size: int = 64
    #: One of BACKENDS. "onnx" gives torch's vectors (cosine 1.0) at a fraction of the cost;
    #: "onnx-int8" is faster still with recall@5 on SQuAD within 0.01 of torch (README, Benchmarks).
    backend: str = "onnx-int8"
    #: Where derived files that are not the index live (the exported ONNX model).
    cache: Path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qa"
    #: Versions kept beside the current one, so a process still reading an older one is not cut off.
    keep_versions: int = 2

    # Vector indexes.
    #: Below this many vectors search is exact (flat); from it on, an HNSW graph (approximate).
    ann_min_vectors: int = 50_000
    #: HNSW search breadth: 256 gave recall@20 0.996 (passages) against exact search, 64 only 0.88.
    ann_ef_search: int = 256
    #: New vectors (and BM25 postings) go to a small delta beside the (hard-linked, unchanged)
    #: base until added and removed passages exceed this share of the base; then it is rewritten.
    vector_delta_fraction: float = 0.1

    # Splitting articles into passages.
    #: Paragraphs with fewer words than this are not passages of their own (bylines, date lines).
    min_passage_words: int = 6
    #: Sentences repeated at the start of the next window when a long paragraph is split.
    window_overlap_sentences: int = 1

    # Retrieval.
    top_k: int = 5
    max_top_k: int = 50
    #: Candidates taken from each retriever before fusion.
    candidates: int = 50
    #: How the three rankings are fused: "score" (weighted sum of the dense cosine, the best
    #: sentence's cosine and BM25 scaled by the best BM25 score) or "rrf" (weighted reciprocal rank).
    fusion: str = "score"
    rrf_k: float = 60.0
    weight_dense: float = 1.0
    weight_sentence: float = 1.0
    weight_lexical: float = 0.6

    # Reading.
    #: "span": the trained span reader (qa/reader_weights/), short exact answers, about 48 ms a
    #: question; "sentence": the best sentence with a heuristic span, about 1 ms (README, Readers).
    reader: str = "span"
    #: Passages the reader looks at.
    read_passages: int = 8
    max_answers: int = 5
    #: Answers scoring below this are withheld; with none left the result says no_answer.
    answer_threshold: float = 0.35
    #: The span reader's model (`reader = "span"`): empty for the trained reader shipped in
    #: qa/reader_weights/, or any extractive QA model's name or folder (AutoModelForQuestionAnswering);
    #: several, comma-separated ("shipped" for the shipped one), are read as an ensemble (README, Readers).
    reader_model: str = ""
    #: Tokens of the best sentences the span reader reads per question (one batch). Fewer is
    #: faster, and fewer distractors: held-out open F1, SQuAD / RealTimeQA, 0.470 / 0.638 at 64,
    #: 0.479 / 0.601 at 96, 0.484 / 0.563 at 128 (README, Readers).
    span_context_tokens: int = 96
    #: Longest answer, in tokens (why-questions are answered with the sentence reader's reason clauses).
    span_max_tokens: int = 24
    #: Model input length and window overlap (tokens) for contexts longer than that.
    span_max_len: int = 256
    span_stride: int = 64
    #: The span reader's weights on the ONNX backends: "int8" (quantised with the embedder under
    #: "onnx-int8") or "float" (fp32 whatever the embedder's backend).
    reader_precision: str = "int8"
    #: A span is withheld unless its logit beats the no-answer logit by more than this.
    span_null_margin: float = 0.0
    #: A span's logit loses this times how far its passage's fused retrieval score is below the
    #: best passage's: the reader alone is too sure of spans in distracting passages. Chosen on
    #: half the held-out SQuAD articles (open F1 0.482 at 0, 0.497 at 20, 0.502 at 40, 0.498 at
    #: 80), checked on the other half (0.473 -> 0.488) and RealTimeQA (0.601 -> 0.666).
    span_passage_weight: float = 40.0
    #: Threads for the span reader's forward pass (0: leave torch's setting alone).
    reader_threads: int = 1
    #: A sentence's score: these weights times its cosine with the question, the share of the
    #: question's (IDF-weighted) words it has, and its passage's retrieval score.
    reader_weight_cosine: float = 0.45
    reader_weight_overlap: float = 0.25
    reader_weight_passage: float = 0.3
    #: The span reader's choice of sentences to read, the same three terms with its own weights
    #: (its overlap is the plain share of the question's stemmed words).
    span_weight_cosine: float = 0.55
    span_weight_overlap: float = 0.3
    span_weight_passage: float = 0.15

    # Service.
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_question_chars: int = 1000
    max_body_bytes: int = 10 * 1024 * 1024

    @classmethod
    def load(cls, **overrides: Any) -> "Config":
        """Defaults < `QA_<FIELD>` environment variables < explicit overrides (flags)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"QA_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _coerce(f, raw)
        for name, value in overrides.items():
            if value is not None:
                values[name] = _coerce(_field(name), value) if isinstance(value, str) else value
        return cls(**values)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _field(name: str) -> dataclasses.Field:
    for f in fields(Config):
        if f.name == name:
            return f
    raise KeyError(name)


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind.startswith("Path"):
            return Path(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.strip().lower() in {"1", "true", "yes", "on"}
    except ValueError as exc:
        raise ValueError(f"QA_{f.name.upper()}: cannot read {raw!r} as {kind}") from exc
    return raw


__all__ = ["BACKENDS", "Config", "DEFAULT_MODEL"]
