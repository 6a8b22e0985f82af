"""What every index engine shares: the interface the pipeline, readers and routes use (`Index`,
`IndexStore`), the rows and rankings they return, the manifest of a published version, and the
errors, each with a message that says what to do.

Two engines implement it: files under `QA_INDEX` (`qa/index/files.py`: FAISS, numpy BM25, SQLite)
and Milvus (`qa/index/milvus/`). `qa/index/factory.py` chooses between them, in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import numpy as np

from qa.config import DEFAULT_MODEL, Config
from qa.embedding import model_version, vector_backend
from qa.models import Filters

#: The layout of what an index version holds, on either engine.
#: 3: BM25 postings in numpy files (qa/index/lexical.py) instead of an FTS5 table in the store.
#: 2: sentence vectors are pooled from their passage's token states (1: embedded on their own).
FORMAT_VERSION = 3


# Errors.


class IndexProblem(Exception):
    """Base of the index errors; the message always says what to do."""


class NoIndex(IndexProblem):
    """Nothing is published yet: run `qa index`."""


class IndexMismatch(IndexProblem):
    """The published index was built in a way the configuration cannot read (another model, format
    or passage splitting): `qa index --rebuild`."""


class IndexDamaged(IndexProblem):
    """A published version's files or rows are missing or inconsistent."""


class IndexBusy(IndexProblem):
    """Another build holds the build lock."""


class CorpusMissing(IndexProblem):
    """The corpus folder does not exist, is not a folder or cannot be read: indexing it would
    publish an empty index (a typo, or a volume not mounted), so nothing is built."""


class TooManyRemovals(IndexProblem):
    """A build would remove more than `QA_MAX_REMOVE_FRACTION` of the published documents; the
    operator confirms with `--allow-removals` (as rsync's `--max-delete`)."""


# What a version returns.


@dataclass
class PassageRow:
    """A passage as stored, with its article's title and metadata."""

    id: int
    document_id: str
    ordinal: int
    start: int
    end: int
    text: str
    title: str
    date: str | None
    url: str | None
    source: str | None


@dataclass
class SentenceRow:
    """A sentence of a passage: offsets into the passage's text."""

    id: int
    passage_id: int
    start: int
    end: int


@dataclass
class Rankings:
    """(passage id, score) rankings, best first: dense passage cosine, best sentence cosine, BM25."""

    dense: list[tuple[int, float]]
    sentence: list[tuple[int, float]]
    lexical: list[tuple[int, float]]


# The manifest of a published version.


@dataclass
class Manifest:
    """What a published version holds and how it was made: enough to refuse reading it with a
    model, vectors or passage splitting other than its own."""

    format_version: int
    version: int
    model: str
    dimension: int
    documents: int
    passages: int
    sentences: int
    created: str
    #: `vector_backend()` of the embedder that wrote the vectors ("float" or "int8").
    vectors: str = "float"
    #: `model_version()` of the model that wrote them ("" before 2026-12-02, or for a hub name).
    model_version: str = ""
    #: The settings that change what is indexed (`Config.indexed_settings()`); {} before 2026-12-03.
    indexed_with: dict = field(default_factory=dict)

    @classmethod
    def new(cls, version: int, config: Config, dimension: int, vectors: str, counts: dict[str, int]) -> Manifest:
        """The manifest of a version about to be published, from the build's configuration and counts."""
        return cls(
            FORMAT_VERSION,
            version,
            config.model,
            dimension,
            counts["documents"],
            counts["passages"],
            counts["sentences"],
            datetime.now(UTC).isoformat(timespec="seconds"),
            vectors,
            model_version(config.model),
            config.indexed_settings(),
        )

    @classmethod
    def parse(cls, data: dict) -> Manifest:
        """From its JSON object (a file, or Milvus's meta row); unknown keys are ignored, missing
        optional ones take their defaults. Raises IndexDamaged when a required one is missing."""
        fields = cls.__dataclass_fields__
        required = [k for k, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise IndexDamaged(f"the index manifest lacks {', '.join(missing)}: run `qa index --rebuild`")
        return cls(**{k: data[k] for k in fields if k in data})

    def to_dict(self) -> dict:
        return asdict(self)


def check_manifest(manifest: Manifest, config: Config) -> None:
    """An index whose vectors the configured model cannot be compared with, or whose passages were
    split otherwise than the configuration would, is refused with the way out."""
    if manifest.format_version != FORMAT_VERSION:
        raise IndexMismatch(f"index format {manifest.format_version} is not {FORMAT_VERSION}: run `qa index --rebuild`")
    if manifest.model != config.model:
        raise IndexMismatch(
            f"the index was built with model {manifest.model!r} (dimension {manifest.dimension}), "
            f"but the configured model is {config.model!r}: run `qa index --rebuild`"
        )
    # Same name, other weights: the default model retrained by an upgrade, or a folder retrained in
    # place. Indexes from before versions were recorded pass, but the default's (its weights changed).
    expected = model_version(config.model)
    if manifest.model_version != expected and (manifest.model_version or config.model == DEFAULT_MODEL):
        raise IndexMismatch(
            f"the index was built with other weights of model {config.model!r} (it has been retrained since): run `qa index --rebuild`"
        )
    if manifest.vectors != vector_backend(config.backend):
        raise IndexMismatch(
            f"the index holds {manifest.vectors} vectors, but backend {config.backend!r} makes "
            f"{vector_backend(config.backend)} ones: run `qa index --rebuild`"
        )
    now = config.indexed_settings()
    changed = [f"QA_{k.upper()}={v} (now {now[k]})" for k, v in manifest.indexed_with.items() if k in now and now[k] != v]
    if changed:
        raise IndexMismatch(f"the index was built with {', '.join(changed)}, which changes its passages: run `qa index --rebuild`")


# The interface.


@runtime_checkable
class IndexStore(Protocol):
    """The documents, passages and sentences of one published version, read-only."""

    def passages(self, ids: list[int]) -> dict[int, PassageRow]: ...

    def sentences(self, passage_ids: list[int]) -> dict[int, list[SentenceRow]]: ...

    def document_passage_ids(self, doc_id: str) -> list[int]: ...

    def document(self, doc_id: str) -> dict | None: ...

    def documents(self, offset: int, limit: int) -> list[dict]: ...

    def document_hashes(self) -> dict[str, str]: ...

    def sample_titles(self, limit: int) -> list[str]: ...

    def clusters(self, document_ids: list[str]) -> dict[str, str]:
        """Document id -> the id of its cluster of near-duplicates (qa/index/duplicates.py): the
        smallest id among the copies of one story, the document's own id when it has none."""
        ...

    def cluster_members(self, cluster_id: str) -> list[str]:
        """The ids of a cluster's documents, sorted (the head, `cluster_id`, first); [] for none."""
        ...

    def cluster_counts(self) -> tuple[int, int]:
        """(copies: documents that are not their cluster's head, clusters of more than one document)."""
        ...

    def counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...


@runtime_checkable
class Index(Protocol):
    """One published version, immutable, shared by the threads that answer questions: what the
    retriever (`candidates`), the readers (`store`, `sentence_embeddings`) and the routes use."""

    manifest: Manifest
    store: IndexStore

    @property
    def version(self) -> int: ...

    def rankings(self, question_vector: np.ndarray, question: str, n: int, filters: Filters | None) -> Rankings:
        """The three rankings fusion starts from, each best first, restricted by `filters`."""
        ...

    def sentence_embeddings(self, sentence_ids: list[int]) -> np.ndarray:
        """The stored vectors of these sentences, one row each, in order."""
        ...

    def close(self) -> None: ...
