"""The feed poller: RSS and Atom feeds followed politely, their new articles fetched and indexed.

One pass (`FeedPoller.run_once`):
1. indexes what a killed pass left fetched but not indexed;
2. polls each feed that is due with a conditional GET (ETag / Last-Modified), parses it with
   `feedparser`, and records each entry in the ledger under its GUID, or its canonical link when
   it has none. An entry whose feed data changed (title, link, dates, summary) is fetched again:
   the new text replaces the old article under the same document id;
3. fetches each new entry's page (only the link the feed gives), extracts title, date, main text
   and canonical URL with trafilatura (`qa.corpus.parse_bytes`), and records the article with the
   hash of its text: an article that reappears under another URL with the same text is a duplicate;
4. writes the fetched articles into corpus/ and the index in batches, through `CorpusWriter.add_files`
   (staged, indexed, published: the same step as an API upload), then records them as indexed.

Politeness: at most one request per host per QA_FEED_HOST_DELAY seconds, a timeout, a size limit,
and a backoff that doubles per failure (QA_FEED_MAX_BACKOFF) for a feed or a page that fails. A
failing feed or page is reported and retried later; it never stops the others.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import re
import threading
import time
import xml.sax
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import feedparser
import httpx
from filelock import FileLock, Timeout

from qa import __version__
from qa.config import Config
from qa.corpus import CorpusError, clean_url, parse_bytes
from qa.embedding import Embedder
from qa.ingest.ledger import EntryRow, Ledger, ledger_path
from qa.updates import CorpusWriter, WriteRejected

log = logging.getLogger(__name__)
USER_AGENT = f"qa-feeds/{__version__} (news QA; follows only the links its feeds give)"
#: Articles fetched before they are indexed together (a burst is a few builds, and a new article waits for few others).
INDEX_BATCH = 25
#: Query parameters that only track a reader: the same article with or without them.
TRACKING = re.compile(r"^(utm_\w+|fbclid|gclid|mc_cid|mc_eid|ref|cmpid)$", re.IGNORECASE)


@dataclass(frozen=True)
class Fetched:
    status: int
    headers: httpx.Headers
    content: bytes
    url: str


class FetchFailed(Exception):
    """A feed or a page that could not be fetched or read; retried after a backoff."""


def feed_urls(config: Config) -> list[str]:
    """QA_FEEDS: comma-separated URLs, or a file with one URL a line (# starts a comment)."""
    value = config.feeds.strip()
    if not value:
        return []
    if "://" not in value and Path(value).is_file():
        lines = (line.split("#", 1)[0].strip() for line in Path(value).read_text().splitlines())
        return [u for u in lines if u]
    return [u.strip() for u in value.split(",") if u.strip()]


def canonical_url(url: str) -> str:
    """The link without its fragment and tracking parameters, with the scheme and host in lower case."""
    parts = urlsplit(url.strip())
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not TRACKING.match(k)])
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", query, ""))


def entry_doc_id(key: str, link: str | None) -> str:
    """A stable document id from the entry's key: the site's host, then a hash of the key."""
    host = urlsplit(link or key).hostname or "feed"
    slug = re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-")[:40] or "feed"
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def text_hash(text: str) -> str:
    """The hash of an article's words: the same text under another URL or title is the same article."""
    return hashlib.sha256(" ".join(text.split()).lower().encode()).hexdigest()


def _timestamp(entry: dict, name: str) -> float | None:
    """`published_parsed` or `updated_parsed` as seconds; `in` first, as feedparser maps a missing one to the other."""
    parsed = entry.get(name) if name in entry else None
    return float(calendar.timegm(parsed)) if parsed else None


@dataclass
class PassReport:
    """What one pass did (printed by `qa feeds`)."""

    polled: int = 0
    feed_failures: list[str] = field(default_factory=list)
    new: int = 0
    updated: int = 0
    fetched: int = 0
    duplicates: int = 0
    page_failures: list[str] = field(default_factory=list)
    indexed: int = 0

    def line(self) -> str:
        return (
            f"feeds: {self.polled} polled ({len(self.feed_failures)} failed), {self.new} new and {self.updated} updated entries; "
            f"{self.fetched} articles fetched ({len(self.page_failures)} failed, {self.duplicates} duplicates), {self.indexed} indexed"
        )


class FeedPoller:
    """Follows the configured feeds into the corpus and the index (see the module's docstring).

    `embedder` may be a function that loads one: a pass that has nothing to index never loads the
    model (a cron pass with nothing new is quick). One poller per ledger at a time (a file lock)."""

    def __init__(self, config: Config, embedder: Embedder | Callable[[], Embedder], ledger: Ledger | None = None) -> None:
        self.config = config
        self._embedder = embedder
        self._writer: CorpusWriter | None = None
        self.ledger = ledger or Ledger.of(config)
        self.feeds = feed_urls(config)
        self.stop_event = threading.Event()
        self.client = httpx.Client(timeout=config.feed_timeout, follow_redirects=True, max_redirects=5, headers={"User-Agent": USER_AGENT})
        self.last_request: dict[str, float] = {}
        self.lock = FileLock(str(ledger_path(config)) + ".poll.lock")
        self._thread: threading.Thread | None = None

    @property
    def writer(self) -> CorpusWriter:
        if self._writer is None:
            embedder = self._embedder if isinstance(self._embedder, Embedder) else self._embedder()
            self._writer = CorpusWriter(self.config, embedder)
        return self._writer

    # Running.

    def run_once(self, wait: float = 0.0) -> PassReport:
        """One pass over the due feeds and entries. Raises filelock's Timeout when another poller holds the ledger."""
        report = PassReport()
        with self.lock.acquire(timeout=wait):
            self._index_fetched(report)  # what a killed pass left
            for url in self.feeds:
                if self.stop_event.is_set():
                    break
                if self.ledger.feed(url).next_poll <= time.time():
                    self._poll(url, report)
            self._fetch_due(report)
        return report

    def run(self) -> None:
        """Passes until `stop()`, sleeping until the next feed or entry is due."""
        while not self.stop_event.is_set():
            try:
                report = self.run_once(wait=self.config.feed_interval)
                if report.new or report.fetched or report.feed_failures or report.page_failures:
                    log.info("%s", report.line())
            except Timeout:
                log.info("feeds: another poller holds %s; waiting", self.lock.lock_file)
            except Exception:  # a pass that fails whole (a full disk) is logged and tried again
                log.exception("feeds: the pass failed")
            self.stop_event.wait(self._sleep())

    def _sleep(self) -> float:
        """Seconds until the next feed poll or entry retry (at most one interval, at least a tick)."""
        due = [self.ledger.feed(url).next_poll for url in self.feeds] + [e.next_try for e in self.ledger.due_entries(float("inf"), 1)]
        return min(max(0.2, min(due, default=time.time() + self.config.feed_interval) - time.time()), self.config.feed_interval)

    def start(self) -> FeedPoller:
        self._thread = threading.Thread(target=self.run, name="qa-feeds", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.client.close()

    # HTTP.

    def _get(self, url: str, headers: dict[str, str] | None = None) -> Fetched:
        """A GET that waits its turn for the host, stops at QA_FEED_MAX_BYTES, and raises FetchFailed."""
        host = urlsplit(url).netloc.lower()
        wait = self.last_request.get(host, 0.0) + self.config.feed_host_delay - time.monotonic()
        if wait > 0:
            self.stop_event.wait(wait)
        limit = self.config.feed_max_bytes
        try:
            with self.client.stream("GET", url, headers=headers or {}) as response:
                if response.status_code >= 400:
                    raise FetchFailed(f"{url}: HTTP {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise FetchFailed(f"{url}: {declared} bytes is more than QA_FEED_MAX_BYTES={limit}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise FetchFailed(f"{url}: more than QA_FEED_MAX_BYTES={limit} bytes")
                return Fetched(response.status_code, response.headers, bytes(body), str(response.url))
        except httpx.HTTPError as exc:
            raise FetchFailed(f"{url}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.last_request[host] = time.monotonic()  # the delay counts from the end of a request

    def _backoff(self, failures: int) -> float:
        """Seconds before a retry: doubling per failure from the poll interval (at most 30 s at first)."""
        return min(self.config.feed_max_backoff, min(30.0, self.config.feed_interval) * 2 ** max(0, failures - 1))

    # Feeds.

    def _poll(self, url: str, report: PassReport) -> None:
        feed = self.ledger.feed(url)
        headers = {k: v for k, v in (("If-None-Match", feed.etag), ("If-Modified-Since", feed.last_modified)) if v}
        report.polled += 1
        try:
            response = self._get(url, headers)
            if response.status == 304:
                self.ledger.feed_polled(url, feed.etag, feed.last_modified, time.time() + self.config.feed_interval)
                return
            parsed = feedparser.parse(response.content, response_headers={k.lower(): v for k, v in response.headers.items()})
            if parsed.get("bozo") and isinstance(parsed.get("bozo_exception"), xml.sax.SAXException):
                # A truncated or broken download reads loosely as a shorter feed: nothing from it is trusted.
                raise FetchFailed(f"{url}: malformed XML ({parsed['bozo_exception']})")
            if not parsed.get("version"):
                raise FetchFailed(f"{url}: not an RSS or Atom feed")
        except FetchFailed as exc:
            log.warning("feeds: %s (retried later)", exc)
            report.feed_failures.append(str(exc))
            self.ledger.feed_failed(url, str(exc), time.time() + self._backoff(feed.failures + 1))
            return
        for entry in parsed.entries:
            self._see(url, entry, report)
        # Validators are kept only once every entry is recorded: a pass killed before polls the feed whole again.
        self.ledger.feed_polled(
            url, response.headers.get("etag"), response.headers.get("last-modified"), time.time() + self.config.feed_interval
        )

    def _see(self, feed: str, entry: dict, report: PassReport) -> None:
        link = clean_url(entry.get("link"))
        if link is None:
            return  # nothing to fetch: an entry must link to its article
        key = (entry.get("id") or "").strip() or canonical_url(link)
        published = _timestamp(entry, "published_parsed")
        version = _timestamp(entry, "updated_parsed") or published
        # Without dates, a new title or link is what tells an update (feeds differ in their summaries).
        signature = hashlib.sha256(json.dumps([entry.get("title"), canonical_url(link)], ensure_ascii=False).encode()).hexdigest()
        seen = self.ledger.see(key, feed, link, entry_doc_id(key, link), version, signature, published or version)
        report.new += seen == "new"
        report.updated += seen == "updated"

    # Articles.

    def _fetch_due(self, report: PassReport) -> None:
        """Fetches every entry that is due, indexing every INDEX_BATCH of them."""
        tried: set[str] = set()  # a page that fails waits for a later pass, even when its backoff is short
        while not self.stop_event.is_set():
            due = [e for e in self.ledger.due_entries(time.time(), INDEX_BATCH + len(tried)) if e.key not in tried][:INDEX_BATCH]
            if not due:
                break
            for entry in due:
                tried.add(entry.key)
                if self.stop_event.is_set():
                    break
                self._fetch(entry, report)
            self._index_fetched(report)

    def _fetch(self, entry: EntryRow, report: PassReport) -> None:
        try:
            response = self._get(entry.link or entry.key)
            try:
                doc = parse_bytes(response.content, "article.html")[0]
            except CorpusError as exc:
                raise FetchFailed(f"{entry.link}: {exc}") from exc
        except FetchFailed as exc:
            log.warning("feeds: %s (retried later)", exc)
            report.page_failures.append(str(exc))
            self.ledger.entry_failed(entry.key, str(exc), time.time() + self._backoff(entry.failures + 1))
            return
        published = time.strftime("%Y-%m-%d", time.gmtime(entry.published)) if entry.published else None
        record = {
            "id": entry.doc_id,
            "title": doc.title,
            "text": doc.text,
            "date": published or doc.date,
            "url": doc.url or clean_url(response.url) or entry.link,
            "source": doc.source,
            "feed": entry.feed,
            "guid": entry.key,
        }
        state = self.ledger.fetched(entry.key, {k: v for k, v in record.items() if v}, text_hash(doc.text))
        report.fetched += 1
        report.duplicates += state == "duplicate"

    def _index_fetched(self, report: PassReport) -> None:
        """Every fetched article into corpus/ and the index in one write, then recorded as indexed.
        Idempotent: an article already published is unchanged, and is only recorded."""
        rows = [row for row in self.ledger.fetched_entries() if row.record]
        if not rows:
            return
        try:
            self._publish(rows, report)
        except WriteRejected as exc:
            if exc.kind == "busy" or len(rows) == 1:
                log.warning("feeds: indexing %d articles failed: %s (retried by the next pass)", len(rows), exc)
                if exc.kind != "busy":
                    self.ledger.refused(rows[0].key, str(exc))
                return
            for row in rows:  # one refused article must not hold back the others
                try:
                    self._publish([row], report)
                except WriteRejected as one:
                    log.warning("feeds: %s: %s", row.link, one)
                    self.ledger.refused(row.key, str(one))

    def _publish(self, rows: list[EntryRow], report: PassReport) -> None:
        files = [(f"{row.doc_id}.json", json.dumps(row.record, ensure_ascii=False, indent=1).encode()) for row in rows]
        _, summary = self.writer.add_files(files)
        self.ledger.indexed([row.key for row in rows])
        self.ledger.ingested("feeds", summary.added, summary.changed, summary.removed, summary.seconds)
        report.indexed += len(rows)
