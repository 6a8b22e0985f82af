"""Building and publishing the next version: copy, change, sync, rename, then swap `CURRENT`.

A build works in a private folder beside the versions and, only when everything is written and
synced, renames it into place and atomically replaces CURRENT. Readers only ever open the version
CURRENT names, so a killed build is invisible to them. One build at a time holds `index/.lock`.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from qa.config import REMOVAL_GUARD_MIN_DOCUMENTS, Config
from qa.corpus import CorpusReport, Skipped, read_corpus
from qa.embedding import Embedder, vector_backend
from qa.index.base import CorpusMissing, IndexBusy, IndexDamaged, IndexMismatch, IndexProblem, Manifest, NoIndex, TooManyRemovals
from qa.index.files import (
    CURRENT,
    LEXICAL,
    PASSAGE_VECTORS,
    SENTENCE_VECTORS,
    STORE,
    FilesIndex,
    current_version,
    open_files_index,
    version_dir,
    write_manifest,
)
from qa.index.lexical import LexicalIndex
from qa.index.milvus import MilvusBuild
from qa.index.milvus import lease as milvus_lease
from qa.index.milvus.read import MilvusStore
from qa.index.milvus.schema import Milvus
from qa.index.store import Store
from qa.index.vectors import VectorIndex
from qa.models import Document, Passage
from qa.passages import PassageSplitter
from qa.progress import Progress

LOCK = ".lock"
EMBED_BLOCK = 256

#: (phase, done, total): phases are reading, embedding, publishing, done.
ProgressFn = Callable[[str, int, int], None]


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
    #: What a worker of a multi-part build did, when it did not publish.
    note: str | None = None
    #: Near-duplicates in the index (qa/index/duplicates.py): documents that are not their cluster's
    #: head, and the clusters of more than one document they fall in.
    copies: int = 0
    clusters: int = 0

    def line(self) -> str:
        return (
            (f"built anew: {self.started_over}\n" if self.started_over else "")
            + f"indexed: {self.added} added, {self.changed} changed, {self.removed} removed, "
            f"{len(self.skipped)} skipped, {self.unchanged} unchanged; {self.documents} documents, "
            f"{self.passages} passages ({self.embedded} embedded), {self.copies} copies in {self.clusters} clusters in {self.seconds:.1f}s"
            + (f"; version {self.version}" if self.version else "")
            + (f"\n{self.note}" if self.note else "")
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [asdict(s) for s in self.skipped]
        return d


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


class BuildLock:
    """The file lock of this machine and, on Milvus, the build lease that keeps builders on other
    machines out (qa/index/milvus/lease.py); `release()` lets go of both."""

    def __init__(self, file_lock: FileLock, lease: milvus_lease.Lease | None = None) -> None:
        self.file_lock, self.lease = file_lock, lease

    def release(self) -> None:
        try:
            if self.lease is not None:
                milvus_lease.release_held(self.lease)
        finally:
            self.file_lock.release()


def build_lock(config: Config, wait: float, part: tuple[int, int] | None = None) -> BuildLock:
    """Waits up to `wait` seconds for the build lock (IndexBusy after): `index/.lock`, then on
    Milvus the build lease, shared by the workers of one `--part I/N` build."""
    started = time.monotonic()
    config.index.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(config.index / LOCK))
    try:
        lock.acquire(timeout=wait)
    except Timeout as exc:
        raise IndexBusy(
            f"another build holds {config.index / LOCK}; wait for it to finish"
            + (f" (waited {wait:.0f}s)" if wait > 0 else " or pass --wait SECONDS")
        ) from exc
    if not config.milvus_uri:
        return BuildLock(lock)
    try:
        db = Milvus(config)
        db.ensure_meta()
        return BuildLock(lock, milvus_lease.hold(db, max(0.0, wait - (time.monotonic() - started)), part))
    except BaseException:
        lock.release()
        raise


@contextmanager
def writing(config: Config, wait: float) -> Iterator[None]:
    """Holds the build lock: every change to the index, and to the corpus files behind it, happens
    inside, one at a time across threads and processes, so their order is the publishing order."""
    lock = build_lock(config, wait)
    try:
        yield
    finally:
        lock.release()


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
    locked: bool = False,
    part: tuple[int, int] | None = None,
    allow_removals: bool = False,
) -> BuildSummary:
    """Brings the index up to date and publishes a new version if anything changed.

    With `upserts`/`deletes`, only those documents change (the service's fast path); otherwise the
    whole corpus folder is read and compared by content hash. A corpus folder that is missing is
    refused (`CorpusMissing`), and so is a read that would remove more than `max_remove_fraction`
    of the published documents (`TooManyRemovals`) unless `allow_removals`. `locked`: the caller
    already holds the build lock (`writing`), to make more than the build one step.
    """
    started = time.perf_counter()
    report = lambda phase, done=0, total=0: progress and progress(phase, done, total)  # noqa: E731
    if part is not None and not config.milvus_uri:
        raise IndexProblem("a build in parts needs the index on Milvus (QA_MILVUS_URI): the files index has one builder")
    if upserts is None and deletes is None:
        require_corpus(config.corpus)
    lock = None if locked else build_lock(config, wait, part)
    try:
        if config.milvus_uri:
            summary = _build_milvus(config, embedder, rebuild, upserts, deletes, report, show_progress, part, allow_removals)
            summary.seconds = time.perf_counter() - started
            report("done", 1, 1)
            return summary
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
        live = old_hashes if previous else _published_hashes(config)
        todo, removed = _changes(config, old_hashes, upserts, deletes, summary, live, allow_removals, show_progress)
        if previous is not None and not todo and not removed:
            counts = previous.store.counts()
            summary.documents, summary.passages = counts["documents"], counts["passages"]
            summary.copies, summary.clusters = previous.store.cluster_counts()
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
        if lock is not None:
            lock.release()


def _changes(
    config: Config,
    old_hashes: dict[str, str],
    upserts: list[Document] | None,
    deletes: list[str] | None,
    summary: BuildSummary,
    live: dict[str, str],
    allow_removals: bool,
    show_progress: bool = False,
) -> tuple[list[Document], list[str]]:
    """(documents to embed, document ids to drop), compared by content hash; counts go to `summary`.
    `live`: the published documents (`old_hashes`, or on a rebuild what readers see until it publishes)."""
    if upserts is None and deletes is None:
        corpus: CorpusReport = read_corpus(config.corpus, show_progress)
        summary.skipped = corpus.skipped
        wanted = {d.id: d for d in corpus.documents}
        if not allow_removals:
            guard_removals(config, [i for i in live if i not in wanted], len(live))
        removed = [i for i in old_hashes if i not in wanted]
    else:
        wanted = {d.id: d for d in upserts or []}
        removed = [i for i in deletes or [] if i in old_hashes and i not in wanted]
    todo = [d for d in wanted.values() if old_hashes.get(d.id) != d.hash]
    summary.added = sum(1 for d in todo if d.id not in old_hashes)
    summary.changed = len(todo) - summary.added
    summary.removed = len(removed)
    summary.unchanged = len(wanted) - len(todo)
    return todo, removed


def require_corpus(folder: Path) -> None:
    """Refuses a corpus folder that does not exist, is not a folder or cannot be listed: read as
    empty, it would remove every published document."""
    if not folder.exists():
        raise CorpusMissing(f"the corpus folder {folder} does not exist: check --corpus / QA_CORPUS (nothing was indexed)")
    if not folder.is_dir():
        raise CorpusMissing(f"the corpus {folder} is not a folder: check --corpus / QA_CORPUS (nothing was indexed)")
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
    except OSError as exc:
        raise CorpusMissing(f"the corpus folder {folder} cannot be read ({exc.strerror or exc}): nothing was indexed") from exc


def guard_removals(config: Config, removing: list[str], published: int) -> None:
    """Refuses a build of the corpus folder that would remove more than `max_remove_fraction` of
    the `published` documents: a folder emptied or half-mounted by mistake must not reach readers."""
    if published < REMOVAL_GUARD_MIN_DOCUMENTS or len(removing) <= config.max_remove_fraction * published:
        return
    shown = ", ".join(sorted(removing)[:5]) + (", ..." if len(removing) > 5 else "")
    raise TooManyRemovals(
        f"refusing to remove {len(removing)} of the {published} indexed documents ({len(removing) / published:.0%}, "
        f"more than QA_MAX_REMOVE_FRACTION={config.max_remove_fraction:g}) because they are no longer in {config.corpus} "
        f"({shown}). If that is meant, run `qa index --allow-removals`; otherwise check --corpus / QA_CORPUS. Nothing was published."
    )


def _published_hashes(config: Config) -> dict[str, str]:
    """The documents readers see now, whatever model built them (a rebuild's removal guard compares with them)."""
    try:
        version = current_version(config.index)
        if version is None:
            return {}
        store = Store(version_dir(config.index, version) / STORE, readonly=True)
    except (IndexDamaged, OSError, sqlite3.DatabaseError):
        return {}  # nothing readable is served: nothing to guard
    try:
        return store.document_hashes()
    except sqlite3.DatabaseError:
        return {}
    finally:
        store.close()


def _build_milvus(
    config: Config,
    embedder: Embedder,
    rebuild: bool,
    upserts: list[Document] | None,
    deletes: list[str] | None,
    report: Callable,
    show_progress: bool,
    part: tuple[int, int] | None,
    allow_removals: bool,
) -> BuildSummary:
    """The same build on Milvus (qa/index/milvus/): rows of the next version, then one publish.
    With `part`, only this worker's share of the documents, and the last part in publishes."""


    report("reading")
    summary = BuildSummary()
    build = MilvusBuild(config, embedder, rebuild, part)
    todo, removed = _changes(config, build.old_hashes, upserts, deletes, summary, build.live_hashes, allow_removals, show_progress)
    drop = list(build.live_hashes) if rebuild else removed + [d.id for d in todo if d.id in build.old_hashes]
    todo, drop = [d for d in todo if build.mine(d.id)], [i for i in drop if build.mine(i)]
    if part is None and build.previous and not todo and not drop:
        counts = build.db_counts()
        summary.documents, summary.passages, summary.version = counts["documents"], counts["passages"], build.previous
        summary.copies, summary.clusters = MilvusStore(build.db, build.previous).cluster_counts()
        return summary
    build.remove(drop)
    split, vectors, sentence_vectors = embed_documents(config, embedder, todo, report, show_progress)
    build.measure(split)
    k = 0
    for doc, passages in split:
        build.add(doc, passages, vectors[k : k + len(passages)], sentence_vectors[k : k + len(passages)])
        k += len(passages)
    summary.embedded = len(vectors)
    if part is not None and not build.part_done():
        summary.note = f"part {part[0]}/{part[1]} is in; the last part to finish publishes version {build.target}"
        return summary
    report("publishing", 0, 1)
    manifest = build.publish()
    summary.copies, summary.clusters = build.copies
    summary.documents, summary.passages, summary.version = manifest.documents, manifest.passages, manifest.version
    return summary


# Passages and their vectors: shared by both engines (and the training scripts' targets).


def split_documents(config: Config, embedder: Embedder, docs: list[Document]) -> list[tuple[Document, list[Passage]]]:
    """Each document with its passages, split as every index splits them (`Config.indexed_settings`)."""
    splitter = PassageSplitter(
        embedder.count_tokens, embedder.split_tokens, embedder.max_tokens, config.min_passage_words, config.window_overlap_sentences
    )
    return [(doc, splitter.split(doc)) for doc in docs]


def embed_blocks(
    embedder: Embedder, split: list[tuple[Document, list[Passage]]], report: Callable = lambda *a: None, show_progress: bool = False
) -> Iterator[tuple[list[int], np.ndarray, list[np.ndarray]]]:
    """(positions of the passages in `split` order, their vectors, each one's sentence vectors), a
    block at a time. A passage is embedded with its article's title before it, and its sentences are
    pooled from the same run of the model (`Embedder.embed_with_spans`). Longest first in blocks of
    similar length: padding is what costs on a CPU."""
    texts = [f"{doc.title}\n{p.text}" for doc, passages in split for p in passages]
    shift = [len(doc.title) + 1 for doc, passages in split for _ in passages]
    spans = [[(k + s.start, k + s.end) for s in p.sentences] for k, p in zip(shift, (p for _, ps in split for p in ps))]
    total = len(texts)
    order = sorted(range(total), key=lambda i: -len(texts[i]))
    with Progress(total, "embedding", "passage", enabled=show_progress and total >= EMBED_BLOCK) as bar:
        for k in range(0, total, EMBED_BLOCK):
            chunk = order[k : k + EMBED_BLOCK]
            vectors, per_passage = embedder.embed_with_spans([texts[i] for i in chunk], [spans[i] for i in chunk])
            yield chunk, vectors, [np.asarray(v, np.float32) for v in per_passage]
            bar.update(len(chunk))
            report("embedding", min(k + EMBED_BLOCK, total), total)


def embed_documents(
    config: Config, embedder: Embedder, docs: list[Document], report: Callable = lambda *a: None, show_progress: bool = False
) -> tuple[list[tuple[Document, list[Passage]]], np.ndarray, list[np.ndarray]]:
    """Each document's passages, their vectors and their sentences' vectors, all in memory, in order
    (the Milvus build writes rows by document; training/retrieval.py mines its targets from them)."""
    split = split_documents(config, embedder, docs)
    total = sum(len(passages) for _, passages in split)
    vectors = np.zeros((total, embedder.dimension), np.float32)
    sentence_vectors: list[np.ndarray] = [np.zeros((0, embedder.dimension), np.float32)] * total
    for chunk, block, per_passage in embed_blocks(embedder, split, report, show_progress):
        for j, i in enumerate(chunk):
            vectors[i], sentence_vectors[i] = block[j], per_passage[j]
    return split, vectors, sentence_vectors


# The files engine: the next version in a private folder, then published.


def _previous(config: Config) -> FilesIndex | None:
    try:
        return open_files_index(config)
    except NoIndex:
        return None


@dataclass
class _NextVersion:
    """The parts of the version being built, in its private work folder: the previous version's
    store copied, and the builder's own copies of its search files, changed in place."""

    work: Path
    store: Store
    passage_vectors: VectorIndex
    sentence_vectors: VectorIndex
    lexical: LexicalIndex

    @classmethod
    def start(cls, config: Config, embedder: Embedder, previous: FilesIndex | None) -> _NextVersion:
        _remove_stale_builds(config.index)
        work = config.index / f".build-{os.getpid()}-{int(time.time() * 1000)}"
        work.mkdir()
        if previous is None:
            parts = (
                VectorIndex.empty(embedder.dimension, config),
                VectorIndex.empty(embedder.dimension, config),
                LexicalIndex.empty(config.vector_delta_fraction),
            )
        else:
            shutil.copy2(previous.path / STORE, work / STORE)
            # The previous version's own objects, changed in place: reading an HNSW base again is
            # slow (its graph is not memory-mapped); its files are never written, only linked.
            parts = (previous.passage_vectors, previous.sentence_vectors, previous.lexical)
            previous.close()
        store = Store(work / STORE)
        store.begin()
        return cls(work, store, *parts)

    def remove(self, doc_ids: list[str]) -> None:
        """The documents' rows, vectors and postings out."""
        dropped_p: list[int] = []
        dropped_s: list[int] = []
        for doc_id in doc_ids:
            p, s = self.store.delete_document(doc_id)
            dropped_p += p
            dropped_s += s
        if dropped_p:
            self.passage_vectors.remove_ids(np.asarray(dropped_p, dtype=np.int64))
            self.lexical.remove_ids(dropped_p)
        if dropped_s:
            self.sentence_vectors.remove_ids(np.asarray(dropped_s, dtype=np.int64))

    def add(self, split: list[tuple[Document, list[Passage]]], embedder: Embedder, report: Callable, show_progress: bool) -> None:
        """The documents' rows and postings in, then their passages and sentences embedded into the vectors."""
        passage_ids: list[int] = []
        sentence_ids: list[list[int]] = []  # of each passage, in order
        lexical_rows: list[tuple[int, str, str]] = []  # (passage id, title, text) for BM25
        for doc, passages in split:
            pids, sids = self.store.add_document(doc, passages)
            passage_ids += pids
            lexical_rows += [(pid, doc.title, p.text) for pid, p in zip(pids, passages)]
            it = iter(sids)
            sentence_ids += [[next(it) for _ in p.sentences] for p in passages]
        self.lexical.add(lexical_rows)
        for chunk, vectors, per_passage in embed_blocks(embedder, split, report, show_progress):
            self.passage_vectors.add_with_ids(vectors, np.asarray([passage_ids[i] for i in chunk], dtype=np.int64))
            self.sentence_vectors.add_with_ids(
                np.vstack(per_passage).astype(np.float32), np.asarray([sid for i in chunk for sid in sentence_ids[i]], dtype=np.int64)
            )

    def write(self, manifest_for: Callable[[dict[str, int]], Manifest], dedup_threshold: float) -> tuple[Manifest, tuple[int, int]]:
        """Everything on disk and synced, clusters of near-duplicates made anew; the manifest made
        from the final counts, and (copies, clusters)."""
        copies = self.store.recluster(dedup_threshold)
        self.store.commit()
        counts = self.store.counts()
        self.store.close()
        self.passage_vectors.save(self.work / PASSAGE_VECTORS)
        self.sentence_vectors.save(self.work / SENTENCE_VECTORS)
        self.lexical.save(self.work / LEXICAL)
        manifest = manifest_for(counts)
        write_manifest(self.work, manifest)
        _fsync_tree(self.work)
        return manifest, copies


def _publish(
    config: Config,
    embedder: Embedder,
    previous: FilesIndex | None,
    todo: list[Document],
    removed: list[str],
    summary: BuildSummary,
    report: Callable,
    show_progress: bool,
) -> None:
    """Builds the next version beside the published ones, then makes it the one readers open."""
    index_dir = config.index
    version = max([previous.version if previous else 0, *_existing_versions(index_dir)]) + 1
    split = split_documents(config, embedder, todo)
    next_version = _NextVersion.start(config, embedder, previous)
    try:
        next_version.remove(removed + [d.id for d in todo])
        next_version.add(split, embedder, report, show_progress)
        report("publishing", 0, 1)
        vectors = vector_backend(embedder.backend)
        manifest, (summary.copies, summary.clusters) = next_version.write(
            lambda counts: Manifest.new(version, config, embedder.dimension, vectors, counts), config.dedup_threshold
        )
        _swap_current(index_dir, next_version.work, version)
        summary.documents, summary.passages = manifest.documents, manifest.passages
        summary.embedded = sum(len(passages) for _, passages in split)
        summary.version = version
        _remove_old_versions(index_dir, version, config.keep_versions)
    finally:
        if next_version.work.exists():
            shutil.rmtree(next_version.work, ignore_errors=True)


def _swap_current(index_dir: Path, work: Path, version: int) -> None:
    """The work folder renamed into place, then CURRENT replaced atomically: the publish."""
    final = version_dir(index_dir, version)
    os.rename(work, final)
    pointer = index_dir / f".{CURRENT}.{os.getpid()}"
    pointer.write_text(final.name + "\n")
    with open(pointer, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(pointer, index_dir / CURRENT)
    _fsync_dir(index_dir)


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
