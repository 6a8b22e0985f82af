"""A fleet on one Milvus engine, every member a process of its own: replicas under load while a writer
publishes, concurrent `--part` workers, and builders racing for the build lease.

The engine is Milvus Lite 2.5.1 serving one file over TCP (`LiteEngine`), so several processes share
it as they would a server. tests/test_fleet.py runs the same code, smaller; this script runs the
targets of issue #46 and prints the figures (docs/scale-out.md, "A fleet, measured"):

    nice -n 10 .venv/bin/python bench/fleet.py --publishes 20 --clients 4 --trials 20

The writer and the builders are this file run as a subprocess (`writer`, `builder` sub-commands).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qa.config import Config  # noqa: E402
from qa.models import Document  # noqa: E402

#: The article the writer replaces at every publish: its edition is the version's marker.
LEDGER = "ledger.txt"
LEDGER_QUESTION = "Which edition of the Quillport harbour ledger is current?"
EDITION = re.compile(r"ledger is at edition (\d+)")
QUESTIONS = (LEDGER_QUESTION, "Why did IBM partner with Inspur?", "How many boats did the Quillport fleet count?")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiteEngine:
    """Milvus Lite's engine serving `folder/fleet.db` on a free loopback port, as its own process.
    It does not stop when its parent dies, so `stop()` (and the tests' teardown) kills it by its PID."""

    def __init__(self, folder: Path) -> None:
        from milvus_lite.server import Server

        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        server = Server(str(folder / "fleet.db"), address=f"127.0.0.1:{self.port}")
        if not server.init():
            raise RuntimeError("milvus-lite's engine is not installed")
        libs = str(Path(server.milvus_bin).parent)  # what Server.start() puts on the library path
        env = {**os.environ, "LD_LIBRARY_PATH": libs + ":" + os.environ.get("LD_LIBRARY_PATH", "")}
        self.log = open(folder / "engine.log", "ab")
        self.proc = subprocess.Popen([str(a) for a in server.args], env=env, cwd=folder, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        wait_port(self.port, 30, self.proc)

    def stop(self) -> None:
        from qa.index.milvus.read import disconnect

        disconnect(self.uri)  # this process's clients and version watches first: nothing calls a dead engine
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()

    def __enter__(self) -> LiteEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process on port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f}s")


def write_article(folder: Path, name: str, title: str, text: str) -> None:
    (folder / name).write_text(f"{title}\n\n{text}\n", encoding="utf-8")


def ledger(edition: int) -> str:
    return f"The Quillport harbour ledger is at edition {edition}. Edition {edition} lists the boats in port this week."


def seed_corpus(corpus: Path, fillers: int = 6) -> None:
    """The sample article, a few fillers, and the ledger at edition 0."""
    import shutil

    corpus.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "corpus" / "ibm-inspur-partnership.txt", corpus)
    for i in range(fillers):
        write_article(corpus, f"fleet-{i}.txt", f"Fleet report {i}", f"The Quillport fleet counted {i * 7 + 3} boats on day {i}.")
    write_article(corpus, LEDGER, "Harbour ledger", ledger(0))


# The writer: a process of its own that adds, replaces and deletes articles, then publishes.


def writer(cfg: Config, publishes: int, pause: float) -> None:
    """Publishes `publishes` versions, one line of JSON each: the version, when its `current` row
    was written (time.time()), the ledger's edition, and the extra articles it holds. Edition e is
    published as version first + e - 1; every third publish is a rebuild from scratch."""
    from qa.embedding import Embedder
    from qa.index import build_index
    from qa.index.milvus.schema import published

    embedder = Embedder.from_config(cfg)
    embedder.model
    for edition in range(1, publishes + 1):
        write_article(cfg.corpus, LEDGER, "Harbour ledger", ledger(edition))  # replaced
        write_article(cfg.corpus, f"extra-{edition}.txt", f"Extra {edition}", f"Extra report {edition} from the harbour.")  # added
        (cfg.corpus / f"extra-{edition - 2}.txt").unlink(missing_ok=True)  # deleted
        summary = build_index(cfg, embedder, rebuild=edition % 3 == 0, wait=60)
        version, _, at = published[(cfg.milvus_uri, cfg.milvus_prefix)]
        assert version == summary.version, (version, summary.version)
        extras = sorted(p.stem for p in cfg.corpus.glob("extra-*.txt"))
        print(json.dumps({"version": version, "published_at": at, "edition": edition, "extras": extras}), flush=True)
        time.sleep(pause)


@dataclass
class Load:
    """What the clients and the version poller saw."""

    responses: list[dict] = field(default_factory=list)  # replica, status, version, editions, extras, ms
    first_seen: dict[tuple[int, int], float] = field(default_factory=dict)  # (replica, version) -> time.time()
    publishes: list[dict] = field(default_factory=list)


def metrics_version(client, url: str) -> int:
    text = client.get(f"{url}/metrics").text
    found = re.search(r"^qa_index_version (\S+)$", text, re.M)
    return int(float(found.group(1))) if found else 0


def run_fleet(cfg: Config, root: Path, publishes: int, clients: int, pause: float = 0.5) -> dict:
    """Two `qa serve` replicas on `cfg`'s index (published already), `clients` threads asking them
    in turn, a poller reading `qa_index_version` off both every 50 ms, and a writer process making
    `publishes` versions. Returns the figures and the raw observations (`check_fleet` judges them)."""
    import httpx

    from tests.conftest import ServeProcess

    env = {"QA_MILVUS_URI": cfg.milvus_uri, "QA_MILVUS_PREFIX": cfg.milvus_prefix}
    replicas = [ServeProcess(cfg.replace(index=root / f"replica-{i}"), root / f"replica-{i}.log", env=env) for i in range(2)]
    load, stop = Load(), threading.Event()
    try:
        for r in replicas:
            r.wait_ready(240)

        def ask(k: int) -> None:
            replica = k % 2
            with httpx.Client(base_url=replicas[replica].url, timeout=60) as c:
                while not stop.is_set():
                    started = time.perf_counter()
                    try:
                        r = c.get("/api/ask", params={"q": random.choice(QUESTIONS)})
                        body = r.json() if r.status_code == 200 else {}
                        status = r.status_code
                    except httpx.HTTPError as exc:
                        body, status = {}, repr(exc)
                    texts = [p["text"] for p in body.get("passages", [])] + [a.get("sentence") or "" for a in body.get("answers", [])]
                    load.responses.append(
                        {
                            "replica": replica,
                            "status": status,
                            "version": body.get("index_version"),
                            "editions": sorted({int(e) for t in texts for e in EDITION.findall(t)}),
                            "documents": sorted({p["document_id"] for p in body.get("passages", [])}),
                            "ms": (time.perf_counter() - started) * 1000,
                        }
                    )

        def poll() -> None:
            with httpx.Client(timeout=10) as c:
                while not stop.is_set():
                    for i, r in enumerate(replicas):
                        try:
                            v = metrics_version(c, r.url)
                        except httpx.HTTPError:
                            continue
                        load.first_seen.setdefault((i, v), time.time())
                    time.sleep(0.05)

        threads = [threading.Thread(target=ask, args=(k,), daemon=True) for k in range(clients)] + [
            threading.Thread(target=poll, daemon=True)
        ]
        for t in threads:
            t.start()
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "fleet.py"), "writer", "--uri", cfg.milvus_uri, "--prefix", cfg.milvus_prefix,
             "--corpus", str(cfg.corpus), "--index", str(root / "writer"), "--publishes", str(publishes), "--pause", str(pause)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=open(root / "writer.log", "ab"), text=True,
        )  # fmt: skip
        for line in proc.stdout:
            load.publishes.append(json.loads(line))
        proc.wait(600)
        time.sleep(2.5)  # the last publish reaches both replicas
        stop.set()
        for t in threads:
            t.join(60)
        if proc.returncode:
            raise RuntimeError(f"the writer failed ({proc.returncode}): {(root / 'writer.log').read_text()[-3000:]}")
    finally:
        stop.set()
        for r in replicas:
            r.stop()
    return summarize(load)


def summarize(load: Load) -> dict:
    """Failures, answers not of exactly one version, and each replica's delay to each publish."""
    import numpy as np

    by_version = {p["version"]: p for p in load.publishes}
    first = min(by_version) - 1 if by_version else 0  # the version before the writer's first
    mixed = []
    for r in load.responses:
        if r["status"] != 200:
            continue
        v = r["version"]
        edition = by_version[v]["edition"] if v in by_version else 0 if v == first else None
        extras = set(by_version[v]["extras"]) if v in by_version else set()
        wrong_docs = [d for d in r["documents"] if d.startswith("extra-") and Path(d).stem not in extras]
        if edition is None or any(e != edition for e in r["editions"]) or wrong_docs:
            mixed.append(r)
    delays = []
    for p in load.publishes:
        for replica in (0, 1):
            seen = [t for (i, v), t in load.first_seen.items() if i == replica and v >= p["version"]]
            delays.append(min(seen) - p["published_at"] if seen else float("inf"))
    ms = sorted(r["ms"] for r in load.responses if r["status"] == 200) or [0.0]
    return {
        "requests": len(load.responses),
        "failed": [r for r in load.responses if r["status"] != 200],
        "mixed": mixed,
        "versions_answered": sorted({r["version"] for r in load.responses if r["version"]}),
        "ledger_answers": sum(1 for r in load.responses if r["editions"]),
        "publishes": len(load.publishes),
        "delay_s": {"max": max(delays, default=0.0), "p50": float(np.percentile(delays, 50)) if delays else 0.0},
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "max": ms[-1]},
    }


# Concurrent `qa index --part I/N` workers.


def qa_index(cfg: Config, *args: str, index: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`qa index` as a process of its own on `cfg`'s Milvus index (a lock folder of its own)."""
    return subprocess.Popen(
        [sys.executable, "-m", "qa.cli", "index", "--corpus", str(cfg.corpus), "--index", str(index or cfg.index),
         "--milvus-uri", cfg.milvus_uri, *args],
        cwd=ROOT, env={**os.environ, "QA_MILVUS_PREFIX": cfg.milvus_prefix, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def parts_together(cfg: Config, n: int = 2) -> list[str]:
    """`qa index --part i/n` for every i, started at the same moment; their outputs."""
    procs = [qa_index(cfg, "--part", f"{i}/{n}", index=cfg.index / f"worker-{i}") for i in range(1, n + 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        if p.returncode:
            raise RuntimeError(f"a part worker failed ({p.returncode}):\n{out[-3000:]}")
    return outs


def same_rows(a: Config, b: Config) -> int:
    """Asserts the two indexes hold the same rows (vectors up to int8 rounding); the number compared."""
    import numpy as np

    from qa.index.milvus.schema import Milvus

    compared = 0
    for name in ("documents", "passages", "sentences"):
        dbs = (Milvus(a), Milvus(b))
        x, y = (sorted(db.rows(getattr(db, name), "added >= 0", ["*"]), key=lambda r: r.get("id", r.get("key"))) for db in dbs)
        assert len(x) == len(y) > 0, (name, len(x), len(y))
        for r, s in zip(x, y):
            plain = ("sparse", "vector")
            assert {k: v for k, v in r.items() if k not in plain} == {k: v for k, v in s.items() if k not in plain}
            if "vector" in r:
                assert float(np.dot(r["vector"], s["vector"])) > 0.97
        compared += len(x)
    return compared


# Builders racing for the lease.


def builder(cfg: Config, name: str, trials: int, start: float, period: float, seed: int) -> None:
    """Trial k starts at `start + k * period` plus a random offset of up to half a period: a build
    that adds one article (`name-k`), refused at once when another holds the lease. One line of
    JSON a trial: published version or busy, and when the build began and ended."""
    from qa.embedding import Embedder
    from qa.index import IndexBusy, build_index

    embedder = Embedder.from_config(cfg)
    embedder.model
    rng = random.Random(seed)
    for k in range(trials):
        time.sleep(max(0.0, start + k * period + rng.uniform(0, period / 2) - time.time()))
        began = time.time()
        doc = Document(f"{name}-{k}", f"{name} {k}", f"Builder {name} wrote report {k} on the harbour.")
        try:
            version = build_index(cfg, embedder, upserts=[doc], deletes=[]).version
        except IndexBusy:
            version = None
        outcome = {"name": name, "trial": k, "document": doc.id, "version": version, "began": began, "ended": time.time()}
        print(json.dumps(outcome), flush=True)


def race(cfg: Config, root: Path, trials: int, period: float, lease_seconds: float = 30.0) -> list[dict]:
    """Two builder processes with lock folders of their own, on one index; every trial's outcome."""
    start = time.time() + 25  # both have loaded the model by then
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "fleet.py"), "builder", "--uri", cfg.milvus_uri, "--prefix", cfg.milvus_prefix,
             "--corpus", str(cfg.corpus), "--index", str(root / f"locks-{name}"), "--name", name, "--trials", str(trials),
             "--start", str(start), "--period", str(period), "--seed", str(seed)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=open(root / f"builder-{name}.log", "ab"), text=True,
            env={**os.environ, "QA_MILVUS_LEASE_SECONDS": str(lease_seconds)},
        )  # fmt: skip
        for seed, name in enumerate(("north", "south"))
    ]
    outcomes = [json.loads(line) for p in procs for line in p.communicate(timeout=900)[0].splitlines()]
    for name, p in zip(("north", "south"), procs):
        if p.returncode:
            raise RuntimeError(f"builder {name} failed: {(root / f'builder-{name}.log').read_text()[-3000:]}")
    return outcomes


def check_race(cfg: Config, outcomes: list[dict]) -> dict:
    """Never both published: no version published twice, and every article a build said it
    published is in the final index (a second publisher of the same version would drop the first's)."""
    from qa.index import open_index

    published = [o for o in outcomes if o["version"] is not None]
    versions = [o["version"] for o in published]
    assert len(versions) == len(set(versions)), f"a version was published twice: {sorted(versions)}"
    hashes = open_index(cfg).store.document_hashes()
    lost = [o["document"] for o in published if o["document"] not in hashes]
    assert not lost, f"published, then lost to a concurrent publish: {lost}"
    return {"trials": len(outcomes) // 2, "published": len(published), "refused": len(outcomes) - len(published)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("role", nargs="?", default="all", choices=("all", "writer", "builder"))
    ap.add_argument("--uri")
    ap.add_argument("--prefix", default="qa")
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--index", type=Path)
    ap.add_argument("--publishes", type=int, default=20)
    ap.add_argument("--pause", type=float, default=0.5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--name", default="builder")
    ap.add_argument("--start", type=float, default=0.0)
    ap.add_argument("--period", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/qa-fleet"))
    a = ap.parse_args()
    if a.role != "all":
        cfg = Config.load(corpus=a.corpus, index=a.index, milvus_uri=a.uri, milvus_prefix=a.prefix)
        if a.role == "writer":
            writer(cfg, a.publishes, a.pause)
        else:
            builder(cfg, a.name, a.trials, a.start, a.period, a.seed)
        return
    bench(a)


def bench(a: argparse.Namespace) -> None:
    import shutil

    from qa.embedding import Embedder
    from qa.index import build_index

    shutil.rmtree(a.workdir, ignore_errors=True)
    a.workdir.mkdir(parents=True)
    os.environ.setdefault("GLOG_log_dir", str(a.workdir))
    embedder = Embedder.from_config(Config.load())
    with LiteEngine(a.workdir / "engine") as engine:
        cfg = Config.load(corpus=a.workdir / "corpus", index=a.workdir / "index", milvus_uri=engine.uri, milvus_prefix="fleet")
        seed_corpus(cfg.corpus)
        build_index(cfg, embedder)
        started = time.time()
        figures = run_fleet(cfg, a.workdir, a.publishes, a.clients, a.pause)
        print(f"replicas: {time.time() - started:.0f}s", json.dumps({k: v for k, v in figures.items() if k not in ("failed", "mixed")}))
        print(f"  failed {len(figures['failed'])}, mixed {len(figures['mixed'])}")
        parts = cfg.replace(milvus_prefix="parts", index=a.workdir / "parts")
        one = cfg.replace(milvus_prefix="one", index=a.workdir / "one")
        started = time.time()
        parts_together(parts)
        took = time.time() - started
        build_index(one, embedder)
        print(f"parts: 2 workers together {took:.1f}s; rows equal to one worker's: {same_rows(parts, one)}")
        race_cfg = cfg.replace(milvus_prefix="race", corpus=a.workdir / "race-corpus")
        race_cfg.corpus.mkdir()
        build_index(race_cfg, embedder, upserts=[Document("seed", "Seed", "The first report.")], deletes=[])
        outcomes = race(race_cfg, a.workdir, a.trials, a.period)
        print("lease race:", json.dumps(check_race(race_cfg, outcomes)))


if __name__ == "__main__":
    main()
