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


@dataclass(frozen=True)
class Config:
    # Where things are.
    corpus: Path = Path("corpus")
    index: Path = Path("index")
    web: Path = Path(__file__).resolve().parent.parent / "web"

    # Embedding.
    model: str = DEFAULT_MODEL
    batch_size: int = 64
    #: Versions kept beside the current one, so a process still reading an older one is not cut off.
    keep_versions: int = 2

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
    rrf_k: float = 60.0
    weight_dense: float = 1.0
    weight_sentence: float = 1.0
    weight_lexical: float = 1.0

    # Reading.
    reader: str = "sentence"
    #: Passages the reader looks at.
    read_passages: int = 8
    max_answers: int = 5
    #: Answers scoring below this are withheld; with none left the result says no_answer.
    answer_threshold: float = 0.35

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


__all__ = ["Config", "DEFAULT_MODEL"]
