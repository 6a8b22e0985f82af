"""The corpus growing by itself: a watched folder and followed news feeds, indexed as they arrive.

- `ledger`: the SQLite record of feed entries and watched files (nothing lost, nothing doubled);
- `watch`: the folder watcher (`qa watch`, `qa serve --watch`);
- `feeds`: the feed poller (`qa feeds`, and `qa watch` / `qa serve --watch` when QA_FEEDS is set);
- `metrics`: what /metrics shows of them, read from the ledger.
docs/ingestion.md has the design and the measured figures.
"""

from __future__ import annotations

from qa.config import Config
from qa.embedding import Embedder
from qa.ingest.feeds import FeedPoller, PassReport, feed_urls
from qa.ingest.ledger import ENTRY_STATES, Ledger, ingest_status, ledger_path
from qa.ingest.watch import Watcher


class Ingest:
    """The watcher, and the poller when feeds are configured, each in a background thread."""

    def __init__(self, config: Config, embedder: Embedder) -> None:
        self.watcher = Watcher(config, embedder)
        self.poller = FeedPoller(config, embedder, self.watcher.ledger) if feed_urls(config) else None

    def start(self) -> Ingest:
        self.watcher.start()
        if self.poller is not None:
            self.poller.start()
        return self

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.stop()
        self.watcher.stop()


__all__ = ["ENTRY_STATES", "FeedPoller", "Ingest", "Ledger", "PassReport", "Watcher", "feed_urls", "ingest_status", "ledger_path"]
