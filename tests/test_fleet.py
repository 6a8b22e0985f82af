"""A fleet on one Milvus engine, every member its own process (issue #46): Milvus Lite 2.5.1's engine
serving over TCP, two `qa serve` replicas, a writer, `qa index --part` workers and builders racing
for the build lease. bench/fleet.py runs the same code at the issue's sizes (20 publishes, 20 trials).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bench.fleet import LiteEngine, check_race, parts_together, qa_index, race, run_fleet, same_rows, seed_corpus
from qa.config import Config
from qa.index import IndexBusy, build_index, open_index
from qa.index.milvus.schema import Milvus
from qa.models import Document
from qa.pipeline import Pipeline
from tests.conftest import IBM_QUESTION, ROOT, write_article


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """One engine process for the module; killed by its PID (it outlives a parent that dies)."""
    server = LiteEngine(tmp_path_factory.mktemp("engine"))
    yield server
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)  # gone: no stray engine left behind


def fleet_config(tmp_path, engine: LiteEngine, prefix: str) -> Config:
    cfg = Config.load(corpus=tmp_path / "corpus", index=tmp_path / "index", milvus_uri=engine.uri, milvus_prefix=prefix)
    seed_corpus(cfg.corpus)
    return cfg


def test_two_replicas_answer_from_one_version_each_and_follow_every_publish_within_2_s(engine, tmp_path, embedder) -> None:
    cfg = fleet_config(tmp_path, engine, "replicas")
    build_index(cfg, embedder)
    figures = run_fleet(cfg, tmp_path, publishes=4, clients=4, pause=0.5)
    print(f"\nfleet: {figures['requests']} requests, versions {figures['versions_answered']}, delay {figures['delay_s']}")
    assert figures["publishes"] == 4
    assert figures["failed"] == [], figures["failed"][:3]
    assert figures["mixed"] == [], figures["mixed"][:3]
    assert figures["ledger_answers"] > 0 and len(figures["versions_answered"]) >= 3  # answers came from several versions
    assert figures["delay_s"]["max"] <= 2.0, figures["delay_s"]


def test_part_workers_started_together_build_one_workers_index_and_a_killed_one_is_rerun(engine, tmp_path, embedder) -> None:
    parts = fleet_config(tmp_path, engine, "parts")
    one = parts.replace(milvus_prefix="one", index=tmp_path / "one")
    outs = parts_together(parts)
    assert sum("; version 1" in out for out in outs) == 1, outs  # exactly one worker published
    build_index(one, embedder)
    assert same_rows(parts, one) > 0
    # A worker killed midway: the previous version answers; its rerun completes the build.
    # Enough for each part to take seconds to embed, so that the kill lands before part 1 is done.
    for i in range(24):
        tides = [f"Late report {i}, part {k}: the tide came in at {k} o'clock and the harbour closed its gates." for k in range(30)]
        write_article(parts.corpus, f"late-{i}.txt", f"Late report {i}", *tides)
    workers = [qa_index(parts, "--part", f"{i}/2", index=tmp_path / f"w{i}") for i in (1, 2)]
    db = Milvus(parts)
    deadline = time.monotonic() + 120
    while db.meta_value("build") != {"target": 2, "parts": 2, "rebuild": False} and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert workers[0].poll() is None and not db.meta_value("part-2-1"), "part 1 finished before it could be killed"
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait()
    out = workers[1].communicate(timeout=300)[0]
    assert workers[1].returncode == 0 and "the last part to finish publishes version 2" in out, out
    assert open_index(parts).version == 1
    assert Pipeline(parts, embedder).ask(IBM_QUESTION).answers
    rerun = qa_index(parts, "--part", "1/2", index=tmp_path / "w1")
    out = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0 and "; version 2" in out, out
    build_index(one, embedder)
    assert open_index(parts).version == open_index(one).version == 2
    assert same_rows(parts, one) > 0


def test_builders_on_separate_lock_folders_never_both_publish(engine, tmp_path, embedder) -> None:
    cfg = Config.load(corpus=tmp_path / "corpus", index=tmp_path / "index", milvus_uri=engine.uri, milvus_prefix="race")
    cfg.corpus.mkdir()
    build_index(cfg, embedder, upserts=[Document("seed", "Seed", "The first report.")], deletes=[])
    outcomes = race(cfg, tmp_path, trials=4, period=3.0)
    figures = check_race(cfg, outcomes)
    print(f"\nlease race: {figures}")
    assert figures["refused"] > 0  # they did meet: only the lease kept them apart
    assert figures["published"] >= figures["trials"]  # and each trial published at least once


def test_a_dead_holders_lease_is_taken_after_it_expires(engine, tmp_path, embedder) -> None:
    cfg = Config.load(corpus=tmp_path / "corpus", index=tmp_path / "index", milvus_uri=engine.uri, milvus_prefix="dead")
    cfg.corpus.mkdir()
    build_index(cfg, embedder, upserts=[Document("seed", "Seed", "The first report.")], deletes=[])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom qa.config import Config\nfrom qa.index import build_lock\n"
         f"build_lock(Config.load(index={str(tmp_path / 'other')!r}, milvus_uri={engine.uri!r}, milvus_prefix='dead'), 0)\n"
         "print('held', flush=True)\ntime.sleep(600)"],
        cwd=ROOT, env={**os.environ, "QA_MILVUS_LEASE_SECONDS": "3"}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(3.5)  # renewed: still held past its first expiry
        with pytest.raises(IndexBusy, match="another build holds the build lease on Milvus"):
            build_index(cfg, embedder, upserts=[Document("a", "A", "Report a.")], deletes=[])
    finally:
        holder.kill()
        holder.wait()
    started = time.monotonic()
    summary = build_index(cfg, embedder, upserts=[Document("a", "A", "Report a.")], deletes=[], wait=30)
    assert summary.version == 2 and time.monotonic() - started < 10  # taken once its last renewal expired (3 s)
