"""Changing the corpus while serving: add, replace and delete articles, and background rebuilds.

An added article is staged in `corpus/.pending/`, indexed, and only then moved into `corpus/`,
so a crash at any point leaves it either in both the corpus and the index or in neither
(`recover()` settles a staged file left behind by a crash).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from qa.config import Config
from qa.corpus import SUFFIXES, CorpusError, parse_bytes, read_file
from qa.embedding import Embedder
from qa.index import BuildSummary, NoIndex, build_index, open_index
from qa.models import Document

PENDING = ".pending"
BUILD_WAIT_SECONDS = 600.0


class UpdateError(Exception):
    """A change that cannot be made; `status` is the HTTP status that fits."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class RebuildStatus:
    phase: str = "idle"  # idle, reading, embedding, publishing, done, failed
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
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
        name = self._file_for(doc_id) or f"{safe_name(doc_id)}.json"
        docs, summary = self._stage_and_index(name, data)
        return docs[0], summary

    def add_file(self, filename: str, data: bytes) -> tuple[list[Document], BuildSummary]:
        name = safe_name(filename)
        if Path(name).suffix.lower() not in SUFFIXES:
            raise UpdateError(f"unsupported file type {Path(name).suffix!r}; use one of {', '.join(sorted(SUFFIXES))}", 415)
        return self._stage_and_index(name, data)

    def delete(self, doc_id: str) -> BuildSummary:
        path = self._existing_path(doc_id)
        if path is None:
            raise UpdateError(f"no document {doc_id!r}", 404)
        docs = read_file(path, path.relative_to(self.config.corpus).as_posix()) if path.exists() else []
        if len(docs) > 1:
            raise UpdateError(f"document {doc_id!r} is one of {len(docs)} records in {path.name}; edit that file", 409)
        summary = build_index(self.config, self.embedder, deletes=[doc_id], wait=BUILD_WAIT_SECONDS)
        path.unlink(missing_ok=True)
        return summary

    def _stage_and_index(self, name: str, data: bytes) -> tuple[list[Document], BuildSummary]:
        corpus = self.config.corpus.resolve()
        target = (corpus / name).resolve()
        if target.parent != corpus:
            raise UpdateError("the file name must not contain a path", 422)
        try:
            docs = parse_bytes(data, name)
        except CorpusError as exc:
            raise UpdateError(f"{name}: {exc}") from exc
        for doc in docs:
            existing = self._existing_path(doc.id)
            if existing is not None and existing.resolve() != target:
                raise UpdateError(f"document id {doc.id!r} already belongs to {existing.name}", 409)
        pending = corpus / PENDING
        pending.mkdir(parents=True, exist_ok=True)
        staged = pending / name
        tmp = pending / f".{name}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(data)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, staged)
        try:
            previous = [d.id for d in read_file(target, name)] if target.exists() else []
            gone = [i for i in previous if i not in {d.id for d in docs}]
            summary = build_index(self.config, self.embedder, upserts=docs, deletes=gone, wait=BUILD_WAIT_SECONDS)
            os.replace(staged, target)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return docs, summary

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

    def recover(self) -> None:
        """Settles files staged by a process that died: in the index means keep, otherwise drop."""
        pending = self.config.corpus / PENDING
        if not pending.is_dir():
            return
        for staged in pending.iterdir():
            if staged.name.startswith("."):
                staged.unlink(missing_ok=True)
                continue
            try:
                docs = read_file(staged, staged.name)
                index = open_index(self.config)
                try:
                    hashes = index.store.document_hashes()
                finally:
                    index.close()
                indexed = all(hashes.get(d.id) == d.hash for d in docs)
            except (CorpusError, NoIndex):
                indexed = False
            if indexed:
                os.replace(staged, self.config.corpus / staged.name)
            else:
                staged.unlink(missing_ok=True)

    # Rebuilds in the background.

    def start_rebuild(self, full: bool) -> RebuildStatus:
        with self._guard:
            if self._thread is not None and self._thread.is_alive():
                raise UpdateError("a rebuild is already running; see GET /api/index/status", 409)
            self.status = RebuildStatus(phase="reading", full=full, started=_now())
            self._thread = threading.Thread(target=self._rebuild, args=(full,), name="qa-rebuild", daemon=True)
            self._thread.start()
            return self.status

    def _rebuild(self, full: bool) -> None:
        def progress(phase: str, done: int, total: int) -> None:
            if phase != "done":
                self.status.phase, self.status.done, self.status.total = phase, done, total

        try:
            summary = build_index(self.config, self.embedder, rebuild=full, wait=BUILD_WAIT_SECONDS, progress=progress)
            self.status.summary = summary.to_dict()
            self.status.phase = "done"
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
