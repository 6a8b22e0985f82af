"""Building and publishing the next version: copy, change, sync, rename, then swap `CURRENT`.

A build works in a private folder beside the versions and, only when everything is written and
synced, renames it into place and atomically replaces CURRENT. Readers only ever open the version
CURRENT names, so a killed build is invisible to them. One build at a time holds `index/.lock`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from qa.config import REMOVAL_GUARD_MIN_DOCUMENTS, Config
from qa.corpus import CorpusReport, Skipped, read_corpus
from qa.embedding import Embedder, model_version, vector_backend
from qa.index.vectors import VectorIndex
from qa.index.version import (
    CURRENT,
    FORMAT_VERSION,
    LEXICAL,
    MANIFEST,
    PASSAGE_VECTORS,
    SENTENCE_VECTORS,
    STORE,
    CorpusMissing,
    IndexBusy,
    IndexDamaged,
    IndexMismatch,
    IndexProblem,
    IndexVersion,
    Manifest,
    NoIndex,
    TooManyRemovals,
    current_version,
    open_index,
    version_dir,
)
from qa.lexical import LexicalIndex
from qa.models import Document, Passage
from qa.passages import PassageSplitter
from qa.progress import Progress
from qa.store import Store

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

    def line(self) -> str:
        return (
            (f"built anew: {self.started_over}\n" if self.started_over else "")
            + f"indexed: {self.added} added, {self.changed} changed, {self.removed} removed, "
            f"{len(self.skipped)} skipped, {self.unchanged} unchanged; {self.documents} documents, "
            f"{self.passages} passages ({self.embedded} embedded) in {self.seconds:.1f}s"
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
    lock = None if locked else build_lock(config, wait)
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
        return {}
    try:
        return store.document_hashes()
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
    """The same build on Milvus (qa/index/milvus.py): rows of the next version, then one publish.
    With `part`, only this worker's share of the documents, and the last part in publishes."""
    from qa.index.milvus import MilvusBuild

    report("reading")
    summary = BuildSummary()
    build = MilvusBuild(config, embedder, rebuild, part)
    todo, removed = _changes(config, build.old_hashes, upserts, deletes, summary, build.live_hashes, allow_removals, show_progress)
    drop = list(build.live_hashes) if rebuild else removed + [d.id for d in todo if d.id in build.old_hashes]
    todo, drop = [d for d in todo if build.mine(d.id)], [i for i in drop if build.mine(i)]
    if part is None and build.previous and not todo and not drop:
        counts = build.db_counts()
        summary.documents, summary.passages, summary.version = counts["documents"], counts["passages"], build.previous
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
    summary.documents, summary.passages, summary.version = manifest.documents, manifest.passages, manifest.version
    return summary


def _splitter(config: Config, embedder: Embedder) -> PassageSplitter:
    return PassageSplitter(
        embedder.count_tokens, embedder.split_tokens, embedder.max_tokens, config.min_passage_words, config.window_overlap_sentences
    )


def embed_documents(
    config: Config, embedder: Embedder, docs: list[Document], report: Callable = lambda *a: None, show_progress: bool = False
) -> tuple[list[tuple[Document, list[Passage]]], np.ndarray, list[np.ndarray]]:
    """Each document's passages, their vectors and their sentences' vectors, as an index holds them
    (also the training targets the reranker mines its negatives from: training/retrieval.py)."""
    split = [(doc, _splitter(config, embedder).split(doc)) for doc in docs]
    texts = [f"{doc.title}\n{p.text}" for doc, passages in split for p in passages]
    shift = [len(doc.title) + 1 for doc, passages in split for _ in passages]
    spans = [[(k + s.start, k + s.end) for s in p.sentences] for k, p in zip(shift, (p for _, ps in split for p in ps))]
    vectors, sentence_vectors = _embed(embedder, texts, spans, report, show_progress)
    return split, vectors, sentence_vectors


def _embed(
    embedder: Embedder, texts: list[str], spans: list[list[tuple[int, int]]], report: Callable, show_progress: bool
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Passage vectors and each passage's sentence vectors, in the order given. Longest first in
    blocks of similar length: padding is what costs on a CPU."""
    total = len(texts)
    vectors = np.zeros((total, embedder.dimension), np.float32)
    per_sentence: list[np.ndarray] = [np.zeros((0, embedder.dimension), np.float32)] * total
    order = sorted(range(total), key=lambda i: -len(texts[i]))
    bar = Progress(total, "embedding", "passage", enabled=show_progress and total >= EMBED_BLOCK)
    for k in range(0, total, EMBED_BLOCK):
        chunk = order[k : k + EMBED_BLOCK]
        block, sentences = embedder.embed_with_spans([texts[i] for i in chunk], [spans[i] for i in chunk])
        for j, i in enumerate(chunk):
            vectors[i], per_sentence[i] = block[j], np.asarray(sentences[j], np.float32)
        bar.update(len(chunk))
        report("embedding", min(k + EMBED_BLOCK, total), total)
    bar.close()
    return vectors, per_sentence


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
            # place: reading an HNSW base again is slow (its graph is not memory-mapped).
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
        bar = Progress(total, "embedding", "passage", enabled=show_progress and total >= EMBED_BLOCK)
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
            datetime.now(UTC).isoformat(timespec="seconds"),
            vector_backend(embedder.backend),
            model_version(config.model),
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
