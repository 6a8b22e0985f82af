"""The `qa` command: index, ask, serve, eval, watch, feeds. Flags override `QA_*` variables, which override defaults."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from qa.config import Config

common = [
    click.option("--corpus", type=click.Path(path_type=Path), help="Articles folder [QA_CORPUS, default corpus/]"),
    click.option("--index", "index_dir", type=click.Path(path_type=Path), help="Index folder [QA_INDEX, default index/]"),
    click.option("--model", help="Embedding model name or path [QA_MODEL]"),
    click.option("--milvus-uri", help="The index on Milvus: a .db file (Milvus Lite) or http://host:19530 [QA_MILVUS_URI]"),
]


def with_common(fn):
    for option in reversed(common):
        fn = option(fn)
    return fn


def load_config(corpus: Path | None, index_dir: Path | None, model: str | None, **more) -> Config:
    try:
        return Config.load(corpus=corpus, index=index_dir, model=model, **more)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _part(value: str | None) -> tuple[int, int] | None:
    """`--part I/N` as (I, N), 1 <= I <= N."""
    if value is None:
        return None
    i, _, n = value.partition("/")
    if not (i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise click.BadParameter(f"{value!r}: expected I/N with 1 <= I <= N, e.g. 2/4")
    return int(i), int(n)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Question answering over the news articles in a corpus folder."""
    if not sys.stderr.isatty():  # a log file or a pipe: plain lines, no progress bars from the libraries
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@main.command()
@with_common
@click.option("--rebuild", is_flag=True, help="Start over instead of updating the current index.")
@click.option("--wait", type=float, default=0.0, show_default=True, help="Seconds to wait for another build.")
@click.option("--part", callback=lambda ctx, param, value: _part(value), help="I/N: embed this worker's share (Milvus only).")
@click.option(
    "--allow-removals", is_flag=True, help="Remove documents gone from the corpus even when they are more than QA_MAX_REMOVE_FRACTION."
)
def index(corpus, index_dir, model, milvus_uri, rebuild, wait, part, allow_removals) -> None:
    """Index new and changed articles; remove deleted ones."""
    from qa.embedding import Embedder
    from qa.index import IndexProblem, build_index, require_corpus

    cfg = load_config(corpus, index_dir, model, milvus_uri=milvus_uri)
    try:
        require_corpus(cfg.corpus)  # before the model loads: a typo is told at once
        embedder = Embedder.from_config(cfg)
        # Progress goes to stderr: a bar on a terminal, a line per tenth of the work in a log or a pipe.
        summary = build_index(cfg, embedder, rebuild=rebuild, wait=wait, show_progress=True, part=part, allow_removals=allow_removals)
    except IndexProblem as exc:
        raise click.ClickException(str(exc)) from exc
    except (OSError, RuntimeError) as exc:  # a full disk, a read-only folder: the build is abandoned whole
        raise click.ClickException(f"the build failed ({exc}); the previous index is unchanged") from exc
    for s in summary.skipped:
        click.echo(f"skipped {s.path}: {s.reason}", err=True)
    click.echo(summary.line())
    if summary.skipped:
        sys.exit(3)


def _as_of_filters(ctx, param, value):
    """`--as-of DATE` as the Filters it asks for (None without it); a bad date is a usage error."""
    if not value:
        return None
    from pydantic import ValidationError

    from qa.models import Filters

    try:
        return Filters(as_of=value)
    except ValidationError as exc:
        raise click.BadParameter("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from exc


@main.command()
@with_common
@click.argument("question")
@click.option("--top-k", type=click.IntRange(1, 50), help="Passages to return.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON object.")
@click.option(
    "--as-of",
    "as_of",
    metavar="YYYY-MM-DD",
    callback=_as_of_filters,
    help="Answer as a reader on that day would: articles dated later are left out, undated ones stay in.",
)
def ask(corpus, index_dir, model, milvus_uri, question, top_k, as_json, as_of) -> None:
    """Answer QUESTION from the index."""
    from qa.index import IndexProblem
    from qa.pipeline import Pipeline

    cfg = load_config(corpus, index_dir, model, milvus_uri=milvus_uri)
    if not question.strip():
        raise click.UsageError("the question is empty")
    try:
        result = Pipeline(cfg).ask(question, top_k, as_of)
    except IndexProblem as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    from qa.render import render_text

    click.echo(render_text(result, color=sys.stdout.isatty()))


@main.command()
@with_common
@click.option("--host", help="[QA_HOST, default 127.0.0.1]")
@click.option("--port", type=int, help="[QA_PORT, default 8000]")
@click.option("--watch", is_flag=True, help="Also index what arrives in the corpus folder, and follow QA_FEEDS (`qa watch`).")
def serve(corpus, index_dir, model, milvus_uri, host, port, watch) -> None:
    """Run the web form and JSON API."""
    import uvicorn

    from qa.index import IndexProblem, require_corpus
    from qa.service import create_app

    cfg = load_config(corpus, index_dir, model, milvus_uri=milvus_uri, host=host, port=port)
    try:
        require_corpus(cfg.corpus)  # the folder its writes and rebuilds work on
    except IndexProblem as exc:
        raise click.ClickException(str(exc)) from exc
    uvicorn.run(create_app(cfg, watch=watch), host=cfg.host, port=cfg.port, log_level="info")


@main.command()
@with_common
def watch(corpus, index_dir, model, milvus_uri) -> None:
    """Keep the index up with the corpus folder, and with QA_FEEDS when set, until interrupted.

    A file is read once it has not changed for QA_WATCH_STABLE_SECONDS (docs/ingestion.md)."""
    import logging
    import signal

    from qa.embedding import Embedder
    from qa.index import IndexProblem, require_corpus
    from qa.ingest import Ingest, feed_urls

    cfg = load_config(corpus, index_dir, model, milvus_uri=milvus_uri)
    try:
        require_corpus(cfg.corpus)
    except IndexProblem as exc:
        raise click.ClickException(str(exc)) from exc
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ingest = Ingest(cfg, Embedder.from_config(cfg))
    signal.signal(signal.SIGTERM, lambda *_: ingest.watcher.stop_event.set())
    feeds = feed_urls(cfg)
    click.echo(f"watching {cfg.corpus}" + (f" and {len(feeds)} feeds" if feeds else "") + "; Ctrl-C stops", err=True)
    if ingest.poller is not None:
        ingest.poller.start()
    try:
        ingest.watcher.run()  # returns on Ctrl-C or SIGTERM
    finally:
        ingest.stop()


@main.command()
@with_common
@click.option("--once", is_flag=True, help="One pass over the feeds, then exit (for cron).")
@click.option("--feed", "feed", multiple=True, help="A feed URL to follow (repeatable) [QA_FEEDS]")
@click.option("--wait", type=float, default=0.0, show_default=True, help="Seconds to wait for another poller of the same ledger.")
def feeds(corpus, index_dir, model, milvus_uri, once, feed, wait) -> None:
    """Follow RSS and Atom feeds: fetch new articles into the corpus folder and the index."""
    import logging

    from filelock import Timeout

    from qa.embedding import Embedder
    from qa.index import IndexProblem, require_corpus
    from qa.ingest import FeedPoller, feed_urls

    cfg = load_config(corpus, index_dir, model, milvus_uri=milvus_uri, feeds=",".join(feed) or None)
    if not feed_urls(cfg):
        raise click.UsageError("no feeds: set QA_FEEDS (URLs, or a file of them) or pass --feed URL")
    try:
        require_corpus(cfg.corpus)
    except IndexProblem as exc:
        raise click.ClickException(str(exc)) from exc
    logging.basicConfig(level=logging.INFO if not once else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    poller = FeedPoller(cfg, lambda: Embedder.from_config(cfg))  # the model loads only when there is something to index
    try:
        if once:
            click.echo(poller.run_once(wait).line())
        else:
            poller.run()
    except Timeout as exc:
        raise click.ClickException(f"another poller is using {poller.lock.lock_file}; try again later") from exc
    except IndexProblem as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        poller.client.close()


@main.command(name="eval")
@with_common
@click.option("--paragraphs", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--questions", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--mode", type=click.Choice(["open", "gold"]), default="open", show_default=True)
@click.option("--limit", type=int, help="Ask only the first N questions.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the metrics here.")
@click.option("--extractive-only", is_flag=True, help="Only questions whose answer is in the passage.")
def eval_(corpus, index_dir, model, milvus_uri, paragraphs, questions, mode, limit, json_out, extractive_only) -> None:
    """Measure retrieval and answers on a JSONL question set."""
    from qa.evaluate import evaluate

    cfg = load_config(corpus, index_dir, model, milvus_uri=milvus_uri)
    metrics = evaluate(cfg, paragraphs, questions, mode=mode, limit=limit, extractive_only=extractive_only)
    text = json.dumps(metrics, indent=2)
    click.echo(text)
    if json_out:
        json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
