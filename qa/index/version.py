"""A published index version: `index/vNNNNNN/`, named by `index/CURRENT`, opened read-only.

A version is immutable once published, so any number of threads can read it while the next one
is built; opening checks that it matches the configured model and that its parts agree.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from qa.config import Config
from qa.config import DEFAULT_MODEL
from qa.embedding import model_version, vector_backend
from qa.index.vectors import VectorIndex
from qa.lexical import LexicalIndex
from qa.models import Filters
from qa.store import Store

#: 3: BM25 postings in numpy files (qa/lexical.py) instead of an FTS5 table in the store.
#: 2: sentence vectors are pooled from their passage's token states (1: embedded on their own).
FORMAT_VERSION = 3
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
STORE = "store.sqlite"
PASSAGE_VECTORS = "passages.faiss"
SENTENCE_VECTORS = "sentences.faiss"
LEXICAL = "lexical"


class IndexProblem(Exception):
    """Base of the index errors; the message always says what to do."""


class NoIndex(IndexProblem):
    pass


class IndexMismatch(IndexProblem):
    pass


class IndexDamaged(IndexProblem):
    pass


class IndexBusy(IndexProblem):
    pass


class CorpusMissing(IndexProblem):
    """The corpus folder does not exist, is not a folder or cannot be read: indexing it would
    publish an empty index (a typo, or a volume not mounted), so nothing is built."""


class TooManyRemovals(IndexProblem):
    """A build would remove more than `QA_MAX_REMOVE_FRACTION` of the published documents; the
    operator confirms with `--allow-removals` (as rsync's `--max-delete`)."""


@dataclass
class Candidates:
    """(passage id, score) rankings, best first: dense passage cosine, best sentence cosine, BM25."""

    dense: list[tuple[int, float]]
    sentence: list[tuple[int, float]]
    lexical: list[tuple[int, float]]


@dataclass
class Manifest:
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

    @classmethod
    def read(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text())
        fields = cls.__dataclass_fields__
        return cls(**{k: data[k] for k in fields if k in data or fields[k].default is dataclasses.MISSING})


def check_manifest(manifest: Manifest, config: Config) -> None:
    """An index whose vectors the configured model cannot be compared with is refused, with the way out."""
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


def current_version(index_dir: Path) -> int | None:
    try:
        name = (index_dir / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    if not name.startswith("v") or not name[1:].isdigit():
        raise IndexDamaged(f"{index_dir / CURRENT} is damaged ({name[:40]!r}): run `qa index --rebuild`")
    return int(name[1:])


def version_dir(index_dir: Path, version: int) -> Path:
    return index_dir / f"v{version:06d}"


class IndexVersion:
    """One published version, opened read-only. Immutable, so it can be shared by threads."""

    def __init__(self, path: Path, config: Config) -> None:
        self.path = path
        # A question is one vector: OpenMP's threads only add a hand-off to each search, which on a
        # busy machine costs more than the search; concurrency comes from requests.
        faiss.omp_set_num_threads(1)
        try:
            self.manifest = Manifest.read(path / MANIFEST)
        except FileNotFoundError as exc:
            raise IndexDamaged(f"{path} has no manifest: run `qa index --rebuild`") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexDamaged(f"{path / MANIFEST} is damaged: run `qa index --rebuild`") from exc
        check_manifest(self.manifest, config)
        try:
            self.passage_vectors = VectorIndex.load(path / PASSAGE_VECTORS, config)
            self.sentence_vectors = VectorIndex.load(path / SENTENCE_VECTORS, config)
            self.lexical = LexicalIndex.load(path / LEXICAL, config.vector_delta_fraction)
            self.store = Store(path / STORE, readonly=True)
            counts = self.store.counts()
        except (RuntimeError, OSError, ValueError, sqlite3.DatabaseError) as exc:
            raise IndexDamaged(f"index version {path.name} is damaged ({exc}): run `qa index --rebuild`") from exc
        if (
            self.passage_vectors.ntotal != self.manifest.passages
            or self.sentence_vectors.ntotal != self.manifest.sentences
            or counts["passages"] != self.manifest.passages
            or self.lexical.count != self.manifest.passages
            or self.passage_vectors.d != self.manifest.dimension
        ):
            raise IndexDamaged(f"index version {path.name} is inconsistent: run `qa index --rebuild`")

    @property
    def version(self) -> int:
        return self.manifest.version

    # What retrieval and the readers ask of any engine (qa/retriever.py, qa/readers/base.py).

    def candidates(self, question_vector: np.ndarray, question: str, n: int, filters: Filters | None) -> Candidates:
        """The three rankings fusion starts from, each best first, restricted by `filters`."""
        q = question_vector.reshape(1, -1).astype(np.float32)
        passage_params = sentence_params = allowed = None
        if filters is not None and not filters.empty():
            allowed_p = self.store.filtered_passage_ids(filters)
            if not allowed_p:
                return Candidates([], [], [])
            allowed = np.asarray(allowed_p, dtype=np.int64)
            passage_params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
            allowed_s = self.store.filtered_sentence_ids(filters)
            sentence_params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.asarray(allowed_s, dtype=np.int64)))
        dense = _search(self.passage_vectors, q, n, passage_params)
        by_sentence: dict[int, float] = {}
        sent_hits = _search(self.sentence_vectors, q, n * 3, sentence_params)
        owners = self.store.sentence_passages([sid for sid, _ in sent_hits])
        for sid, score in sent_hits:
            pid = owners.get(sid)
            if pid is not None and pid not in by_sentence:
                by_sentence[pid] = score
        return Candidates(dense, list(by_sentence.items()), self.lexical.search(question, n, allowed))

    def sentence_embeddings(self, sentence_ids: list[int]) -> np.ndarray:
        """The stored vectors of these sentences, one row each, in order."""
        return np.vstack([self.sentence_vectors.reconstruct(int(i)) for i in sentence_ids])

    def close(self) -> None:
        self.store.close()


def _search(index: VectorIndex, q: np.ndarray, n: int, params) -> list[tuple[int, float]]:
    if index.ntotal == 0:
        return []
    scores, ids = index.search(q, min(n, index.ntotal), params=params) if params else index.search(q, min(n, index.ntotal))
    return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]


def published_version(config: Config) -> int | None:
    """The version readers should use now, on whichever engine the configuration names."""
    if config.milvus_uri:
        from qa.index.milvus import current_milvus_version

        return current_milvus_version(config)
    return current_version(config.index)


def open_index(config: Config) -> IndexVersion:
    """The published version: the files under `config.index`, or Milvus when `milvus_uri` is set."""
    if config.milvus_uri:
        from qa.index.milvus import open_milvus

        return open_milvus(config)  # type: ignore[return-value]  # the same interface
    version = current_version(config.index)
    if version is None:
        raise NoIndex(f"no index yet in {config.index}: run `qa index`")
    return IndexVersion(version_dir(config.index, version), config)
