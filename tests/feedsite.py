"""A news site on loopback for the ingest tests and bench/ingest.py: RSS and Atom feeds and article
pages served by `http.server` on 127.0.0.1 (a free port) in a thread, changed while it runs as a
newsroom would. It answers conditional GETs (ETag, 304) and counts every request by path."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Item:
    """A feed entry: `guid` None leaves the entry without one (its link is its key)."""

    title: str
    path: str
    guid: str | None = None
    published: datetime = field(default_factory=lambda: datetime.now(UTC))
    summary: str = ""


@dataclass
class Route:
    status: int
    content_type: str
    body: bytes
    delay: float = 0.0


class FeedSite:
    """Serves `routes` by path until `close()`; `hits` counts GETs, `not_modified` the 304s."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.not_modified: Counter[str] = Counter()
        self.lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                with site.lock:
                    site.hits[self.path] += 1
                    route = site.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                if route.delay:
                    time.sleep(route.delay)
                etag = '"' + hashlib.sha1(route.body).hexdigest() + '"'
                if route.status == 200 and self.headers.get("If-None-Match") == etag:
                    with site.lock:
                        site.not_modified[self.path] += 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(route.body)))
                if route.status == 200:
                    self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, *args) -> None:  # quiet: the tests read `hits`
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="feed-site", daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def set(
        self, path: str, body: bytes | str, content_type: str = "text/html; charset=utf-8", status: int = 200, delay: float = 0.0
    ) -> None:
        with self.lock:
            self.routes[path] = Route(status, content_type, body.encode() if isinstance(body, str) else body, delay)

    def page(self, path: str, title: str, *paragraphs: str, canonical: str | None = None, delay: float = 0.0) -> None:
        """An article page with the clutter a real one has around it."""
        body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
        link = f'<link rel="canonical" href="{escape(canonical or self.url(path))}">'
        self.set(
            path,
            f"<html><head><title>{escape(title)} - Loopback News</title>{link}</head><body><nav>Home | World | Sport</nav>"
            f"<article><h1>{escape(title)}</h1>{body}</article><footer>Copyright Loopback News</footer></body></html>",
            delay=delay,
        )

    def rss(self, path: str, items: list[Item], title: str = "Loopback News") -> None:
        entries = "".join(
            f"<item><title>{escape(i.title)}</title><link>{escape(self.url(i.path))}</link>"
            + (f'<guid isPermaLink="false">{escape(i.guid)}</guid>' if i.guid else "")
            + f"<pubDate>{format_datetime(i.published)}</pubDate><description>{escape(i.summary)}</description></item>"
            for i in items
        )
        self.set(
            path,
            f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>{escape(title)}</title>'
            f"<link>{self.base}/</link><description>Test feed</description>{entries}</channel></rss>",
            "application/rss+xml",
        )

    def atom(self, path: str, items: list[Item], title: str = "Loopback Wire") -> None:
        entries = "".join(
            f'<entry><title>{escape(i.title)}</title><link href="{escape(self.url(i.path))}"/>'
            f"<id>{escape(i.guid or self.url(i.path))}</id><updated>{i.published.isoformat()}</updated>"
            f"<summary>{escape(i.summary)}</summary></entry>"
            for i in items
        )
        self.set(
            path,
            f'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"><title>{escape(title)}</title>'
            f"<id>{self.base}/wire</id><updated>{datetime.now(UTC).isoformat()}</updated>{entries}</feed>",
            "application/atom+xml",
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FeedSite:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
