"""Ingest figures (docs/ingestion.md): how soon a dropped article is answerable, a burst of files
against `qa index`, and the feed poller killed at random moments.

    python -m bench.ingest latency [--articles PATH.jsonl --limit N [--base-index DIR]]   # p50/p95 from complete file to answerable
    python -m bench.ingest feed-latency [--interval 10 --entries 20 ...]   # feed entry published -> answerable
    python -m bench.ingest burst --files 1000                           # watcher vs `qa index` on the same files
    python -m bench.ingest kills --kills 100                            # `qa feeds --once` SIGKILLed at random moments

Everything runs in a temporary folder, against a loopback feed site (tests/feedsite.py); nothing
reaches the internet. The model is the default one, loaded once.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qa.config import Config
from qa.embedding import Embedder
from qa.index import build_index
from qa.ingest import Ledger, Watcher
from qa.ingest.feeds import FeedPoller, canonical_url, entry_doc_id
from qa.pipeline import Pipeline
from tests.conftest import ROOT, SAMPLE, write_article
from tests.feedsite import FeedSite, Item
from tests.test_ingest import indexed, publish

PLACES = ("Brindlecombe", "Quenby", "Harlow", "Skerrow", "Corran", "Wendmouth", "Ashby Vane", "Tollgate", "Marrowby", "Fenwick Cross")


def fact(k: int) -> tuple[str, str, str, str]:
    """(title, text, question, answer) of the k-th invented article."""
    place = f"{PLACES[k % len(PLACES)]} {k}"
    name = f"Ardent Vale{k:03d}"
    text = (
        f"The new harbour master of {place} is {name}, the port authority said on Monday.\n\n"
        f"{name} takes over the harbour of {place} after thirty years at sea, and plans to dredge the channel this spring."
    )
    return f"Harbour master named in {place}", text, f"Who is the harbour master of {place}?", name


def wait_known(watcher: Watcher, rels: set[str], timeout: float = 600) -> float:
    """Waits until the watcher has published every file of `rels`; returns when (time.time)."""
    deadline = time.time() + timeout
    while not rels <= set(watcher.known):
        if time.time() > deadline:
            raise TimeoutError(f"{len(rels - set(watcher.known))} files not indexed after {timeout:.0f}s")
        time.sleep(0.01)
    return time.time()


def base_index(args: argparse.Namespace, root: Path) -> tuple[Config, Embedder, int]:
    """A corpus folder and its index under `root`: the sample article, or `--articles` (indexed, or
    found indexed in a copy of `--base-index`). Returns the configuration, the model, the documents."""
    corpus = root / "corpus"
    corpus.mkdir()
    if args.articles:
        with open(args.articles) as fh, open(corpus / "base.jsonl", "w") as out:
            for n, line in enumerate(fh):
                if n >= args.limit:
                    break
                record = json.loads(line)
                if "context" in record:  # a paragraphs file (training/news_eval.py's corpus): its text is `context`
                    record["text"] = record.pop("context")
                out.write(json.dumps(record) + "\n")
    else:
        (corpus / SAMPLE.name).write_text(SAMPLE.read_text())
    if args.base_index:  # an index of those articles built before (e.g. by training/news_eval.py): found unchanged
        shutil.copytree(args.base_index, root / "index")
    cfg = Config.load(corpus=corpus, index=root / "index")
    embedder = Embedder.from_config(cfg)
    started = time.perf_counter()
    summary = build_index(cfg, embedder)
    print(
        f"base index: {summary.documents} documents, {summary.passages} passages, built in {time.perf_counter() - started:.0f}s", flush=True
    )
    return cfg, embedder, summary.documents


def figures(what: str, seconds: list[float], tail: str = "") -> None:
    cut = statistics.quantiles(seconds, n=20, method="inclusive")
    print(f"{what}: p50 {statistics.median(seconds):.2f}s, p95 {cut[18]:.2f}s, max {max(seconds):.2f}s{tail}", flush=True)


def hit(question: str, name: str, document_id: str, answers: list) -> tuple[bool, bool]:
    """(the first answer comes from the new article, it is the whole name); a partial answer is printed."""
    first = answers[0] if answers else None
    found = first is not None and document_id in {first.document_id, *(s.document_id for s in first.sources)}
    whole = found and name in first.text
    if not whole:
        print(f"  {question} -> {[(a.text, a.score, a.document_id) for a in answers[:3]]}", flush=True)
    return found, whole


def latency(args: argparse.Namespace) -> None:
    """Articles dropped one at a time (half written in place, half renamed in) while the watcher runs."""
    root = Path(tempfile.mkdtemp(prefix="qa-ingest-latency-"))
    cfg, embedder, documents = base_index(args, root)
    corpus = cfg.corpus
    pipeline = Pipeline(cfg, embedder)
    pipeline.ask(fact(0)[2])  # the models and the base version loaded before the clock runs
    watcher = Watcher(cfg, embedder).start()
    watcher.ready.wait(600)
    published, answerable, answered = [], [], [0, 0]
    for k in range(args.drops):
        title, text, question, name = fact(k)
        rel = f"drop-{k:03d}.txt"
        if k % 2:
            tmp = root / rel
            write_article(root, rel, title, *text.split("\n\n"))
            tmp.rename(corpus / rel)
        else:
            write_article(corpus, rel, title, *text.split("\n\n"))
        complete = time.time()
        published.append(wait_known(watcher, {rel}) - complete)
        # Answerable: the service's pipeline opens the new version and answers from the new article.
        answers = pipeline.ask(question).answers
        answerable.append(time.time() - complete)
        found, whole = hit(question, name, rel, answers)
        answered[0] += found
        answered[1] += whole
        time.sleep(0.5)
    watcher.stop()
    window = f" (stable window {cfg.watch_stable_seconds:g}s)"
    figures(f"published, {args.drops} drops into {documents} documents", published, window)
    figures(f"answered, {args.drops} drops into {documents} documents", answerable, window)
    print(f"first answer from the new article {answered[0]}/{args.drops}, the whole name {answered[1]}/{args.drops}", flush=True)


def feed_latency(args: argparse.Namespace) -> None:
    """Entries published on a loopback feed at random moments while the poller runs (one poll every
    `--interval` seconds, the default host delay): from publication to the service answering from it."""
    root = Path(tempfile.mkdtemp(prefix="qa-ingest-feeds-"))
    cfg, embedder, documents = base_index(args, root)
    rng = random.Random(args.seed)
    with FeedSite() as site:
        site.rss("/rss.xml", [])
        cfg = cfg.replace(feeds=site.url("/rss.xml"), feed_interval=args.interval)
        pipeline = Pipeline(cfg, embedder)
        pipeline.ask(fact(0)[2])
        poller = FeedPoller(cfg, embedder).start()
        items: list[Item] = []
        seconds, answered = [], [0, 0]
        for k in range(args.entries):
            time.sleep(rng.uniform(0, args.interval))  # a random moment of the poll cycle
            title, text, question, name = fact(k)
            path = publish(site, f"harbour-{k}", text.replace("\n\n", " "), title=title)
            items.append(Item(title, path, f"harbour-{k}"))
            site.rss("/rss.xml", items)
            published = time.time()
            doc_id = entry_doc_id(f"harbour-{k}", site.url(path))
            deadline = published + args.interval + 60
            while pipeline.index().store.document(doc_id) is None:
                if time.time() > deadline:
                    raise TimeoutError(f"entry {k} not indexed after {args.interval + 60:.0f}s")
                time.sleep(0.02)
            answers = pipeline.ask(question).answers
            seconds.append(time.time() - published)
            found, whole = hit(question, name, doc_id, answers)
            answered[0] += found
            answered[1] += whole
        poller.stop()
    figures(
        f"feed entry answered, {args.entries} entries into {documents} documents, poll interval {args.interval:g}s",
        seconds,
        f"; target interval + 5 s = {args.interval + 5:g}s",
    )
    print(f"first answer from the new article {answered[0]}/{args.entries}, the whole name {answered[1]}/{args.entries}", flush=True)


def burst(args: argparse.Namespace) -> None:
    """The same files indexed by `qa index` (a process, and in-process), and dropped at once under the watcher."""
    root = Path(tempfile.mkdtemp(prefix="qa-ingest-burst-"))
    files = root / "files"
    files.mkdir()
    for k in range(args.files):
        title, text, _, _ = fact(k)
        write_article(files, f"burst-{k:04d}.txt", title, *text.split("\n\n"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "qa.cli", "index", "--corpus", str(files), "--index", str(root / "index-cli")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    cli = time.perf_counter() - started
    print(f"qa index, {args.files} files: {cli:.1f}s wall ({run.stdout.strip().splitlines()[-1]})", flush=True)
    cfg = Config.load(corpus=files, index=root / "index-inproc")
    embedder = Embedder.from_config(cfg)
    embedder.model
    started = time.perf_counter()
    build_index(cfg, embedder)
    inproc = time.perf_counter() - started
    print(f"build_index in process (model loaded), {args.files} files: {inproc:.1f}s", flush=True)

    corpus = root / "corpus"
    corpus.mkdir()
    cfg = Config.load(corpus=corpus, index=root / "index-watch")
    watcher = Watcher(cfg, embedder).start()
    watcher.ready.wait(60)
    builds_before = watcher.builds
    started = time.time()
    for path in sorted(files.iterdir()):  # dropped at once: each file copied in, as a crawler writes them
        (corpus / path.name).write_bytes(path.read_bytes())
    done = wait_known(watcher, {p.name for p in files.iterdir()}, 3600)
    watcher.stop()
    took = done - started
    builds = watcher.builds - builds_before
    print(
        f"watcher, {args.files} files dropped at once: all answerable after {took:.1f}s in {builds} builds; "
        f"{took / cli:.2f}x `qa index` wall time, {took / inproc:.2f}x its build in process",
        flush=True,
    )


def kills(args: argparse.Namespace) -> None:
    """`qa feeds --once` killed with SIGKILL at random moments while new entries keep arriving; then
    one pass to the end, and the index compared with every entry published."""
    root = Path(tempfile.mkdtemp(prefix="qa-ingest-kills-"))
    corpus = root / "corpus"
    corpus.mkdir()
    write_article(corpus, "seed.txt", "Harbour news", "The harbour of Quillport reopened after the winter storms.")
    cfg = Config.load(corpus=corpus, index=root / "index")
    build_index(cfg, Embedder.from_config(cfg))
    rng = random.Random(args.seed)
    with FeedSite() as site:
        items: list[Item] = []

        def more(n: int) -> None:
            for _ in range(n):
                k = len(items)
                title, text, _, _ = fact(k)
                path = publish(site, f"harbour-{k}", text.replace("\n\n", " "), title=title, delay=0.02)
                items.append(Item(title, path, f"harbour-{k}" if k % 2 else None))
            site.rss("/rss.xml", items)

        more(20)
        command = [sys.executable, "-m", "qa.cli", "feeds", "--once", "--feed", site.url("/rss.xml"), "--wait", "30"]
        command += ["--corpus", str(corpus), "--index", str(cfg.index)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")} | {"QA_FEED_HOST_DELAY": "0.01", "QA_FEED_INTERVAL": "0.1"}
        killed = 0
        started = time.time()
        trial = 0
        while killed < args.kills:  # N kills that land while the poller runs (some runs finish before their moment)
            trial += 1
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.2, args.longest))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            proc.wait()
            more(rng.randint(0, 3))
            if trial % 10 == 0:
                print(
                    f"  {trial} rounds, {killed} killed mid-run, {len(items)} entries published, {time.time() - started:.0f}s",
                    flush=True,
                )
        final = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        expected = {entry_doc_id(i.guid or canonical_url(site.url(i.path)), site.url(i.path)) for i in items}
        docs = set(indexed(cfg)) - {"seed.txt"}
        files = [p.stem for p in corpus.glob("*.json")]
        refetched = sum(max(0, site.hits[i.path] - 1) for i in items)
        states = Ledger.of(cfg).entry_states()
        print(final.stdout.strip(), flush=True)
        print(
            json.dumps(
                {
                    "rounds": trial,
                    "killed_mid_run": killed,
                    "entries": len(items),
                    "lost": len(expected - docs),
                    "unexpected": len(docs - expected),
                    "duplicate_files": len(files) - len(set(files)),
                    "files": len(files),
                    "ledger": states,
                    "pages_fetched_again": refetched,
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("latency")
    p.add_argument("--articles", help="A JSONL file of articles to index first (e.g. ../shared/data/bbc_news/articles.jsonl)")
    p.add_argument("--limit", type=int, default=5000)
    p.add_argument("--base-index", type=Path, help="With --articles: a built index of them to start from (copied), instead of building one")
    p.add_argument("--drops", type=int, default=20)
    p = sub.add_parser("feed-latency")
    p.add_argument("--articles", help="As for latency")
    p.add_argument("--limit", type=int, default=5000)
    p.add_argument("--base-index", type=Path)
    p.add_argument("--entries", type=int, default=20)
    p.add_argument("--interval", type=float, default=10.0, help="QA_FEED_INTERVAL for the run")
    p.add_argument("--seed", type=int, default=45)
    p = sub.add_parser("burst")
    p.add_argument("--files", type=int, default=1000)
    p = sub.add_parser("kills")
    p.add_argument("--kills", type=int, default=100, help="SIGKILLs that land while `qa feeds --once` runs")
    p.add_argument("--longest", type=float, default=6.0, help="Longest run before the kill, in seconds")
    p.add_argument("--seed", type=int, default=45)
    args = parser.parse_args()
    {"latency": latency, "feed-latency": feed_latency, "burst": burst, "kills": kills}[args.what](args)


if __name__ == "__main__":
    main()
