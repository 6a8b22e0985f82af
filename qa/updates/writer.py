"""The corpus writer: add, replace and delete articles while serving.

Every write is one step under the build lock (`qa.index.writing`): check, stage, index, publish
the index, then change `corpus/`. Writes therefore happen one at a time, across threads and
processes, and their order is the same in `corpus/` and in the index: the last writer wins in
both. What a crash leaves between two steps is settled by `qa/updates/recovery.py`.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qa.config import Config
from qa.corpus import SUFFIXES, CorpusError, parse_bytes, read_file
from qa.embedding import Embedder
from qa.index import BuildSummary, IndexBusy, NoIndex, build_index, build_lock, open_index
from qa.models import Document
from qa.updates.errors import WriteRejected
from qa.updates.recovery import PENDING, TOMBSTONE, settle_pending

#: How long a write waits for another build before it is turned away as busy.
BUILD_WAIT_SECONDS = 600.0


def safe_name(name: str) -> str:
    """A file name that stays inside the corpus folder whatever it was given."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name.replace("\\", "/")).name).strip(".-")
    return base[:120] or "article"


class CorpusWriter:
    """Adds, replaces and deletes articles: in `corpus/` and in the index, in one step each, one
    at a time across threads and processes (the build lock). Explicit deletes are never limited
    by the removal guard: they name what they remove."""

    def __init__(self, config: Config, embedder: Embedder) -> None:
        self.config = config
        self.embedder = embedder

    def add_text(self, title: str, text: str, doc_id: str | None = None, **meta: str | None) -> tuple[Document, BuildSummary]:
        """An article from its title and text (JSON or the web form), stored as a .json file."""
        if not title.strip() or not text.strip():
            raise WriteRejected("an article needs a non-empty title and text")
        doc_id = (doc_id or "").strip() or f"{safe_name(title.lower())[:60]}-{uuid.uuid4().hex[:8]}"
        record = {"id": doc_id, "title": title.strip(), "text": text, **{k: v for k, v in meta.items() if v}}
        data = json.dumps(record, ensure_ascii=False).encode("utf-8")
        docs = self._parse(f"{safe_name(doc_id)}.json", data)
        with self.writing():
            # Where the article lives is decided under the lock: a concurrent write may just have created it.
            name = self._file_for(doc_id) or f"{safe_name(doc_id)}.json"
            _, summary = self._write(name, data, docs)
        return docs[0], summary

    def add_file(self, filename: str, data: bytes) -> tuple[list[Document], BuildSummary]:
        """An uploaded file, of any format the corpus reads."""
        name = safe_name(filename)
        if Path(name).suffix.lower() not in SUFFIXES:
            raise WriteRejected(f"unsupported file type {Path(name).suffix!r}; use one of {', '.join(sorted(SUFFIXES))}", "unsupported")
        docs = self._parse(name, data)
        with self.writing():
            return self._write(name, data, docs)

    def add_files(self, files: list[tuple[str, bytes]]) -> tuple[list[Document], BuildSummary]:
        """Several files (name, data) in one step: staged, indexed in one build, then published
        together (the feed poller's batches). Names are taken as safe names; a file that cannot be
        read, or whose ids belong to another file, is refused before anything is staged."""
        named = [(safe_name(name), data) for name, data in files]
        parsed = [(name, data, self._parse(name, data)) for name, data in named]
        with self.writing():
            return self._write_many(parsed)

    def delete(self, doc_id: str) -> BuildSummary:
        with self.writing():
            path = self._existing_path(doc_id)
            if path is None:
                raise WriteRejected(f"no document {doc_id!r}", "missing")
            docs = read_file(path, path.relative_to(self.config.corpus).as_posix()) if path.exists() else []
            if len(docs) > 1:
                raise WriteRejected(f"document {doc_id!r} is one of {len(docs)} records in {path.name}; edit that file", "conflict")
            tombstone = self._stage(f"{path.name}{TOMBSTONE}", json.dumps({"ids": [doc_id]}).encode())
            try:
                summary = build_index(self.config, self.embedder, deletes=[doc_id], locked=True)
                path.unlink(missing_ok=True)
            finally:
                tombstone.unlink(missing_ok=True)
            return summary

    @contextmanager
    def writing(self) -> Iterator[None]:
        """The build lock (busy when another build holds it longer than a write waits), with what
        killed writes left behind settled first. The folder watcher (qa/ingest/watch.py) builds
        inside it too, so its batches take their turn with every other write."""
        try:
            lock = build_lock(self.config, BUILD_WAIT_SECONDS)
        except IndexBusy as exc:
            raise WriteRejected(f"the index is busy with another build; try again ({exc})", "busy") from exc
        try:
            settle_pending(self.config)
            yield
        finally:
            lock.release()

    @staticmethod
    def _parse(name: str, data: bytes) -> list[Document]:
        try:
            return parse_bytes(data, name)
        except CorpusError as exc:
            raise WriteRejected(f"{name}: {exc}") from exc

    def _write(self, name: str, data: bytes, docs: list[Document]) -> tuple[list[Document], BuildSummary]:
        """Stages `data` as corpus/`name`, indexes its documents, then publishes the file. Holds the lock."""
        return self._write_many([(name, data, docs)])

    def _write_many(self, files: list[tuple[str, bytes, list[Document]]]) -> tuple[list[Document], BuildSummary]:
        """Stages each (name, data, documents), indexes all their documents in one build, then
        publishes the files. Holds the lock."""
        corpus = self.config.corpus.resolve()
        targets = [(corpus / name).resolve() for name, _, _ in files]
        if any(target.parent != corpus for target in targets):
            raise WriteRejected("the file name must not contain a path")
        if len(set(targets)) != len(targets):
            raise WriteRejected("two files of one write have the same name", "conflict")
        owners = self._existing_paths([doc.id for _, _, docs in files for doc in docs])
        for target, (_, _, docs) in zip(targets, files):
            for doc in docs:
                existing = owners.get(doc.id)
                if existing is not None and existing.resolve() != target:
                    raise WriteRejected(f"document id {doc.id!r} already belongs to {existing.name}", "conflict")
        staged: list[Path] = []
        try:
            for name, data, _ in files:
                staged.append(self._stage(name, data))
            upserts = [doc for _, _, docs in files for doc in docs]
            kept = {d.id for d in upserts}
            previous = [d.id for target, (name, _, _) in zip(targets, files) if target.exists() for d in read_file(target, name)]
            gone = [i for i in previous if i not in kept]
            summary = build_index(self.config, self.embedder, upserts=upserts, deletes=gone, locked=True)
            for path, target in zip(staged, targets):
                os.replace(path, target)
        except BaseException:
            for path in staged:
                path.unlink(missing_ok=True)
            raise
        return upserts, summary

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
        return self._existing_paths([doc_id]).get(doc_id)

    def _existing_paths(self, doc_ids: list[str]) -> dict[str, Path]:
        """{document id: the corpus file it was indexed from} for those of `doc_ids` in the index."""
        try:
            index = open_index(self.config)
        except NoIndex:
            return {}
        try:
            rows = {doc_id: index.store.document(doc_id) for doc_id in doc_ids}
        finally:
            index.close()
        return {doc_id: self.config.corpus / row["path"] for doc_id, row in rows.items() if row and row.get("path")}

    def _file_for(self, doc_id: str) -> str | None:
        path = self._existing_path(doc_id)
        return path.name if path is not None and path.parent.resolve() == self.config.corpus.resolve() else None
