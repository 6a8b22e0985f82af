"""The on-disk index: immutable versions in `index/vNNNNNN/`, published by swapping `index/CURRENT`.

A build copies the current version into a private folder, applies the changes there, and only
when everything is written and synced renames it into place and atomically replaces CURRENT.
Readers only ever open the version CURRENT names, so a killed build is invisible to them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from filelock import FileLock, Timeout
from tqdm import tqdm

from qa.config import Config
from qa.corpus import CorpusReport, Skipped, read_corpus
from qa.embedding import Embedder, vector_backend
from qa.lexical import LexicalIndex
from qa.models import Document
from qa.passages import PassageSplitter
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
#: Beside each vector file: vectors added since it was written, and ids removed from it.
DELTA = ".delta.faiss"
REMOVED = ".removed.npy"
#: HNSW graph degree and build-time breadth; with efSearch 256, recall@20 >= 0.99 (bench/run.py).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
LOCK = ".lock"
EMBED_BLOCK = 256

#: (phase, done, total): phases are reading, embedding, publishing, done.
ProgressFn = Callable[[str, int, int], None]


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

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        data = json.loads(path.read_text())
        fields = cls.__dataclass_fields__
        return cls(**{k: data[k] for k in fields if k in data or fields[k].default is dataclasses.MISSING})


@dataclass
class BuildSummary:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    documents: int = 0
    passages: int = 0
    embedded: int = 0
    seconds: float = 0.0
    version: int | None = None
    #: Why the previous version could not be extended, when the whole corpus was indexed anew.
    started_over: str | None = None

    def line(self) -> str:
        return (
            (f"built anew: {self.started_over}\n" if self.started_over else "")
            + f"indexed: {self.added} added, {self.changed} changed, {self.removed} removed, "
            f"{len(self.skipped)} skipped, {self.unchanged} unchanged; {self.documents} documents, "
            f"{self.passages} passages ({self.embedded} embedded) in {self.seconds:.1f}s"
            + (f"; version {self.version}" if self.version else "")
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [asdict(s) for s in self.skipped]
        return d


# Reading a published version.


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
        # A question is one vector: OpenMP's threads only add a hand-off to each search (about
        # 20 ms on a busy 2-core machine, against 1 ms alone); concurrency comes from requests.
        faiss.omp_set_num_threads(1)
        try:
            self.manifest = Manifest.read(path / MANIFEST)
        except FileNotFoundError as exc:
            raise IndexDamaged(f"{path} has no manifest: run `qa index --rebuild`") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexDamaged(f"{path / MANIFEST} is damaged: run `qa index --rebuild`") from exc
        if self.manifest.format_version != FORMAT_VERSION:
            raise IndexMismatch(
                f"index format {self.manifest.format_version} is not {FORMAT_VERSION}: run `qa index --rebuild`"
            )
        if self.manifest.model != config.model:
            raise IndexMismatch(
                f"the index was built with model {self.manifest.model!r} (dimension {self.manifest.dimension}), "
                f"but the configured model is {config.model!r}: run `qa index --rebuild`"
            )
        if self.manifest.vectors != vector_backend(config.backend):
            raise IndexMismatch(
                f"the index holds {self.manifest.vectors} vectors, but backend {config.backend!r} makes "
                f"{vector_backend(config.backend)} ones: run `qa index --rebuild`"
            )
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

    def close(self) -> None:
        self.store.close()


def open_index(config: Config) -> IndexVersion:
    version = current_version(config.index)
    if version is None:
        raise NoIndex(f"no index yet in {config.index}: run `qa index`")
    return IndexVersion(version_dir(config.index, version), config)


# Building the next version.


class VectorIndex:
    """The vectors of one kind in one version: a base index, a delta of later additions, removed ids.

    The base is exact (`IndexIDMap2(IndexFlatIP)`) below `Config.ann_min_vectors` vectors and
    `IndexIDMap2(IndexHNSWFlat)` from there on (HNSW keeps recall@20 near 1 at any size, where IVF
    needed most of its lists probed on these embeddings). HNSW cannot remove vectors; it need not,
    since removed ids are filtered out at search until the next rewrite. A build that changes
    little hard-links the base from the previous version (its file is never written again, so
    sharing it is safe) and writes only the small delta and removed list; once they outgrow
    `Config.vector_delta_fraction` of the base, the base is rewritten. Readers memory-map the base,
    so opening a version is quick whatever its size. Search and `reconstruct` see the union, and
    behave like the faiss index the retriever and reader were written for.
    """

    def __init__(self, base: faiss.Index, delta: faiss.Index, removed: np.ndarray, config: Config, source: Path | None) -> None:
        self.base, self.delta, self.config, self.source = base, delta, config, source
        self.removed = np.unique(np.asarray(removed, dtype=np.int64))
        self.d = base.d
        self._ids = faiss.vector_to_array(base.id_map) if self.approximate else None
        self._refresh()

    @classmethod
    def empty(cls, dimension: int, config: Config) -> "VectorIndex":
        return cls(_flat(dimension), _flat(dimension), np.zeros(0, np.int64), config, None)

    @classmethod
    def load(cls, path: Path, config: Config) -> "VectorIndex":
        base = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        delta_path, removed_path = _beside(path, DELTA), _beside(path, REMOVED)
        delta = faiss.read_index(str(delta_path)) if delta_path.exists() else _flat(base.d)
        removed = np.load(removed_path) if removed_path.exists() else np.zeros(0, np.int64)
        return cls(base, delta, removed, config, path)

    def _refresh(self) -> None:
        self._delta_ids = set(faiss.vector_to_array(self.delta.id_map).tolist())
        self._not_removed = None
        if len(self.removed):
            self._removed_sel = faiss.IDSelectorBatch(self.removed)
            self._not_removed = faiss.IDSelectorNot(self._removed_sel)
        self.ntotal = int(self.base.ntotal - len(self.removed) + self.delta.ntotal)

    @property
    def approximate(self) -> bool:
        return isinstance(faiss.downcast_index(self.base.index), faiss.IndexHNSW)

    def search(self, q: np.ndarray, k: int, params: faiss.SearchParameters | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top `k` by inner product over base and delta; `params.sel` filters as in faiss.

        A filtered search scans the HNSW's stored vectors exactly, so it finds the allowed ids
        however few they are (a graph search would lose them).
        """
        wanted = params.sel if params is not None else None
        sel = self._not_removed
        if wanted is not None:
            sel = wanted if sel is None else faiss.IDSelectorAnd(wanted, sel)
        parts = []
        if self.base.ntotal:
            kb = min(k, self.base.ntotal)
            if self.approximate and wanted is not None:
                storage = faiss.downcast_index(faiss.downcast_index(self.base.index).storage)
                translated = faiss.IDSelectorTranslated(self.base.id_map, sel)
                found_s, found = storage.search(q, kb, params=faiss.SearchParameters(sel=translated))
                parts.append((found_s, np.where(found >= 0, self._ids[np.maximum(found, 0)], -1)))
            else:
                if self.approximate:
                    bp = faiss.SearchParametersHNSW(efSearch=max(self.config.ann_ef_search, kb))
                    if sel is not None:
                        bp.sel = sel
                else:
                    bp = faiss.SearchParameters(sel=sel) if sel is not None else None
                parts.append(self.base.search(q, kb, params=bp))
        if self.delta.ntotal:
            dp = faiss.SearchParameters(sel=wanted) if wanted is not None else None
            parts.append(self.delta.search(q, min(k, self.delta.ntotal), params=dp))
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        if not parts:
            return scores, ids
        all_s = np.hstack([p[0] for p in parts])
        all_i = np.hstack([p[1] for p in parts])
        all_s[all_i < 0] = -np.inf
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        n = top.shape[1]
        scores[:, :n] = np.take_along_axis(all_s, top, 1)
        ids[:, :n] = np.take_along_axis(all_i, top, 1)
        return scores, ids

    def reconstruct(self, vector_id: int) -> np.ndarray:
        return (self.delta if vector_id in self._delta_ids else self.base).reconstruct(int(vector_id))

    def remove_ids(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        in_delta = np.fromiter((i in self._delta_ids for i in ids.tolist()), dtype=bool, count=len(ids))
        if in_delta.any():
            self.delta.remove_ids(ids[in_delta])
        self.removed = np.union1d(self.removed, ids[~in_delta])
        self._refresh()

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.delta.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
        self._delta_ids.update(np.asarray(ids).tolist())
        self.ntotal += len(ids)

    def save(self, path: Path) -> None:
        """Writes this version's files: links the base and writes the delta, or rewrites the base."""
        changes = len(self.removed) + self.delta.ntotal
        if (
            self.source is not None
            and changes <= self.config.vector_delta_fraction * self.base.ntotal
            and self.approximate == _wants_ann(self.ntotal, self.config, self.approximate)
        ):
            try:
                os.link(self.source, path)
            except OSError:
                shutil.copy2(self.source, path)
            faiss.write_index(self.delta, str(_beside(path, DELTA)))
            with open(_beside(path, REMOVED), "wb") as fh:
                np.save(fh, self.removed)
            return
        faiss.write_index(self._compacted(), str(path))

    def _compacted(self) -> faiss.Index:
        """One base holding everything, built with all cores (training and assignment are batch work)."""
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        try:
            return self._compact()
        finally:
            faiss.omp_set_num_threads(threads)

    def _compact(self) -> faiss.Index:
        delta_ids = faiss.vector_to_array(self.delta.id_map)
        delta_vectors = self.delta.index.reconstruct_n(0, self.delta.ntotal) if self.delta.ntotal else np.zeros((0, self.d), np.float32)
        ids, vectors = _all_vectors(self.base)
        if len(self.removed):
            keep = ~np.isin(ids, self.removed)
            ids, vectors = ids[keep], vectors[keep]
        ids, vectors = np.concatenate([ids, delta_ids]), np.vstack([vectors, delta_vectors])
        if _wants_ann(len(ids), self.config, self.approximate):
            hnsw = faiss.IndexHNSWFlat(self.d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            base = faiss.IndexIDMap2(hnsw)
        else:
            base = _flat(self.d)
        base.add_with_ids(vectors, ids)
        return base


def _flat(dimension: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name.removesuffix(".faiss") + suffix)


def _wants_ann(n: int, config: Config, now: bool) -> bool:
    """From `ann_min_vectors` on; an HNSW stays until the size falls well below it (no flapping)."""
    return n >= (config.ann_min_vectors // 2 if now else config.ann_min_vectors)


def _all_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """Ids and vectors of a base (flat or HNSW, both under IndexIDMap2)."""
    ids = faiss.vector_to_array(index.id_map)
    return ids, index.index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), np.float32)


def _fsync_tree(path: Path) -> None:
    for p in path.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_lock(config: Config, wait: float) -> FileLock:
    config.index.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(config.index / LOCK))
    try:
        lock.acquire(timeout=wait)
    except Timeout as exc:
        raise IndexBusy(
            f"another build holds {config.index / LOCK}; wait for it to finish"
            + (f" (waited {wait:.0f}s)" if wait > 0 else " or pass --wait SECONDS")
        ) from exc
    return lock


def build_index(
    config: Config,
    embedder: Embedder,
    *,
    rebuild: bool = False,
    upserts: list[Document] | None = None,
    deletes: list[str] | None = None,
    wait: float = 0.0,
    progress: ProgressFn | None = None,
    show_progress: bool = False,
) -> BuildSummary:
    """Brings the index up to date and publishes a new version if anything changed.

    With `upserts`/`deletes`, only those documents change (the service's fast path); otherwise the
    whole corpus folder is read and compared by content hash.
    """
    started = time.perf_counter()
    report = lambda phase, done=0, total=0: progress and progress(phase, done, total)  # noqa: E731
    lock = build_lock(config, wait)
    try:
        report("reading")
        summary = BuildSummary()
        previous = None
        if not rebuild:
            try:
                previous = _previous(config)
            except IndexMismatch as exc:
                if upserts is not None or deletes is not None:
                    raise  # the corpus folder is the whole truth: only a full read may start over
                summary.started_over = str(exc).split(":")[0]
        old_hashes = previous.store.document_hashes() if previous else {}
        if upserts is None and deletes is None:
            corpus: CorpusReport = read_corpus(config.corpus)
            summary.skipped = corpus.skipped
            wanted = {d.id: d for d in corpus.documents}
            removed = [i for i in old_hashes if i not in wanted]
        else:
            wanted = {d.id: d for d in upserts or []}
            removed = [i for i in deletes or [] if i in old_hashes and i not in wanted]
        todo = [d for d in wanted.values() if old_hashes.get(d.id) != d.hash]
        summary.added = sum(1 for d in todo if d.id not in old_hashes)
        summary.changed = len(todo) - summary.added
        summary.removed = len(removed)
        summary.unchanged = len(wanted) - len(todo)
        if previous is not None and not todo and not removed:
            counts = previous.store.counts()
            summary.documents, summary.passages = counts["documents"], counts["passages"]
            summary.version = previous.version
            previous.close()
            summary.seconds = time.perf_counter() - started
            report("done", 1, 1)
            return summary
        _publish(config, embedder, previous, todo, removed, summary, report, show_progress)
        summary.seconds = time.perf_counter() - started
        report("done", 1, 1)
        return summary
    finally:
        lock.release()


def _previous(config: Config) -> IndexVersion | None:
    try:
        return open_index(config)
    except NoIndex:
        return None


def _publish(
    config: Config,
    embedder: Embedder,
    previous: IndexVersion | None,
    todo: list[Document],
    removed: list[str],
    summary: BuildSummary,
    report: Callable,
    show_progress: bool,
) -> None:
    index_dir = config.index
    _remove_stale_builds(index_dir)
    work = index_dir / f".build-{os.getpid()}-{int(time.time() * 1000)}"
    work.mkdir()
    try:
        if previous is not None:
            shutil.copy2(previous.path / STORE, work / STORE)
            # The builder's own copy of the previous version, so its vectors can be changed in
            # place: reading an HNSW base again costs about 0.5 s (its graph is not memory-mapped).
            passage_vectors, sentence_vectors = previous.passage_vectors, previous.sentence_vectors
            lexical = previous.lexical
            previous.close()
        else:
            passage_vectors = VectorIndex.empty(embedder.dimension, config)
            sentence_vectors = VectorIndex.empty(embedder.dimension, config)
            lexical = LexicalIndex.empty(config.vector_delta_fraction)
        store = Store(work / STORE)
        store.begin()
        splitter = PassageSplitter(
            embedder.count_tokens,
            embedder.split_tokens,
            embedder.max_tokens,
            config.min_passage_words,
            config.window_overlap_sentences,
        )
        dropped_p: list[int] = []
        dropped_s: list[int] = []
        for doc_id in removed + [d.id for d in todo]:
            p, s = store.delete_document(doc_id)
            dropped_p += p
            dropped_s += s
        passage_texts: list[str] = []
        passage_ids: list[int] = []
        lexical_rows: list[tuple[int, str, str]] = []  # (passage id, title, text) for BM25
        sentence_spans: list[list[tuple[int, int]]] = []  # of each passage's sentences, in its embedded text
        sentence_ids: list[list[int]] = []
        for doc in todo:
            passages = splitter.split(doc)
            pids, sids = store.add_document(doc, passages)
            passage_ids += pids
            passage_texts += [f"{doc.title}\n{p.text}" for p in passages]
            lexical_rows += [(pid, doc.title, p.text) for pid, p in zip(pids, passages)]
            shift = len(doc.title) + 1
            sentence_spans += [[(shift + s.start, shift + s.end) for s in p.sentences] for p in passages]
            it = iter(sids)
            sentence_ids += [[next(it) for _ in p.sentences] for p in passages]
        if dropped_p:
            passage_vectors.remove_ids(np.asarray(dropped_p, dtype=np.int64))
        if dropped_s:
            sentence_vectors.remove_ids(np.asarray(dropped_s, dtype=np.int64))
        if dropped_p:
            lexical.remove_ids(dropped_p)
        lexical.add(lexical_rows)
        total = len(passage_texts)
        done = 0
        bar = tqdm(total=total, desc="embedding", unit="passage", disable=not show_progress or total < EMBED_BLOCK)
        # Longest first in blocks of similar length: padding is what costs on a CPU. A passage's
        # sentences are pooled from the same run of the model (`Embedder.embed_with_spans`).
        order = sorted(range(total), key=lambda i: -len(passage_texts[i]))
        for k in range(0, total, EMBED_BLOCK):
            chunk = order[k : k + EMBED_BLOCK]
            vectors, per_passage = embedder.embed_with_spans([passage_texts[i] for i in chunk], [sentence_spans[i] for i in chunk])
            passage_vectors.add_with_ids(vectors, np.asarray([passage_ids[i] for i in chunk], dtype=np.int64))
            sentence_vectors.add_with_ids(
                np.vstack(per_passage).astype(np.float32), np.asarray([sid for i in chunk for sid in sentence_ids[i]], dtype=np.int64)
            )
            done += len(chunk)
            bar.update(len(chunk))
            report("embedding", done, total)
        bar.close()
        report("publishing", 0, 1)
        store.commit()
        counts = store.counts()
        store.close()
        passage_vectors.save(work / PASSAGE_VECTORS)
        sentence_vectors.save(work / SENTENCE_VECTORS)
        lexical.save(work / LEXICAL)
        version = max([previous.version if previous else 0, *_existing_versions(index_dir)]) + 1
        manifest = Manifest(
            FORMAT_VERSION,
            version,
            config.model,
            embedder.dimension,
            counts["documents"],
            counts["passages"],
            counts["sentences"],
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
            vector_backend(embedder.backend),
        )
        (work / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))
        _fsync_tree(work)
        final = version_dir(index_dir, version)
        os.rename(work, final)
        pointer = index_dir / f".{CURRENT}.{os.getpid()}"
        pointer.write_text(final.name + "\n")
        with open(pointer, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(pointer, index_dir / CURRENT)
        _fsync_dir(index_dir)
        summary.documents, summary.passages = counts["documents"], counts["passages"]
        summary.embedded = len(passage_texts)
        summary.version = version
        _remove_old_versions(index_dir, version, config.keep_versions)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _existing_versions(index_dir: Path) -> list[int]:
    return [int(p.name[1:]) for p in index_dir.glob("v*") if p.is_dir() and p.name[1:].isdigit()]


def _remove_stale_builds(index_dir: Path) -> None:
    """Folders of builds that were killed; safe to remove because we hold the lock."""
    for p in index_dir.glob(".build-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in index_dir.glob(f".{CURRENT}.*"):
        p.unlink(missing_ok=True)


def _remove_old_versions(index_dir: Path, current: int, keep: int) -> None:
    for v in _existing_versions(index_dir):
        if v > current or v < current - keep:
            shutil.rmtree(version_dir(index_dir, v), ignore_errors=True)
