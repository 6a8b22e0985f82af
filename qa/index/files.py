"""The files engine: a published version is a folder `index/vNNNNNN/`, named by `index/CURRENT`.

A version holds the SQLite store (`store.py`), the passage and sentence vectors (`vectors.py`,
FAISS) and BM25's postings (`lexical.py`), and its manifest. It is written whole by a build
(`build.py`) and never changed after, so readers open it without locks.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path

import faiss
import numpy as np

from qa.config import Config
from qa.index.base import IndexDamaged, Manifest, NoIndex, Rankings, check_manifest
from qa.index.lexical import LexicalIndex
from qa.index.store import Store
from qa.index.vectors import VectorIndex
from qa.models import Filters

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
STORE = "store.sqlite"
PASSAGE_VECTORS = "passages.faiss"
SENTENCE_VECTORS = "sentences.faiss"
LEXICAL = "lexical"
#: Filters whose allowed ids a version keeps (`FilesIndex._selection`): a few hundred MB at most on news_2022.
SELECTIONS_KEPT = 16


def read_manifest(path: Path) -> Manifest:
    """The manifest of the version in folder `path`."""
    try:
        return Manifest.parse(json.loads((path / MANIFEST).read_text()))
    except FileNotFoundError as exc:
        raise IndexDamaged(f"{path} has no manifest: run `qa index --rebuild`") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexDamaged(f"{path / MANIFEST} is damaged: run `qa index --rebuild`") from exc


def write_manifest(path: Path, manifest: Manifest) -> None:
    (path / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2))


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


class FilesIndex:
    """One published version of the files engine, opened read-only (the `Index` protocol).

    Immutable once published, so any number of threads can read it while the next version is
    built; opening checks that it matches the configured model and that its parts agree.
    """

    def __init__(self, path: Path, config: Config) -> None:
        self.path = path
        self._selections: OrderedDict[str, tuple] = OrderedDict()  # filter -> what `_selection` found
        self._selections_lock = threading.Lock()
        # A question is one vector: OpenMP's threads only add a hand-off to each search, which on a
        # busy machine costs more than the search; concurrency comes from requests.
        faiss.omp_set_num_threads(1)
        self.manifest = read_manifest(path)
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

    def rankings(self, question_vector: np.ndarray, question: str, n: int, filters: Filters | None) -> Rankings:
        """The three rankings fusion starts from, each best first, restricted by `filters`."""
        q = question_vector.reshape(1, -1).astype(np.float32)
        passage_params = sentence_params = allowed = None
        if filters is not None and not filters.empty():
            allowed, passage_params, sentence_params = self._selection(filters)
            if allowed is None:
                return Rankings([], [], [])
        dense = _search(self.passage_vectors, q, n, passage_params)
        by_sentence: dict[int, float] = {}
        sent_hits = _search(self.sentence_vectors, q, n * 3, sentence_params)
        owners = self.store.sentence_passages([sid for sid, _ in sent_hits])
        for sid, score in sent_hits:
            pid = owners.get(sid)
            if pid is not None and pid not in by_sentence:
                by_sentence[pid] = score
        return Rankings(dense, list(by_sentence.items()), self.lexical.search(question, n, allowed))

    def _selection(self, filters: Filters) -> tuple[np.ndarray | None, object, object]:
        """The passages a filter allows, and the search parameters that restrict both vector searches
        to them; None when it allows none. Kept for the last few filters: listing the ids a broad
        filter allows (`as_of` keeps most of an archive: 400,000 sentences) costs more than the
        searches, and questions asked as of one day come together."""
        key = filters.model_dump_json()
        with self._selections_lock:
            if key in self._selections:
                self._selections.move_to_end(key)
                return self._selections[key]
        allowed_p = self.store.filtered_passage_ids(filters)
        if not allowed_p:
            found: tuple = (None, None, None)
        else:
            allowed = np.asarray(allowed_p, dtype=np.int64)
            allowed_s = np.asarray(self.store.filtered_sentence_ids(filters), dtype=np.int64)
            found = (
                allowed,
                faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed)),
                faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed_s)),
            )
        with self._selections_lock:
            self._selections[key] = found
            while len(self._selections) > SELECTIONS_KEPT:
                self._selections.popitem(last=False)
        return found

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


def open_files_index(config: Config) -> FilesIndex:
    """The version `config.index/CURRENT` names."""
    version = current_version(config.index)
    if version is None:
        raise NoIndex(f"no index yet in {config.index}: run `qa index`")
    return FilesIndex(version_dir(config.index, version), config)
