"""The ingest ledger: what the feed poller and the folder watcher have seen, fetched and indexed.

A small SQLite file beside the index (`<QA_INDEX>/ingest.sqlite`, QA_INGEST_LEDGER), outside the
corpus folder. Every step of ingest is a state change recorded here in one transaction, *after* the
work it records is durable, so a process killed at any moment redoes at most the step it was in,
and each step is idempotent:

- feeds: one row per feed URL: its validators (ETag, Last-Modified) for conditional GETs, when it
  is next due, and its failures (consecutive, for the backoff, and in all, for the metrics);
- entries: one row per feed entry, keyed by its GUID (or canonical link when it has none):
  `seen` (in a feed, not fetched yet) -> `fetched` (the article extracted; the record is kept here,
  so it is never fetched again) -> `indexed` (published in the index and in corpus/). An entry whose
  text is the same as another entry's (content hash) is `duplicate`: it is not indexed again. A page
  that fails waits `next_try` (doubling backoff) and stays `seen`;
- files: the watched folder's files as last indexed (size, modification time, document ids), so a
  restarted watcher reads only what changed and knows what a removed file held;
- ingests: one row per ingest build that changed the index (for the status line and /metrics).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from qa.config import Config

LEDGER_NAME = "ingest.sqlite"
#: The states of an entry, in order; `duplicate` ends an entry whose text another entry has, `refused`
#: one the corpus writer turned away (its document id belongs to a file of another name).
ENTRY_STATES = ("seen", "fetched", "indexed", "duplicate", "refused")

SCHEMA = """
CREATE TABLE IF NOT EXISTS feeds (
    url TEXT PRIMARY KEY,
    etag TEXT,
    last_modified TEXT,
    next_poll REAL NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    errors_total INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_polled REAL
);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    feed TEXT NOT NULL,
    link TEXT,
    doc_id TEXT NOT NULL,
    version REAL,
    signature TEXT NOT NULL,
    state TEXT NOT NULL,
    content_hash TEXT,
    record TEXT,
    published REAL,
    seen_at REAL NOT NULL,
    fetched_at REAL,
    indexed_at REAL,
    failures INTEGER NOT NULL DEFAULT 0,
    errors_total INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS entries_state ON entries(state);
CREATE INDEX IF NOT EXISTS entries_hash ON entries(content_hash);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ids TEXT NOT NULL,
    indexed_at REAL NOT NULL,
    lag REAL
);
CREATE TABLE IF NOT EXISTS ingests (
    at REAL NOT NULL,
    source TEXT NOT NULL,
    added INTEGER NOT NULL,
    changed INTEGER NOT NULL,
    removed INTEGER NOT NULL,
    seconds REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ingests_at ON ingests(at);
"""


def ledger_path(config: Config) -> Path:
    return config.ingest_ledger or config.index / LEDGER_NAME


def ingest_status(config: Config) -> dict | None:
    """`Ledger.status` for the status endpoint and the web page; None when nothing was ever ingested."""
    path = ledger_path(config)
    return Ledger(path).status() if path.exists() else None


@dataclass(frozen=True)
class FeedRow:
    url: str
    etag: str | None
    last_modified: str | None
    next_poll: float
    failures: int


@dataclass(frozen=True)
class EntryRow:
    key: str
    feed: str
    link: str | None
    doc_id: str
    signature: str
    state: str
    content_hash: str | None
    record: dict | None
    published: float | None
    failures: int


@dataclass(frozen=True)
class FileRow:
    size: int
    mtime_ns: int
    ids: list[str]


class Ledger:
    """The ledger's tables, one short transaction per method. A connection per call: the watcher,
    the poller and the status routes use it from different threads and processes (WAL mode)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers (the status, /metrics) never wait for the poller
            db.executescript(SCHEMA)
        finally:
            db.close()

    @classmethod
    def of(cls, config: Config) -> Ledger:
        return cls(ledger_path(config))

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")  # a recorded step must survive a power cut as the work it records does
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # Feeds.

    def feed(self, url: str) -> FeedRow:
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO feeds (url) VALUES (?)", (url,))
            row = db.execute("SELECT url, etag, last_modified, next_poll, failures FROM feeds WHERE url = ?", (url,)).fetchone()
        return FeedRow(*row)

    def feed_polled(self, url: str, etag: str | None, last_modified: str | None, next_poll: float) -> None:
        """A poll that worked (200 or 304): its validators kept for the next conditional GET."""
        with self._db() as db:
            db.execute(
                "UPDATE feeds SET etag = ?, last_modified = ?, next_poll = ?, failures = 0, last_error = NULL, last_polled = ? "
                "WHERE url = ?",
                (etag, last_modified, next_poll, time.time(), url),
            )

    def feed_failed(self, url: str, error: str, next_poll: float) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE feeds SET failures = failures + 1, errors_total = errors_total + 1, last_error = ?, next_poll = ?, "
                "last_polled = ? WHERE url = ?",
                (error[:500], next_poll, time.time(), url),
            )

    # Entries.

    def see(
        self, key: str, feed: str, link: str | None, doc_id: str, version: float | None, signature: str, published: float | None
    ) -> str:
        """Records an entry found in a feed; returns what happened: new, updated, or known. An entry is
        updated (fetched again, its new text replacing the old article) when its feed gives it a later
        date (Atom's updated, RSS's pubDate) or, without dates, a new title or link. An older date
        is not an update: the same entry in two feeds must not bounce between them."""
        with self._db() as db:
            row = db.execute("SELECT version, signature FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO entries (key, feed, link, doc_id, version, signature, state, published, seen_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?)",
                    (key, feed, link, doc_id, version, signature, "seen", published, time.time()),
                )
                return "new"
            old_version, old_signature = row
            newer = version > old_version if version is not None and old_version is not None else signature != old_signature
            if not newer:
                return "known"
            db.execute(
                "UPDATE entries SET version = ?, signature = ?, link = ?, published = ?, state = 'seen', record = NULL, failures = 0, "
                "next_try = 0, seen_at = ?, fetched_at = NULL, indexed_at = NULL WHERE key = ? AND state != 'refused'",
                (version, signature, link, published, time.time(), key),
            )
            return "updated"

    def due_entries(self, now: float, limit: int) -> list[EntryRow]:
        """Entries to fetch (seen, and not waiting out a backoff), oldest first."""
        return self._entries("state = 'seen' AND next_try <= ? ORDER BY seen_at LIMIT ?", (now, limit))

    def fetched_entries(self) -> list[EntryRow]:
        """Entries fetched but not yet recorded as indexed: what a killed poller left to index."""
        return self._entries("state = 'fetched' ORDER BY fetched_at", ())

    def _entries(self, where: str, args: tuple) -> list[EntryRow]:
        with self._db() as db:
            rows = db.execute(
                "SELECT key, feed, link, doc_id, signature, state, content_hash, record, published, failures FROM entries WHERE " + where,
                args,
            ).fetchall()
        return [EntryRow(*r[:7], json.loads(r[7]) if r[7] else None, *r[8:]) for r in rows]

    def fetched(self, key: str, record: dict, content_hash: str) -> str:
        """The article extracted: kept with its hash, unless another entry already has that text
        (then this one is a `duplicate`). Returns the new state."""
        with self._db() as db:
            other = db.execute(
                "SELECT key FROM entries WHERE content_hash = ? AND key != ? AND state IN ('fetched', 'indexed') LIMIT 1",
                (content_hash, key),
            ).fetchone()
            state = "duplicate" if other else "fetched"
            db.execute(
                "UPDATE entries SET state = ?, content_hash = ?, record = ?, fetched_at = ?, failures = 0, last_error = NULL WHERE key = ?",
                (state, content_hash, None if other else json.dumps(record, ensure_ascii=False), time.time(), key),
            )
        return state

    def entry_failed(self, key: str, error: str, next_try: float) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE entries SET failures = failures + 1, errors_total = errors_total + 1, last_error = ?, next_try = ? WHERE key = ?",
                (error[:500], next_try, key),
            )

    def refused(self, key: str, error: str) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE entries SET state = 'refused', errors_total = errors_total + 1, last_error = ?, record = NULL WHERE key = ?",
                (error[:500], key),
            )

    def indexed(self, keys: list[str]) -> None:
        """Entries whose articles are published; their records are no longer needed."""
        now = time.time()
        with self._db() as db:
            db.executemany(
                "UPDATE entries SET state = 'indexed', indexed_at = ?, record = NULL WHERE key = ? AND state = 'fetched'",
                [(now, k) for k in keys],
            )

    def entry_states(self) -> dict[str, int]:
        with self._db() as db:
            return dict(db.execute("SELECT state, COUNT(*) FROM entries GROUP BY state").fetchall())

    # Watched files.

    def files(self) -> dict[str, FileRow]:
        with self._db() as db:
            rows = db.execute("SELECT path, size, mtime_ns, ids FROM files").fetchall()
        return {p: FileRow(size, mtime, json.loads(ids)) for p, size, mtime, ids in rows}

    def files_indexed(self, present: dict[str, FileRow], removed: list[str], lags: dict[str, float]) -> None:
        """The watched files as just indexed; `removed` are gone from the folder and the index.
        `lags`: seconds from a file's last change to its being answerable, for files that changed
        while the watcher ran (not those it found on starting)."""
        now = time.time()
        with self._db() as db:
            db.executemany(
                "INSERT OR REPLACE INTO files (path, size, mtime_ns, ids, indexed_at, lag) VALUES (?,?,?,?,?,?)",
                [(p, f.size, f.mtime_ns, json.dumps(f.ids), now, lags.get(p)) for p, f in present.items()],
            )
            db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in removed])

    # Builds.

    def ingested(self, source: str, added: int, changed: int, removed: int, seconds: float) -> None:
        if added or changed or removed:
            with self._db() as db:
                db.execute("INSERT INTO ingests VALUES (?,?,?,?,?,?)", (time.time(), source, added, changed, removed, seconds))

    # What /metrics and the status show.

    def status(self, now: float | None = None) -> dict:
        """The last ingest build, articles added in the last hour, feeds and how many are failing."""
        now = now or time.time()
        with self._db() as db:
            last = db.execute("SELECT MAX(at) FROM ingests").fetchone()[0]
            hour = db.execute("SELECT COALESCE(SUM(added), 0) FROM ingests WHERE at >= ?", (now - 3600,)).fetchone()[0]
            feeds, failing = db.execute("SELECT COUNT(*), COALESCE(SUM(failures > 0), 0) FROM feeds").fetchone()
            waiting = db.execute("SELECT COUNT(*) FROM entries WHERE state IN ('seen', 'fetched')").fetchone()[0]
        return {
            "last_ingest": datetime.fromtimestamp(last, UTC).isoformat(timespec="seconds") if last else None,
            "last_ingest_at": last,
            "added_last_hour": hour,
            "feeds": feeds,
            "failing_feeds": failing,
            "waiting_entries": waiting,
        }

    def feed_counts(self) -> list[tuple[str, int, int, int, int, int]]:
        """Per feed: (url, entries seen, fetched, indexed, duplicates, failures in all)."""
        with self._db() as db:
            return db.execute(
                "SELECT f.url, COUNT(e.key), COALESCE(SUM(e.fetched_at IS NOT NULL), 0), COALESCE(SUM(e.state = 'indexed'), 0), "
                "COALESCE(SUM(e.state = 'duplicate'), 0), f.errors_total + COALESCE(SUM(e.errors_total), 0) "
                "FROM feeds f LEFT JOIN entries e ON e.feed = f.url GROUP BY f.url ORDER BY f.url"
            ).fetchall()

    def lags(self) -> dict[str, list[float]]:
        """Seconds to being answerable: from an entry's publication, from its first sighting in a
        feed, and from a watched file's last change."""
        with self._db() as db:
            published = [r[0] for r in db.execute("SELECT indexed_at - published FROM entries WHERE indexed_at AND published")]
            seen = [r[0] for r in db.execute("SELECT indexed_at - seen_at FROM entries WHERE indexed_at")]
            files = [r[0] for r in db.execute("SELECT lag FROM files WHERE lag IS NOT NULL")]
        return {"published": published, "seen": seen, "file": files}
