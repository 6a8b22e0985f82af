"""Speed and scale benchmarks: indexing, incremental add, query latency in process and over HTTP, ANN
recall, and txtai as the peer. Prints the figures and writes them to bench/results/<stamp>.json.

    .venv/bin/python bench/run.py                                  # everything, full corpora
    .venv/bin/python bench/run.py --dataset bbc_news --articles 300 --parts build,query

A benchmark, not a test: it asserts nothing, it reports. Builds run in a child process each, so
peak RSS is the build's own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpora import articles, questions, write_corpus  # noqa: E402
from qa.config import Config  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PARTS = ("build", "incremental", "query", "ann", "http", "txtai")


def pct(values: list[float]) -> dict:
    a = np.asarray(values)
    return {
        "p50": round(float(np.percentile(a, 50)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "p99": round(float(np.percentile(a, 99)), 2),
        "n": len(values),
    }


def du_mb(path: Path) -> float:
    """Bytes on disk, each hard-linked file once (as `du` counts)."""
    seen, total = set(), 0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return round(total / 2**20, 1)


def load() -> float:
    return round(os.getloadavg()[0], 2)


# Index building, in a child process.


def child_build(corpus: str, index: str, backend: str) -> None:
    from qa.embedding import Embedder
    from qa.index import build_index, open_index

    cfg = Config.load(corpus=Path(corpus), index=Path(index), backend=backend)
    started = time.perf_counter()
    embedder = Embedder.from_config(cfg.replace(backend=backend))
    summary = build_index(cfg, embedder, rebuild=True)
    seconds = time.perf_counter() - started
    built = open_index(cfg)
    m = built.manifest
    print(
        json.dumps(
            {
                "backend": backend,
                "seconds": round(seconds, 1),
                "documents": m.documents,
                "passages": m.passages,
                "sentences": m.sentences,
                "passages_per_s": round(m.passages / seconds, 1),
                "texts_per_s": round((m.passages + m.sentences) / seconds, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "index_mb": du_mb(built.path),  # the version just built, not the older ones kept beside it
                "build_seconds_in_build_index": round(summary.seconds, 1),
            }
        )
    )


def build(corpus: Path, index: Path, backend: str) -> dict:
    load_before = load()
    out = subprocess.run(
        [sys.executable, __file__, "--child-build", str(corpus), str(index), backend], capture_output=True, text=True, cwd=ROOT
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["load_avg_before"] = load_before
    return r


# Measures on a built index.


def incremental(cfg: Config, embedder, records: list[dict], full_seconds: float, repeats: int = 5) -> dict:
    from qa.index import build_index
    from qa.models import Document

    times, sizes, added = [], [], []
    stamp = time.strftime("%Y%m%d%H%M%S")  # new ids each run: an id already indexed is not embedded again
    for i in range(repeats):
        r = records[i % len(records)]
        doc = Document(id=f"bench-added-{stamp}-{i}", title=r["title"], text=r["text"])
        started = time.perf_counter()
        summary = build_index(cfg, embedder, upserts=[doc], deletes=[])
        times.append(time.perf_counter() - started)
        sizes.append(summary.embedded)
        added.append(doc.id)
    started = time.perf_counter()
    build_index(cfg, embedder, upserts=[], deletes=added)  # leave the index as it was
    removed_s = time.perf_counter() - started
    median = statistics.median(times)
    return {
        "add_one_article_s": [round(t, 3) for t in times],
        "passages_of_each": sizes,
        "median_s": round(median, 3),
        "remove_them_all_s": round(removed_s, 3),
        "full_build_s": full_seconds,
        "full_over_incremental": round(full_seconds / median, 1) if median else None,
    }


def query_latency(cfg: Config, embedder, qs: list[str]) -> dict:
    from qa.pipeline import Pipeline

    pipeline = Pipeline(cfg, embedder)
    for q in qs[:5]:
        pipeline.ask(q)
    total, embed, dense = [], [], []
    index = pipeline.index()
    for q in qs:
        t0 = time.perf_counter()
        pipeline.ask(q)
        total.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        v = embedder.embed_questions([q])
        t1 = time.perf_counter()
        index.passage_vectors.search(v, cfg.candidates)
        index.sentence_vectors.search(v, cfg.candidates * 3)
        t2 = time.perf_counter()
        embed.append((t1 - t0) * 1000)
        dense.append((t2 - t1) * 1000)
    return {
        "ask_ms": pct(total),
        "embed_question_ms": pct(embed),
        "vector_search_ms": pct(dense),
        "passages_approximate": index.passage_vectors.approximate,
        "sentences_approximate": index.sentence_vectors.approximate,
    }


def ann_recall(cfg: Config, embedder, qs: list[str], efs=(64, 128, 256, 512)) -> dict:
    """recall@20 of the HNSW path against exact search, on this index's real vectors."""
    import faiss

    from qa.index import open_index
    from qa.index.vectors import VectorIndex, all_vectors

    index = open_index(cfg)
    q = embedder.embed_questions(qs)
    out = {}
    for kind, vi in (("passages", index.passage_vectors), ("sentences", index.sentence_vectors)):
        ids, x = all_vectors(vi.base)
        keep = ~np.isin(ids, vi.removed)
        ids, x = ids[keep], x[keep]
        if vi.delta.ntotal:
            ids = np.concatenate([ids, faiss.vector_to_array(vi.delta.id_map)])
            x = np.vstack([x, vi.delta.index.reconstruct_n(0, vi.delta.ntotal)])
        exact = ids[np.argsort(-(q @ x.T), axis=1)[:, :20]]
        with tempfile.TemporaryDirectory() as tmp:
            forced = cfg.replace(ann_min_vectors=1)
            ann = VectorIndex.empty(x.shape[1], forced)
            ann.add_with_ids(x, ids)
            t0 = time.perf_counter()
            ann.save(Path(tmp) / "v.faiss")
            build_s = time.perf_counter() - t0
            ann = VectorIndex.load(Path(tmp) / "v.faiss", forced)
            rows = {"vectors": len(ids), "hnsw_build_s": round(build_s, 1)}
            flat = faiss.IndexFlatIP(x.shape[1])
            flat.add(x)
            t0 = time.perf_counter()
            for v in q:
                flat.search(v[None], 20)
            rows["exact_ms"] = round((time.perf_counter() - t0) * 1000 / len(q), 3)
            for n in efs:
                ann.config = forced.replace(ann_ef_search=n)
                t0 = time.perf_counter()
                got = np.vstack([ann.search(v[None], 20)[1] for v in q])
                ms = (time.perf_counter() - t0) * 1000 / len(q)
                recall = float(np.mean([len(set(g) & set(w)) / 20 for g, w in zip(got, exact)]))
                rows[f"ef_{n}"] = {"recall@20": round(recall, 4), "ms": round(ms, 3)}
        out[kind] = rows
    return out


def http_load(cfg: Config, backend: str, qs: list[str], seconds: int, clients=(1, 4, 16)) -> dict:
    """`qa serve` on 127.0.0.1 under wrk, each level for `seconds`; GET /api/ask with rotating questions."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "QA_BACKEND": backend}
    log = open(cfg.index.parent / "serve.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qa.cli",
            "serve",
            "--corpus",
            str(cfg.corpus),
            "--index",
            str(cfg.index),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    out: dict = {}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            return {"error": "qa serve did not start"}
        script = cfg.index.parent / "ask.lua"
        paths = ",".join(json.dumps("/api/ask?q=" + urllib.parse.quote(q)) for q in qs)
        script.write_text(
            f"local paths = {{{paths}}}\nlocal i = 0\n"
            "request = function() i = i % #paths + 1; return wrk.format('GET', paths[i]) end\n"
            "done = function(summary, latency, requests)\n"
            '  io.write(string.format(\'JSON {"requests": %d, "non2xx": %d, "errors": %d, "p50": %.2f, "p95": %.2f, "p99": %.2f}\\n\',\n'
            "    summary.requests, summary.errors.status,\n"
            "    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,\n"
            "    latency:percentile(50)/1000, latency:percentile(95)/1000, latency:percentile(99)/1000))\nend\n"
        )
        httpx.get(f"http://127.0.0.1:{port}/api/ask", params={"q": qs[0]}, timeout=60)
        for c in clients:
            r = subprocess.run(
                [
                    "wrk",
                    "-t",
                    str(min(c, 4)),
                    "-c",
                    str(c),
                    "-d",
                    f"{seconds}s",
                    "--timeout",
                    "10s",
                    "-s",
                    str(script),
                    f"http://127.0.0.1:{port}",
                ],
                capture_output=True,
                text=True,
            )
            line = next((l for l in r.stdout.splitlines() if l.startswith("JSON ")), None)
            if line is None:
                out[f"c{c}"] = {"error": r.stdout[-500:] + r.stderr[-500:]}
                continue
            d = json.loads(line[5:])
            d["requests_per_s"] = round(d["requests"] / seconds, 1)
            out[f"c{c}"] = d
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return out


def child_txtai(texts_path: str, model: str, candidates: str) -> None:
    """txtai's build and search, alone in a process of its own (as a user would run it)."""
    from txtai import Embeddings

    data = json.loads(Path(texts_path).read_text())
    emb = Embeddings(path=model, content=False)
    t0 = time.perf_counter()
    emb.index([(i, t, None) for i, t in enumerate(data["texts"])])
    build_s = time.perf_counter() - t0
    for q in data["questions"][:5]:
        emb.search(q, int(candidates))
    lat = []
    for q in data["questions"]:
        t0 = time.perf_counter()
        emb.search(q, int(candidates))
        lat.append((time.perf_counter() - t0) * 1000)
    print(
        json.dumps(
            {"build_s": build_s, "search_ms": lat, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        )
    )


def txtai_peer(cfg: Config, embedder, qs: list[str], our_build: dict, limit: int | None = None) -> dict:
    """txtai over the same passages (read back from our store) with the same bundled model, in a
    child process; against our question embedding plus dense search on the whole index.

    `limit` indexes only the first N passages in txtai (its build of a whole large corpus takes
    long); the indexing ratio is per passage.
    """
    from qa.embedding import resolve_model
    from qa.index import open_index

    index = open_index(cfg)
    ids = sorted(_all_ids(index))[:limit]
    texts = [f"{r.title}\n{r.text}" for r in index.store.passages(ids).values()]
    data = cfg.index.parent / "txtai-input.json"
    data.write_text(json.dumps({"texts": texts, "questions": qs}))
    out = subprocess.run(
        [sys.executable, __file__, "--child-txtai", str(data), resolve_model(cfg.model), str(cfg.candidates)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    peer = json.loads(out.stdout.strip().splitlines()[-1])
    ours = []
    for q in qs:
        t0 = time.perf_counter()
        index.passage_vectors.search(embedder.embed_questions([q]), cfg.candidates)
        ours.append((time.perf_counter() - t0) * 1000)
    txtai_rate = len(texts) / peer["build_s"]
    our_rate = our_build["passages"] / our_build["seconds"]
    return {
        "passages": len(texts),
        "txtai_index_s": round(peer["build_s"], 1),
        "txtai_passages_per_s": round(txtai_rate, 1),
        "txtai_peak_rss_mb": peer["peak_rss_mb"],
        "txtai_search_ms": pct(peer["search_ms"]),
        "our_dense_search_ms": pct(ours),
        "our_passages_searched": our_build["passages"],
        "note": "our build also makes sentence vectors (pooled from the passage run), HNSW, SQLite and BM25 postings; "
        "txtai embeds passages only",
        "ratio_query_p50_txtai_over_ours": round(pct(peer["search_ms"])["p50"] / pct(ours)["p50"], 2),
        "ratio_indexing_passages_per_s_ours_over_txtai": round(our_rate / txtai_rate, 2),
    }


def _all_ids(index) -> list[int]:
    import faiss

    from qa.index.vectors import all_vectors

    ids, _ = all_vectors(index.passage_vectors.base)
    ids = set(ids.tolist()) - set(index.passage_vectors.removed.tolist())
    return list(ids | set(faiss.vector_to_array(index.passage_vectors.delta.id_map).tolist()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", action="append", choices=["bbc_news", "news_2022"])
    ap.add_argument("--articles", type=int, default=None, help="first N articles of each data set (default: all)")
    ap.add_argument("--backends", default="onnx,torch,onnx-int8", help="built in this order; the first is measured further")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--txtai-passages", type=int, default=None, help="txtai indexes only the first N passages (default: all)")
    ap.add_argument("--http-seconds", type=int, default=15)
    ap.add_argument("--workdir", type=Path, default=None, help="keep indexes here (default: a temp folder, removed)")
    ap.add_argument("--child-build", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--child-txtai", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_build:
        return child_build(*args.child_build)
    if args.child_txtai:
        return child_txtai(*args.child_txtai)
    from qa.embedding import Embedder

    parts = set(args.parts.split(","))
    backends = args.backends.split(",")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="qa-bench-"))
    qs = questions(args.questions)
    reading = Config.load()
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "load_avg_start": load()},
        "args": vars(args) | {"workdir": str(work)},
        "reader": {"reader": reading.reader, "reader_model": reading.reader_model or "shipped"},
        "datasets": {},
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"{stamp}.json"

    def save() -> None:
        out_path.write_text(json.dumps(results, indent=2, default=str))

    try:
        for name in args.dataset or ["bbc_news", "news_2022"]:
            records = articles(name, args.articles)
            corpus = work / name / "corpus"
            write_corpus(records, corpus)
            res: dict = {"articles": len(records), "builds": {}}
            results["datasets"][name] = res
            main_backend = backends[0]
            for b in backends if "build" in parts else []:
                r = build(corpus, work / name / f"index-{b}", b)
                res["builds"][b] = r
                print(f"[{name}] build {b}: {json.dumps(r)}", flush=True)
                save()
            if "torch" in res["builds"]:
                t = res["builds"]["torch"]["passages_per_s"]
                res["speedup_over_torch"] = {b: round(r["passages_per_s"] / t, 2) for b, r in res["builds"].items()}
                print(f"[{name}] speed-up over torch: {res['speedup_over_torch']}", flush=True)
            cfg = Config.load(corpus=corpus, index=work / name / f"index-{main_backend}", backend=main_backend)
            if not (cfg.index / "CURRENT").exists():
                continue
            embedder = Embedder.from_config(cfg.replace(backend=main_backend))
            embedder.model
            steps = [
                ("query", lambda: query_latency(cfg, embedder, qs)),
                ("ann", lambda: ann_recall(cfg, embedder, qs[:100])),
                ("txtai", lambda: txtai_peer(cfg, embedder, qs[:100], res["builds"][main_backend], args.txtai_passages)),
                ("http", lambda: http_load(cfg, main_backend, qs, args.http_seconds)),
                ("incremental", lambda: incremental(cfg, embedder, records, res["builds"].get(main_backend, {}).get("seconds", 0.0))),
            ]
            for part, fn in steps:
                if part in parts:
                    try:
                        res[part] = fn() | {"load_avg": load()}
                    except Exception as exc:  # a benchmark reports what failed and goes on
                        res[part] = {"error": f"{type(exc).__name__}: {exc}"}
                    print(f"[{name}] {part}: {json.dumps(res[part])}", flush=True)
                    save()
    finally:
        save()
        print(f"results: {out_path}")
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
