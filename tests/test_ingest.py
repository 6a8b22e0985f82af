"""The corpus growing by itself (qa/ingest/): a watched folder and news feeds served from loopback.

Real components throughout: a real index on disk, the real model, the SQLite ledger, feeds and
pages from an HTTP server on 127.0.0.1, `qa serve --watch` and `qa feeds` as real processes, killed
with SIGKILL. Nothing reaches the internet.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from qa.config import Config
from qa.index import build_index, open_index
from qa.ingest import FeedPoller, Ledger, Watcher
from qa.ingest.feeds import canonical_url, entry_doc_id
from qa.pipeline import Pipeline
from qa.updates import PENDING
from tests.conftest import ROOT, ServeProcess, write_article
from tests.feedsite import FeedSite, Item
from tests.test_operations import metric

FACTS = {
    "mayor": ("Brindlecombe elects a mayor", "The mayor of Brindlecombe is Oriel Fenwick, who won the vote on Tuesday by a wide margin."),
    "bridge": (
        "Wend bridge to reopen",
        "The old stone bridge over the river Wend will reopen in March after repairs costing four million pounds.",
    ),
    "ferry": ("New ferry for Quenby", "The ferry to Quenby island will be named the Marrow Gull, the harbour board announced on Friday."),
    "choir": ("Choir wins national prize", "The Hollin Street choir won the national choral prize with a setting of an old sea shanty."),
}


def indexed(cfg: Config) -> dict[str, dict]:
    """{document id: its stored row} of the published index."""
    index = open_index(cfg)
    try:
        return {doc_id: index.store.document(doc_id) for doc_id in index.store.document_hashes()}
    finally:
        index.close()


def wait_for(what: str, check: Callable[[], object], timeout: float = 60, every: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def answer(pipeline: Pipeline, question: str) -> str:
    result = pipeline.ask(question)
    return result.answers[0].text if result.answers else ""


def publish(
    site: FeedSite, name: str, paragraph: str | None = None, canonical: str | None = None, delay: float = 0.0, title: str | None = None
) -> str:
    """An article page under /news/: one of FACTS, or `paragraph`."""
    title, text = (title, paragraph) if title else FACTS.get(name, (f"Report {name}", paragraph or ""))
    path = f"/news/2026/12/03/{name}.html"
    site.page(
        path,
        title,
        paragraph or text,
        "Reporters from the Loopback desk followed the story through the week.",
        canonical=canonical,
        delay=delay,
    )
    return path


def feed_config(config: Config, site: FeedSite, *paths: str, **more) -> Config:
    settings = {"feed_interval": 0.3, "feed_host_delay": 0.02, "feed_timeout": 5.0, "watch_stable_seconds": 0.5} | more
    return config.replace(feeds=",".join(site.url(p) for p in paths), **settings)


# Feeds, in process.


def test_feeds_index_new_entries_once_and_failing_feeds_are_retried(config, embedder) -> None:
    with FeedSite() as site:
        now = datetime.now(UTC)
        mayor, bridge, ferry = (publish(site, n) for n in ("mayor", "bridge", "ferry"))
        # The ferry story again under another URL and GUID, same text: the same article.
        again = publish(site, "ferry-copy", FACTS["ferry"][1], canonical=site.url("/amp/ferry.html"), title=FACTS["ferry"][0])
        site.set("/news/empty.html", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "text/html")  # not an article at all
        site.set("/news/huge.html", "<html><body><p>" + "words " * 40_000 + "</p></body></html>")
        rss = [Item("Mayor", mayor, "guid-mayor", now), Item("Bridge", bridge, None, now), Item("Empty", "/news/empty.html", "guid-empty")]
        site.rss("/rss.xml", rss + [Item("Huge", "/news/huge.html", "guid-huge")])
        # The mayor entry is in both feeds (published twice), the ferry story under two entries.
        site.atom(
            "/atom.xml", [Item("Mayor", mayor, "guid-mayor", now), Item("Ferry", ferry, "guid-ferry"), Item("Ferry", again, "guid-copy")]
        )
        site.set("/down.xml", "oops", status=500)
        site.set("/broken.xml", '<?xml version="1.0"?><rss version="2.0"><channel><item><title>Half', "application/rss+xml")
        cfg = feed_config(config, site, "/rss.xml", "/atom.xml", "/down.xml", "/broken.xml", feed_max_bytes=100_000)
        write_article(cfg.corpus, "seed.txt", "Harbour news", "The harbour of Quillport reopened after the winter storms.")
        build_index(cfg, embedder)
        poller = FeedPoller(cfg, embedder)

        first = poller.run_once()
        assert first.polled == 4 and len(first.feed_failures) == 2, first
        assert any("HTTP 500" in f for f in first.feed_failures) and any("malformed XML" in f for f in first.feed_failures)
        assert first.new == 6 and first.duplicates == 1 and first.indexed == 3, first.line()
        assert any("QA_FEED_MAX_BYTES" in f for f in first.page_failures) and any("binary content" in f for f in first.page_failures)
        docs = indexed(cfg)
        from_feeds = {i: d for i, d in docs.items() if i != "seed.txt"}
        assert len(from_feeds) == 3  # mayor once though in two feeds; the ferry copy not at all
        assert sorted(d["title"] for d in from_feeds.values()) == sorted(FACTS[n][0] for n in ("mayor", "bridge", "ferry"))
        assert all(d["url"].startswith(site.base) and d["date"] == now.date().isoformat() for d in from_feeds.values())
        assert sorted(p.name for p in cfg.corpus.glob("*.json")) == sorted(f"{i}.json" for i in from_feeds)
        pipeline = Pipeline(cfg, embedder)
        assert "Oriel Fenwick" in answer(pipeline, "Who is the mayor of Brindlecombe?")
        assert "Marrow Gull" in answer(pipeline, "What will the ferry to Quenby island be named?")

        # The failing feeds come back; the others are asked only whether they changed.
        site.set("/down.xml", site.routes["/rss.xml"].body.replace(b"Mayor", b"Mayor (down)"), "application/rss+xml")
        choir = publish(site, "choir")
        site.atom("/broken.xml", [Item("Choir", choir, "guid-choir")])
        site.page("/news/empty.html", "Choir practice", "The Hollin Street choir practises on Thursday evenings in the old hall.")
        site.set("/news/huge.html", "<html><body><p>Short now.</p></body></html>")
        time.sleep(0.7)  # past the first backoff (one poll interval)
        second = poller.run_once()
        assert second.feed_failures == [] and site.not_modified["/rss.xml"] == 1 and site.not_modified["/atom.xml"] == 1
        assert "Hollin Street choir" in answer(Pipeline(cfg, embedder), "Which choir won the national choral prize?")
        assert site.hits[mayor] == 1 and site.hits[bridge] == 1 and site.hits[ferry] == 1  # nothing fetched twice
        assert site.hits["/news/empty.html"] == 2  # the page that failed was retried

        # An update: same GUID, new text (the feed says so with a new date) replaces the article.
        site.page(
            mayor, FACTS["mayor"][0], "The mayor of Brindlecombe is Tamsin Greave, after a recount on Thursday overturned the result."
        )
        later = now + timedelta(hours=2)
        site.rss("/rss.xml", [Item("Mayor", mayor, "guid-mayor", later), Item("Bridge", bridge, None, now)])
        time.sleep(0.35)
        third = poller.run_once()
        assert third.updated == 1 and third.indexed == 1, third.line()
        after = indexed(cfg)
        assert set(docs) <= set(after) and len(after) == len(docs) + 3  # + the choir, practice and short pages; nothing doubled
        assert "Tamsin Greave" in answer(Pipeline(cfg, embedder), "Who is the mayor of Brindlecombe?")
        assert site.hits[mayor] == 2  # fetched again for its update, once
        assert Ledger.of(cfg).entry_states() == {"indexed": 6, "duplicate": 1}
        poller.stop()


# The watched folder, in process.


def slow_write(path: Path, text: str, pieces: int, pause: float) -> None:
    """A writer that writes a file a piece at a time, pausing (less than the stability window) between."""
    step = len(text) // pieces + 1
    with open(path, "w", encoding="utf-8") as fh:
        for k in range(0, len(text), step):
            fh.write(text[k : k + step])
            fh.flush()
            time.sleep(pause)


def test_watched_folder_batches_bursts_and_never_reads_half_written_files(config, embedder, tmp_path) -> None:
    cfg = config.replace(watch_stable_seconds=0.6)
    write_article(cfg.corpus, "seed.txt", "Harbour news", "The harbour of Quillport reopened after the winter storms.")
    build_index(cfg, embedder)
    watcher = Watcher(cfg, embedder).start()
    try:
        assert watcher.ready.wait(30)
        # A slow writer: ten pieces, 0.25 s apart (each pause shorter than the 0.6 s window).
        paragraphs = [
            f"Part {k}: the lighthouse at Skerrow Point was repainted in red and white bands by {k + 3} volunteers." for k in range(9)
        ]
        body = "Skerrow lighthouse repainted\n\n" + "\n\n".join(paragraphs) + "\n\nThe keeper of the lighthouse is Ansel Varrow.\n"
        writer = threading.Thread(target=slow_write, args=(cfg.corpus / "slow.txt", body, 10, 0.25))
        writer.start()
        # A burst of 120 files at once, and one written elsewhere and renamed in.
        for i in range(120):
            write_article(
                cfg.corpus, f"burst-{i:03d}.txt", f"Kite count {i}", f"The village of Harlow counted {i + 7} red kites in week {i}."
            )
        elsewhere = write_article(tmp_path, "renamed.txt", "Renamed in", "The renamed article says the Corran ferry sails at dawn.")
        elsewhere.rename(cfg.corpus / "renamed.txt")
        writer.join()
        wait_for("the slow file and the burst", lambda: {"slow.txt", "renamed.txt", "burst-119.txt"} <= set(indexed(cfg)), 90)
        read_counts = {rel: watcher.reads[rel] for rel in ("slow.txt", "renamed.txt", "burst-000.txt", "burst-119.txt")}
        assert read_counts == dict.fromkeys(read_counts, 1), read_counts  # each file read once, never half-written
        assert indexed(cfg)["slow.txt"]["text"].rstrip().endswith("The keeper of the lighthouse is Ansel Varrow.")
        burst_builds = [b for b in watcher.batches if any(p.startswith("burst-") for p in b)]
        assert 1 <= len(burst_builds) <= 3, [len(r) for r in burst_builds]  # a burst is a few builds, not 120
        assert "Ansel Varrow" in answer(Pipeline(cfg, embedder), "Who is the keeper of the Skerrow lighthouse?")

        # A removed file leaves the index; a file that is not an article is reported and waits.
        (cfg.corpus / "burst-005.txt").unlink()
        (cfg.corpus / "bad.json").write_text('{"title": "no text field"}')
        wait_for("the removal", lambda: "burst-005.txt" not in indexed(cfg), 30)
        wait_for("the bad file's report", lambda: "bad.json" in watcher.skipped, 10)
        assert "missing 'text'" in watcher.skipped["bad.json"]
    finally:
        watcher.stop()

    # Restarted: reads only what changed while it was away, and removes what went.
    write_article(cfg.corpus, "while-away.txt", "While away", "The Corran ferry timetable changed while the watcher was stopped.")
    (cfg.corpus / "burst-006.txt").unlink()
    again = Watcher(cfg, embedder).start()
    try:
        wait_for("the changes made while away", lambda: "while-away.txt" in indexed(cfg) and "burst-006.txt" not in indexed(cfg), 30)
        assert sorted(again.reads) == ["while-away.txt"]  # not the 120 others
        assert "bad.json" in again.skipped  # still unreadable, still reported
    finally:
        again.stop()


# Real processes: `qa serve --watch` with the poller, and `qa feeds --once` killed mid-batch.


def test_serve_watch_answers_dropped_articles_and_feed_entries(sample_config, embedder, tmp_path) -> None:
    build_index(sample_config, embedder)
    corpus = sample_config.corpus
    with FeedSite() as site:
        site.rss("/rss.xml", [])
        env = {"QA_FEEDS": site.url("/rss.xml"), "QA_FEED_INTERVAL": "1", "QA_FEED_HOST_DELAY": "0.05", "QA_WATCH_STABLE_SECONDS": "0.5"}
        server = ServeProcess(sample_config, tmp_path / "serve.log", args=("--watch",), env=env)
        try:
            server.wait_ready()
            with httpx.Client(base_url=server.url, timeout=30) as client:
                wait_for("readiness", lambda: client.get("/readyz").status_code == 200, 60)

                def answered(question: str, expected: str) -> bool:
                    found = client.get("/api/ask", params={"q": question}).json()["answers"]
                    return bool(found) and expected in found[0]["text"]

                # An article written slowly into the folder, and a feed entry published twice.
                text = "Wend bridge to reopen\n\n" + FACTS["bridge"][1] + "\n\nThe council said traffic will be light at first.\n"
                slow_write(corpus / "bridge.txt", text, 4, 0.2)
                mayor = publish(site, "mayor")
                site.rss("/rss.xml", [Item("Mayor", mayor, "guid-mayor"), Item("Mayor (again)", mayor, "guid-mayor")])
                wait_for(
                    "the dropped article's answer", lambda: answered("When will the bridge over the river Wend reopen?", "March"), 60, 0.3
                )
                wait_for("the feed entry's answer", lambda: answered("Who is the mayor of Brindlecombe?", "Oriel Fenwick"), 60, 0.3)

                assert client.get("/api/documents", params={"limit": 50}).json()["total"] == 3  # sample + bridge + mayor, once
                text = client.get("/metrics").text
                feed = site.url("/rss.xml")
                assert metric(text, "qa_ingest_entries_total", feed=feed, state="seen") == 1
                assert metric(text, "qa_ingest_entries_total", feed=feed, state="indexed") == 1
                assert metric(text, "qa_ingest_lag_seconds_count", since="file") >= 1  # the poller's file may count too
                assert metric(text, "qa_ingest_lag_seconds_count", since="seen") == 1
                assert 0 < metric(text, "qa_ingest_lag_seconds_sum", since="seen") < 60
                ingest = client.get("/api/index/status").json()["ingest"]
                assert ingest["added_last_hour"] == 2 and ingest["last_ingest"] and ingest["feeds"] == 1
                assert "2 articles added in the last hour" in client.get("/").text
        finally:
            server.stop()


def test_poller_killed_at_random_moments_loses_and_doubles_nothing(config, embedder) -> None:
    write_article(config.corpus, "seed.txt", "Harbour news", "The harbour of Quillport reopened after the winter storms.")
    build_index(config, embedder)
    with FeedSite() as site:
        items = []
        for k in range(12):
            path = publish(site, f"kites-{k}", f"The survey at Harlow station {k} counted {k * 11 + 5} red kites over the moor.", delay=0.1)
            items.append(Item(f"Kites {k}", path, f"kites-{k}" if k % 2 else None))  # half without a GUID: keyed by link
        site.rss("/rss.xml", items)
        command = [sys.executable, "-m", "qa.cli", "feeds", "--once", "--feed", site.url("/rss.xml")]
        command += ["--corpus", str(config.corpus), "--index", str(config.index)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")} | {"QA_FEED_HOST_DELAY": "0.05", "QA_FEED_INTERVAL": "1"}
        rng = random.Random(45)
        kills = 0
        for _ in range(3):
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.5, 5.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        final = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stderr
        expected = {entry_doc_id(i.guid or canonical_url(site.url(i.path)), site.url(i.path)) for i in items}
        docs = indexed(config)
        assert set(docs) == expected | {"seed.txt"}  # none lost; ids are unique, so none doubled
        assert sorted(p.stem for p in config.corpus.glob("*.json")) == sorted(expected)
        assert not list((config.corpus / PENDING).glob("*")) if (config.corpus / PENDING).exists() else True
        assert Ledger.of(config).entry_states() == {"indexed": 12}
        refetched = sum(max(0, site.hits[i.path] - 1) for i in items)
        assert refetched <= kills  # only a page in flight when killed is fetched again
        assert kills >= 2, "the kills must land while the poller runs"
