"""Changing the corpus while serving: add, replace and delete articles, and background rebuilds.

Every write is one step under the build lock (`qa.index.writing`): check, stage, index, publish
the index, then change `corpus/`. Writes therefore happen one at a time, across threads and
processes, and their order is the same in `corpus/` and in the index: the last writer wins in both.

A crash can stop a write between any two of those steps. What it leaves behind is settled by
`recover()` at start-up, under the same lock:
- `corpus/.pending/<write id>.<file name>`: an article staged by a write. If the published index
  holds exactly its documents, the write got that far: the file goes into `corpus/`; otherwise
  it is dropped, and so is the write.
- `corpus/.pending/<write id>.<file name>.delete`: a delete's tombstone, naming its document ids.
  If the index no longer holds them, the delete was published: the file goes too; otherwise
  the tombstone is dropped.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from qa.config import Config
from qa.corpus import SUFFIXES, CorpusError, parse_bytes, read_file
from qa.embedding import Embedder
from qa.index import (
    BuildSummary,
    CorpusMissing,
    Index,
    IndexBusy,
    NoIndex,
    TooManyRemovals,
    build_index,
    build_lock,
    open_index,
)
from qa.models import Document

PENDING = ".pending"
TOMBSTONE = ".delete"
BUILD_WAIT_SECONDS = 600.0


class UpdateError(Exception):
    """A change that cannot be made; `status` is the HTTP status that fits."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


#: A background rebuild's phases; refused: a guard stopped it (missing corpus, too many removals).
REBUILD_PHASES = ("idle", "reading", "embedding", "publishing", "done", "failed", "refused")


@dataclass
class RebuildStatus:
    phase: str = "idle"  # one of REBUILD_PHASES
    done: int = 0
    total: int = 0
    full: bool = False
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    summary: dict | None = None


def safe_name(name: str) -> str:
    """A file name that stays inside the corpus folder whatever it was given."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name.replace("\\", "/")).name).strip(".-")
    return base[:120] or "article"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class IndexManager:
    def __init__(self, config: Config, embedder: Embedder) -> None:
        self.config = config
        self.embedder = embedder
        self.status = RebuildStatus()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    # Articles.

    def add_text(self, title: str, text: str, doc_id: str | None = None, **meta: str | None) -> tuple[Document, BuildSummary]:
        if not title.strip() or not text.strip():
            raise UpdateError("an article needs a non-empty title and text")
        doc_id = (doc_id or "").strip() or f"{safe_name(title.lower())[:60]}-{uuid.uuid4().hex[:8]}"
        record = {"id": doc_id, "title": title.strip(), "text": text, **{k: v for k, v in meta.items() if v}}
        data = json.dumps(record, ensure_ascii=False).encode("utf-8")
        docs = self._parse(f"{safe_name(doc_id)}.json", data)
        with self._writing():
            # Where the article lives is decided under the lock: a concurrent write may just have created it.
            name = self._file_for(doc_id) or f"{safe_name(doc_id)}.json"
            _, summary = self._write(name, data, docs)
        return docs[0], summary

    def add_file(self, filename: str, data: bytes) -> tuple[list[Document], BuildSummary]:
        name = safe_name(filename)
        if Path(name).suffix.lower() not in SUFFIXES:
            raise UpdateError(f"unsupported file type {Path(name).suffix!r}; use one of {', '.join(sorted(SUFFIXES))}", 415)
        docs = self._parse(name, data)
        with self._writing():
            return self._write(name, data, docs)

    def delete(self, doc_id: str) -> BuildSummary:
        with self._writing():
            path = self._existing_path(doc_id)
            if path is None:
                raise UpdateError(f"no document {doc_id!r}", 404)
            docs = read_file(path, path.relative_to(self.config.corpus).as_posix()) if path.exists() else []
            if len(docs) > 1:
                raise UpdateError(f"document {doc_id!r} is one of {len(docs)} records in {path.name}; edit that file", 409)
            tombstone = self._stage(f"{path.name}{TOMBSTONE}", json.dumps({"ids": [doc_id]}).encode())
            try:
                summary = build_index(self.config, self.embedder, deletes=[doc_id], locked=True)
                path.unlink(missing_ok=True)
            finally:
                tombstone.unlink(missing_ok=True)
            return summary

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The build lock (a 409 when another build holds it longer than a write waits), with what
        killed writes left behind settled first: under the lock, nothing in .pending/ is a live write's."""
        try:
            lock = build_lock(self.config, BUILD_WAIT_SECONDS)
        except IndexBusy as exc:
            raise UpdateError(f"the index is busy with another build; try again ({exc})", 409) from exc
        try:
            self._settle_pending()
            yield
        finally:
            lock.release()

    @staticmethod
    def _parse(name: str, data: bytes) -> list[Document]:
        try:
            return parse_bytes(data, name)
        except CorpusError as exc:
            raise UpdateError(f"{name}: {exc}") from exc

    def _write(self, name: str, data: bytes, docs: list[Document]) -> tuple[list[Document], BuildSummary]:
        """Stages `data` as corpus/`name`, indexes its documents, then publishes the file. Holds the lock."""
        corpus = self.config.corpus.resolve()
        target = (corpus / name).resolve()
        if target.parent != corpus:
            raise UpdateError("the file name must not contain a path", 422)
        for doc in docs:
            existing = self._existing_path(doc.id)
            if existing is not None and existing.resolve() != target:
                raise UpdateError(f"document id {doc.id!r} already belongs to {existing.name}", 409)
        staged = self._stage(name, data)
        try:
            previous = [d.id for d in read_file(target, name)] if target.exists() else []
            gone = [i for i in previous if i not in {d.id for d in docs}]
            summary = build_index(self.config, self.embedder, upserts=docs, deletes=gone, locked=True)
            os.replace(staged, target)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return docs, summary

    def _stage(self, name: str, data: bytes) -> Path:
        """`data` durably in corpus/.pending/, under a name no other write uses."""
        pending = self.config.corpus / PENDING
        pending.mkdir(parents=True, exist_ok=True)
        staged = pending / f"{uuid.uuid4().hex}.{name}"
        tmp = pending / f".{staged.name}.tmp"
        tmp.write_bytes(data)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, staged)
        return staged

    def _existing_path(self, doc_id: str) -> Path | None:
        try:
            index = open_index(self.config)
        except NoIndex:
            return None
        try:
            row = index.store.document(doc_id)
        finally:
            index.close()
        if row is None or not row.get("path"):
            return None
        return self.config.corpus / row["path"]

    def _file_for(self, doc_id: str) -> str | None:
        path = self._existing_path(doc_id)
        return path.name if path is not None and path.parent.resolve() == self.config.corpus.resolve() else None

    def recover(self, wait: float = 5.0) -> None:
        """Settles what writes killed mid-way left in corpus/.pending/ (see the module's docstring).

        Called at start-up. When another process is building, it is left for the next write, which
        settles leftovers first."""
        if not (self.config.corpus / PENDING).is_dir():
            return
        try:
            lock = build_lock(self.config, wait)
        except IndexBusy:
            return
        try:
            self._settle_pending()
        finally:
            lock.release()

    def _settle_pending(self) -> None:
        pending = self.config.corpus / PENDING
        leftovers = sorted(pending.iterdir(), key=lambda p: p.stat().st_mtime_ns) if pending.is_dir() else []
        if not leftovers:
            return
        try:
            index: Index | None = open_index(self.config)
        except NoIndex:
            index = None
        try:
            hashes = index.store.document_hashes() if index is not None else {}
        finally:
            if index is not None:
                index.close()
        for staged in leftovers:
            self._settle(staged, hashes)

    def _settle(self, staged: Path, hashes: dict[str, str]) -> None:
        write_id, _, name = staged.name.partition(".")
        if staged.name.startswith(".") or not name or not staged.is_file():
            staged.unlink(missing_ok=True)  # a staging write cut short, or something that is not ours
            return
        target = self.config.corpus / name.removesuffix(TOMBSTONE)
        if name.endswith(TOMBSTONE):
            try:
                ids = json.loads(staged.read_text())["ids"]
            except (ValueError, KeyError, OSError):
                ids = None
            if ids is not None and not any(i in hashes for i in ids):
                target.unlink(missing_ok=True)  # the delete was published; its file goes too
            staged.unlink(missing_ok=True)
            return
        try:
            docs = read_file(staged, name)
            indexed = all(hashes.get(d.id) == d.hash for d in docs)
        except CorpusError:
            indexed = False
        if indexed:
            os.replace(staged, target)
        else:
            staged.unlink(missing_ok=True)

    # Rebuilds in the background.

    def start_rebuild(self, full: bool, allow_removals: bool = False) -> RebuildStatus:
        with self._guard:
            if self._thread is not None and self._thread.is_alive():
                raise UpdateError("a rebuild is already running; see GET /api/index/status", 409)
            self.status = RebuildStatus(phase="reading", full=full, started=_now())
            self._thread = threading.Thread(target=self._rebuild, args=(full, allow_removals), name="qa-rebuild", daemon=True)
            self._thread.start()
            return self.status

    def _rebuild(self, full: bool, allow_removals: bool) -> None:
        def progress(phase: str, done: int, total: int) -> None:
            if phase != "done":
                self.status.phase, self.status.done, self.status.total = phase, done, total

        try:
            summary = build_index(
                self.config,
                self.embedder,
                rebuild=full,
                wait=BUILD_WAIT_SECONDS,
                progress=progress,
                show_progress=True,  # a line per tenth of the work in the server's log
                allow_removals=allow_removals,
            )
            self.status.summary = summary.to_dict()
            self.status.phase = "done"
        except (CorpusMissing, TooManyRemovals) as exc:  # the guards: nothing was published
            self.status.error = str(exc)
            self.status.phase = "refused"
        except Exception as exc:  # reported through the status endpoint
            self.status.error = f"{type(exc).__name__}: {exc}"
            self.status.phase = "failed"
        finally:
            self.status.finished = _now()

    def wait(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(0.1)

    def status_dict(self) -> dict:
        return asdict(self.status)
