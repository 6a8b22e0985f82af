"""The SQLite store of one index version: documents, passages and sentences (BM25 is qa/index/lexical.py)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qa.index import duplicates
from qa.index.base import PassageRow, SentenceRow
from qa.models import Document, Filters, Passage

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    date TEXT,
    url TEXT,
    source TEXT,
    path TEXT,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS passages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS passages_document ON passages(document_id);
CREATE TABLE IF NOT EXISTS sentences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    passage_id INTEGER NOT NULL REFERENCES passages(id),
    ordinal INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sentences_passage ON sentences(passage_id);
CREATE TABLE IF NOT EXISTS duplicates (
    document_id TEXT PRIMARY KEY,
    signature BLOB NOT NULL,
    cluster TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS duplicates_cluster ON duplicates(cluster);
CREATE TABLE IF NOT EXISTS duplicate_bands (
    bucket INTEGER NOT NULL,
    document_id TEXT NOT NULL,
    PRIMARY KEY (bucket, document_id)
) WITHOUT ROWID;
"""


class Store:
    """One SQLite file. A read-only store gives each thread a connection of its own, so questions
    answered at once read in parallel (SQLite releases the GIL); a writable one has a single
    connection, used by one builder."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        self.db = self._connect()
        self.lock = threading.Lock()
        self._local = threading.local()
        self._connections = [self.db]
        # What this build changed, for `recluster`: documents added, clusters a removal touched.
        self._added: dict[str, list[int]] = {}  # id -> its band keys
        self._touched: set[str] = set()
        self._bandless = False
        if not readonly:
            self.db.execute("PRAGMA journal_mode = DELETE")
            self.db.executescript(SCHEMA)
            # A store written before band keys: `recluster` gives every document its keys, once.
            self._bandless = bool(
                self.db.execute("SELECT EXISTS (SELECT 1 FROM duplicates) AND NOT EXISTS (SELECT 1 FROM duplicate_bands)").fetchone()[0]
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._uri, uri=True, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA foreign_keys = OFF")
        return db

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if not self.readonly:
            with self.lock:
                yield self.db
            return
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
            with self.lock:
                self._connections.append(db)
        yield db

    def close(self) -> None:
        with self.lock:
            for db in self._connections:
                db.close()
            self._connections.clear()

    # Writing (one builder at a time, inside a transaction it controls).

    def begin(self) -> None:
        self.db.execute("BEGIN")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def document_hashes(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT id, hash FROM documents"))

    def delete_document(self, doc_id: str) -> tuple[list[int], list[int]]:
        """Removes a document; returns the passage and sentence ids that went with it."""
        pids = [r[0] for r in self.db.execute("SELECT id FROM passages WHERE document_id = ?", (doc_id,))]
        sids: list[int] = []
        for pid in pids:
            sids.extend(r[0] for r in self.db.execute("SELECT id FROM sentences WHERE passage_id = ?", (pid,)))
        self.db.execute("DELETE FROM sentences WHERE passage_id IN (SELECT id FROM passages WHERE document_id = ?)", (doc_id,))
        self.db.execute("DELETE FROM passages WHERE document_id = ?", (doc_id,))
        self.db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
        for signature, cluster in self.db.execute("SELECT signature, cluster FROM duplicates WHERE document_id = ?", (doc_id,)).fetchall():
            keys = duplicates.band_keys(duplicates.from_bytes(signature))
            self.db.executemany("DELETE FROM duplicate_bands WHERE bucket = ? AND document_id = ?", [(k, doc_id) for k in keys])
            self._touched.add(cluster)
        self.db.execute("DELETE FROM duplicates WHERE document_id = ?", (doc_id,))
        self._added.pop(doc_id, None)
        return pids, sids

    def add_document(self, doc: Document, passages: list[Passage]) -> tuple[list[int], list[int]]:
        """Stores a document and its passages; returns the new passage ids and sentence ids, in order."""
        self.db.execute(
            "INSERT INTO documents (id, title, text, date, url, source, path, hash) VALUES (?,?,?,?,?,?,?,?)",
            (doc.id, doc.title, doc.text, doc.date, doc.url, doc.source, doc.path, doc.hash),
        )
        self._sign(doc.id, duplicates.signature(doc.title, doc.text))
        pids, sids = [], []
        for p in passages:
            cur = self.db.execute(
                "INSERT INTO passages (document_id, ordinal, start, end, text) VALUES (?,?,?,?,?)",
                (doc.id, p.ordinal, p.start, p.end, p.text),
            )
            pid = int(cur.lastrowid)
            pids.append(pid)
            for k, s in enumerate(p.sentences):
                cur = self.db.execute("INSERT INTO sentences (passage_id, ordinal, start, end) VALUES (?,?,?,?)", (pid, k, s.start, s.end))
                sids.append(int(cur.lastrowid))
        return pids, sids

    def _sign(self, doc_id: str, signature: np.ndarray) -> None:
        """A document's MinHash signature and band keys stored; it is its own cluster until `recluster`."""
        self.db.execute(
            "INSERT INTO duplicates (document_id, signature, cluster) VALUES (?,?,?)", (doc_id, duplicates.to_bytes(signature), doc_id)
        )
        keys = self._added[doc_id] = duplicates.band_keys(signature)
        self.db.executemany("INSERT OR IGNORE INTO duplicate_bands VALUES (?,?)", [(k, doc_id) for k in keys])

    def recluster(self, threshold: float) -> tuple[int, int]:
        """The clusters of near-duplicates brought up to date after a build's adds and removes, and
        (copies, clusters of more than one document).

        Only the components a change can reach are made anew (`duplicates.cluster_ids` over them):
        those of the documents sharing a band with an added one, and those a removal touched. That
        set is closed (a copy of a document in it is in it), so its clusters are what clustering
        every document would give, at the cost of the change rather than of the archive. A store
        written before band keys (or before signatures) gets them here, and is clustered whole."""
        for doc_id, title, text in self.db.execute(
            "SELECT id, title, text FROM documents WHERE id NOT IN (SELECT document_id FROM duplicates)"
        ).fetchall():
            self._sign(doc_id, duplicates.signature(title, text))
        if self._bandless:
            self._bandless = False
            for doc_id, signature in self.db.execute("SELECT document_id, signature FROM duplicates").fetchall():
                keys = self._added[doc_id] = duplicates.band_keys(duplicates.from_bytes(signature))
                self.db.executemany("INSERT OR IGNORE INTO duplicate_bands VALUES (?,?)", [(k, doc_id) for k in keys])
        rows = self._reachable()
        clusters = duplicates.cluster_ids({doc_id: duplicates.from_bytes(sig) for doc_id, sig, _ in rows}, threshold)
        changed = [(clusters[doc_id], doc_id) for doc_id, _, cluster in rows if clusters[doc_id] != cluster]
        self.db.executemany("UPDATE duplicates SET cluster = ? WHERE document_id = ?", changed)
        self._added.clear()
        self._touched.clear()
        return self.cluster_counts()

    def _reachable(self) -> list[tuple[str, bytes, str]]:
        """(id, signature, cluster) of every document in a component a change can reach: the added
        documents, those sharing a band key with one, the rest of their clusters, and what is left
        of the clusters removals touched."""
        db = self.db
        db.execute("CREATE TEMP TABLE IF NOT EXISTS changed_ids (id TEXT PRIMARY KEY)")
        db.execute("CREATE TEMP TABLE IF NOT EXISTS changed_buckets (bucket INTEGER PRIMARY KEY)")
        db.execute("DELETE FROM changed_ids")
        db.execute("DELETE FROM changed_buckets")
        db.executemany("INSERT OR IGNORE INTO changed_ids VALUES (?)", [(i,) for i in self._added])
        db.executemany("INSERT OR IGNORE INTO changed_buckets VALUES (?)", [(k,) for keys in self._added.values() for k in keys])
        db.execute(
            "INSERT OR IGNORE INTO changed_ids SELECT document_id FROM duplicate_bands WHERE bucket IN (SELECT bucket FROM changed_buckets)"
        )
        db.executemany(
            "INSERT OR IGNORE INTO changed_ids SELECT document_id FROM duplicates WHERE cluster = ?", [(c,) for c in self._touched]
        )
        return db.execute(
            """SELECT document_id, signature, cluster FROM duplicates WHERE cluster IN
            (SELECT cluster FROM duplicates WHERE document_id IN (SELECT id FROM changed_ids))"""
        ).fetchall()

    # Reading.

    def clusters(self, document_ids: list[str]) -> dict[str, str]:
        """Document id -> the id of its cluster of near-duplicates (itself when it has no copy),
        for the ids that are indexed."""
        if not document_ids:
            return {}
        marks = ",".join("?" * len(document_ids))
        with self._reading() as db:
            try:
                return dict(db.execute(f"SELECT document_id, cluster FROM duplicates WHERE document_id IN ({marks})", document_ids))
            except sqlite3.OperationalError:  # a version written before clusters: every document is its own
                known = db.execute(f"SELECT id FROM documents WHERE id IN ({marks})", document_ids).fetchall()
                return {r[0]: r[0] for r in known}

    def cluster_members(self, cluster_id: str) -> list[str]:
        """The ids of the documents in a cluster, the head (`cluster_id`) first; [] for no such cluster."""
        with self._reading() as db:
            try:
                ids = [r[0] for r in db.execute("SELECT document_id FROM duplicates WHERE cluster = ? ORDER BY document_id", (cluster_id,))]
            except sqlite3.OperationalError:
                ids = [r[0] for r in db.execute("SELECT id FROM documents WHERE id = ?", (cluster_id,))]
        return ids

    def cluster_counts(self) -> tuple[int, int]:
        """(copies: documents that are not their cluster's head, clusters of more than one document)."""
        with self._reading() as db:
            try:
                return duplicates.cluster_counts(r[0] for r in db.execute("SELECT cluster FROM duplicates"))
            except sqlite3.OperationalError:
                return 0, 0

    def counts(self) -> dict[str, int]:
        with self._reading() as db:
            return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("documents", "passages", "sentences")}

    def passages(self, ids: list[int]) -> dict[int, PassageRow]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._reading() as db:
            rows = db.execute(
                f"""SELECT p.id, p.document_id, p.ordinal, p.start, p.end, p.text, d.title, d.date, d.url, d.source
                FROM passages p JOIN documents d ON d.id = p.document_id WHERE p.id IN ({marks})""",
                ids,
            ).fetchall()
        return {r[0]: PassageRow(*r) for r in rows}

    def sentences(self, passage_ids: list[int]) -> dict[int, list[SentenceRow]]:
        out: dict[int, list[SentenceRow]] = {pid: [] for pid in passage_ids}
        if not passage_ids:
            return out
        marks = ",".join("?" * len(passage_ids))
        with self._reading() as db:
            rows = db.execute(
                f"SELECT id, passage_id, start, end FROM sentences WHERE passage_id IN ({marks}) ORDER BY passage_id, ordinal",
                passage_ids,
            ).fetchall()
        for r in rows:
            out[r[1]].append(SentenceRow(*r))
        return out

    def document_passage_ids(self, doc_id: str) -> list[int]:
        with self._reading() as db:
            return [r[0] for r in db.execute("SELECT id FROM passages WHERE document_id = ? ORDER BY ordinal", (doc_id,))]

    def sentence_passages(self, sentence_ids: list[int]) -> dict[int, int]:
        if not sentence_ids:
            return {}
        marks = ",".join("?" * len(sentence_ids))
        with self._reading() as db:
            return dict(db.execute(f"SELECT id, passage_id FROM sentences WHERE id IN ({marks})", sentence_ids))

    def filtered_passage_ids(self, filters: Filters) -> list[int]:
        where, params = filter_sql(filters)
        with self._reading() as db:
            return [r[0] for r in db.execute(f"SELECT p.id FROM passages p JOIN documents d ON d.id = p.document_id WHERE {where}", params)]

    def filtered_sentence_ids(self, filters: Filters) -> list[int]:
        where, params = filter_sql(filters)
        with self._reading() as db:
            return [
                r[0]
                for r in db.execute(
                    f"""SELECT s.id FROM sentences s JOIN passages p ON p.id = s.passage_id
                JOIN documents d ON d.id = p.document_id WHERE {where}""",
                    params,
                )
            ]

    def document(self, doc_id: str) -> dict | None:
        with self._reading() as db:
            row = db.execute("SELECT id, title, text, date, url, source, path, hash FROM documents WHERE id = ?", (doc_id,)).fetchone()
            if row is None:
                return None
            n = db.execute("SELECT count(*) FROM passages WHERE document_id = ?", (doc_id,)).fetchone()[0]
        keys = ["id", "title", "text", "date", "url", "source", "path", "hash"]
        return {**dict(zip(keys, row)), "passages": n}

    def documents(self, offset: int, limit: int) -> list[dict]:
        with self._reading() as db:
            rows = db.execute(
                """SELECT d.id, d.title, d.date, d.url, d.source, d.path,
                (SELECT count(*) FROM passages p WHERE p.document_id = d.id)
                FROM documents d ORDER BY d.id LIMIT ? OFFSET ?""",
                (limit, offset),
            ).fetchall()
        keys = ["id", "title", "date", "url", "source", "path", "passages"]
        return [dict(zip(keys, r)) for r in rows]

    def sample_titles(self, limit: int) -> list[str]:
        with self._reading() as db:
            return [r[0] for r in db.execute("SELECT title FROM documents ORDER BY id LIMIT ?", (limit,))]


def filter_sql(filters: Filters | None) -> tuple[str, list]:
    if filters is None or filters.empty():
        return "", []
    clauses, params = [], []
    if filters.document_id:
        clauses.append("d.id = ?")
        params.append(filters.document_id)
    if filters.source:
        clauses.append("d.source = ?")
        params.append(filters.source)
    if filters.date_from:
        clauses.append("d.date >= ?")
        params.append(filters.date_from)
    if filters.date_to:
        clauses.append("d.date <= ?")
        params.append(filters.date_to)
    if filters.as_of:  # as a reader on that day: nothing dated later; an undated article stays in
        clauses.append("(d.date IS NULL OR d.date = '' OR d.date <= ?)")
        params.append(filters.as_of)
    return " AND ".join(clauses) or "1", params  # filters of empty strings restrict nothing
