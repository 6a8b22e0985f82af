"""The two engines side by side: the embedded files and Milvus (Lite here), on one corpus, in one run.

    .venv/bin/python bench/engines.py --dataset news_2022 --workdir /tmp/engines \
        [--articles N] [--parts build,query,recall,http,eval,rebuild] [--milvus-uri PATH.db]

For each engine: the whole build (time, peak RSS, in a child process), question latency in process
and over HTTP (`qa serve` under wrk), agreement of the dense top 20 with exact search and of the
fused top 20 between the engines, `qa eval` on squad11_dev13 (open), and a rebuild that changes
documents while 4 clients ask, checking every answer names one published version and no request
fails. A benchmark, not a test: it prints figures and writes them to bench/results/engines-*.json.
Milvus Lite's file is locked by the first process that opens it, so HTTP on Milvus Lite runs in an
invocation of its own (`--engines milvus --parts http`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpora import SHARED, articles, questions, write_corpus  # noqa: E402
from bench.run import RESULTS, du_mb, http_load, load, pct  # noqa: E402
from qa.config import Config  # noqa: E402

ENGINES = ("files", "milvus")
PARTS = ("build", "query", "recall", "http", "eval", "rebuild")


def engine_config(engine: str, work: Path, milvus_uri: str) -> Config:
    cfg = Config.load(corpus=work / "corpus", index=work / f"index-{engine}")
    return cfg.replace(milvus_uri=milvus_uri) if engine == "milvus" else cfg.replace(milvus_uri="")


def child_build(engine: str, work: str, milvus_uri: str) -> None:
    from qa.embedding import Embedder
    from qa.index import build_index, open_index

    cfg = engine_config(engine, Path(work), milvus_uri)
    started = time.perf_counter()
    summary = build_index(cfg, Embedder.from_config(cfg), rebuild=True)
    seconds = time.perf_counter() - started
    m = open_index(cfg).manifest
    size = du_mb(cfg.index) if engine == "files" else du_mb(Path(milvus_uri).parent)
    print(
        json.dumps(
            {
                "engine": engine,
                "seconds": round(seconds, 1),
                "documents": m.documents,
                "passages": m.passages,
                "sentences": m.sentences,
                "passages_per_s": round(m.passages / seconds, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "on_disk_mb": size,
                "embedded": summary.embedded,
            }
        )
    )


def build(engine: str, work: Path, milvus_uri: str) -> dict:
    before = load()
    out = subprocess.run(
        [sys.executable, __file__, "--child-build", engine, str(work), milvus_uri], capture_output=True, text=True, cwd=ROOT
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"load_avg_before": before}


def query_latency(cfg: Config, qs: list[str]) -> tuple[dict, dict[str, list]]:
    """Question latency through the whole pipeline, and each question's fused top 20 as
    (document id, passage ordinal), which is the same passage on both engines."""
    from qa.pipeline import Pipeline

    pipeline = Pipeline(cfg)
    for q in qs[:5]:
        pipeline.ask(q)
    times, top = [], {}
    for q in qs:
        started = time.perf_counter()
        result = pipeline.ask(q, top_k=20)
        times.append((time.perf_counter() - started) * 1000)
        rows = pipeline.index().store.passages([p.id for p in result.passages])
        top[q] = [(p.document_id, rows[p.id].ordinal) for p in result.passages]
    return {"ask_ms": pct(times)}, top


def dense_recall(cfg: Config, qs: list[str], exact: dict[str, float]) -> dict:
    """Dense passage search's top 20 against exact search over the same vectors: the share of the 20
    that score at least the exact 20th score (by score, so that news_2022's duplicated paragraphs,
    whose vectors tie, count as found whichever copy comes back)."""
    from qa.embedding import Embedder
    from qa.index import open_index

    index = open_index(cfg)
    embedder = Embedder.from_config(cfg)
    got, times = [], []
    for q in qs:
        v = embedder.embed_questions([q])[0]
        started = time.perf_counter()
        found = index.rankings(v, q, 20, None).dense
        times.append((time.perf_counter() - started) * 1000)
        got.append(sum(score >= exact[q] - 1e-4 for _, score in found[:20]) / 20)
    return {"recall@20_vs_exact": round(float(np.mean(got)), 4), "candidates_ms": pct(times)}


def exact_top20(cfg: Config, qs: list[str]) -> dict[str, float]:
    """Each question's 20th best inner product over every passage vector of the files index (exact)."""

    from qa.embedding import Embedder
    from qa.index import open_index
    from qa.index.vectors import all_vectors

    index = open_index(cfg)
    vi = index.passage_vectors
    ids, x = all_vectors(vi.base)
    keep = ~np.isin(ids, vi.removed)
    x = x[keep]
    if vi.delta.ntotal:
        x = np.vstack([x, vi.delta.index.reconstruct_n(0, vi.delta.ntotal)])
    # One question at a time, as the engines embed them: int8 dynamic quantization depends on the batch.
    embedder = Embedder.from_config(cfg)
    q = np.vstack([embedder.embed_questions([text]) for text in qs])
    scores = q @ x.T
    twentieth = -np.partition(-scores, 19, axis=1)[:, 19]
    return {qs[k]: float(twentieth[k]) for k in range(len(qs))}


def squad_eval(cfg: Config) -> dict:
    from qa.evaluate import evaluate

    data = SHARED / "squad11_dev13"
    return evaluate(cfg, data / "paragraphs.jsonl", data / "questions.jsonl", mode="open", show_progress=False)


def rebuild_under_load(cfg: Config, records: list[dict], qs: list[str], clients: int = 4, changed: int = 20) -> dict:
    """Changes `changed` articles (edits half, removes half) in one build while `clients` threads ask;
    every answer must come from one published version, with passages that version holds."""
    from qa.embedding import Embedder
    from qa.index import build_index
    from qa.models import Document
    from qa.pipeline import Pipeline

    embedder = Embedder.from_config(cfg)
    pipeline = Pipeline(cfg, embedder)
    pipeline.ask(qs[0])
    before = pipeline.index().version
    stop = threading.Event()
    seen: dict[int, int] = {}
    errors: list[str] = []
    lock = threading.Lock()

    answered: list[tuple[int, set[str]]] = []

    def client(k: int) -> None:
        i = k
        while not stop.is_set():
            q = qs[i % len(qs)]
            i += clients
            try:
                result = pipeline.ask(q, top_k=20)
                with lock:
                    answered.append((result.index_version, {p.document_id for p in result.passages}))
            except Exception as exc:  # the figure is the count of these
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(2)
    edits = [Document(id=r["id"], title=r["title"], text=r["text"] + "\n\nEditor's note: updated.") for r in records[: changed // 2]]
    gone = [r["id"] for r in records[changed // 2 : changed]]
    started = time.perf_counter()
    summary = build_index(cfg, embedder, upserts=edits, deletes=gone, wait=600)
    build_s = time.perf_counter() - started
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join()
    for version in {v for v, _ in answered}:
        seen[version] = sum(v == version for v, _ in answered)
    # A mixed answer would show a removed document under the version that removed it.
    mixed = sum(1 for v, docs in answered if v == summary.version and docs & set(gone))
    # put the corpus back as it was
    build_index(cfg, embedder, upserts=[Document(id=r["id"], title=r["title"], text=r["text"]) for r in records[:changed]], deletes=[])
    return {
        "build_s": round(build_s, 2),
        "version_before": before,
        "version_after": summary.version,
        "answers_by_version": seen,
        "errors": len(errors),
        "mixed_answers": mixed,
        "first_errors": errors[:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["bbc_news", "news_2022"], default="news_2022")
    ap.add_argument("--articles", type=int, default=None)
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--http-seconds", type=int, default=15)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--milvus-uri", default="", help="default: WORKDIR/milvus/index.db (Milvus Lite)")
    ap.add_argument("--child-build", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_build:
        return child_build(*args.child_build)
    parts, engines = set(args.parts.split(",")), args.engines.split(",")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="qa-engines-"))
    uri = args.milvus_uri or str(work / "milvus" / "index.db")
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    records = articles(args.dataset, args.articles)
    if not (work / "corpus" / "articles.jsonl").exists():
        write_corpus(records, work / "corpus")
    qs = questions(args.questions)
    results: dict = {"dataset": args.dataset, "articles": len(records), "args": vars(args) | {"workdir": str(work)}, "engines": {}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"engines-{time.strftime('%Y%m%d-%H%M%S')}.json"

    def report(engine: str, part: str, value) -> None:
        results["engines"].setdefault(engine, {})[part] = value
        print(f"[{engine}] {part}: {json.dumps(value, default=str)}", flush=True)
        out_path.write_text(json.dumps(results, indent=2, default=str))

    exact = None
    tops: dict[str, dict] = {}
    for engine in engines:
        cfg = engine_config(engine, work, uri)
        steps = [
            ("build", lambda: build(engine, work, uri)),
            ("query", lambda: (lambda r: tops.__setitem__(engine, r[1]) or r[0])(query_latency(cfg, qs))),
            ("recall", lambda: dense_recall(cfg, qs, exact)),
            ("eval", lambda: squad_eval(cfg)),
            ("rebuild", lambda: rebuild_under_load(cfg, records, qs)),
        ]
        for part, fn in steps:
            if part not in parts:
                continue
            if part == "recall" and exact is None:
                exact = exact_top20(engine_config("files", work, uri), qs)
            try:
                report(engine, part, fn() | {"load_avg": load()})
            except Exception as exc:  # a benchmark reports what failed and goes on
                report(engine, part, {"error": f"{type(exc).__name__}: {exc}"})
        if "http" in parts:
            if engine == "milvus" and parts & {"query", "recall", "eval", "rebuild"}:
                # A Milvus Lite file stays locked by the process that opened it, closed or not.
                report(engine, "http", {"error": "run `--engines milvus --parts http` on its own: Milvus Lite's file is this process's"})
                continue
            os.environ["QA_MILVUS_URI"] = cfg.milvus_uri
            try:
                report(engine, "http", http_load(cfg, cfg.backend, qs, args.http_seconds, clients=(1, 4)))
            finally:
                os.environ.pop("QA_MILVUS_URI", None)
    if len(tops) == 2:
        same = [len(set(tops["files"][q]) & set(tops["milvus"][q])) / max(1, len(tops["files"][q])) for q in qs]
        first = [tops["files"][q][:1] == tops["milvus"][q][:1] for q in qs]
        report("both", "agreement", {"fused_top20_overlap": round(float(np.mean(same)), 4), "same_first": round(float(np.mean(first)), 4)})
    print(f"results: {out_path}")


if __name__ == "__main__":
    main()
