"""Faults and load: the index and the corpus survive kills, corruption, a full disk and busy builders.

Fast versions run in `make test`; `make stress` runs the same tests with more trials
(QA_STRESS=1): at least 20 killed builds and a longer load.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from qa.index import IndexDamaged, IndexProblem, build_index, current_version, open_index, version_dir
from qa.pipeline import Pipeline
from qa.service import create_app
from tests.conftest import IBM_QUESTION, ROOT, ServeProcess, ThreadServer, write_article

STRESS = os.environ.get("QA_STRESS") == "1"
KEY = "k3y"
AUTH = {"Authorization": f"Bearer {KEY}"}


def add_fillers(corpus: Path, n: int, tag: str = "filler", paragraphs: int = 4) -> None:
    for i in range(n):
        write_article(
            corpus,
            f"{tag}-{i:03d}.txt",
            f"{tag.title()} report {i}",
            *[
                f"{tag.title()} report {i}, part {k}: the village of Harlow counted {i * 13 + k} red kites "
                f"and {k * 7 + i} herons during the survey week."
                for k in range(paragraphs)
            ],
        )


def qa_cli(*args: str, cfg) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qa.cli", *args, "--corpus", str(cfg.corpus), "--index", str(cfg.index)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


# Load during change.


def test_queries_never_fail_during_rebuild_uploads_and_deletes(sample_config, embedder):
    add_fillers(sample_config.corpus, 20)
    build_index(sample_config, embedder)
    cfg = sample_config.replace(api_key=KEY)
    questions = [IBM_QUESTION, "How many red kites were counted in Harlow?", "Who was appointed harbour master of Quillport?"]
    responses: list[tuple[int, int | None, set[str]]] = []
    latencies: list[float] = []
    stop = threading.Event()

    with ThreadServer(create_app(cfg, embedder)) as server:

        def client() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                while not stop.is_set():
                    started = time.perf_counter()
                    r = c.get("/api/ask", params={"q": random.choice(questions)})
                    latencies.append((time.perf_counter() - started) * 1000)
                    body = r.json() if r.status_code == 200 else {}
                    responses.append(
                        (
                            r.status_code,
                            body.get("index_version"),
                            {p["document_id"] for p in body.get("passages", [])} | {a["document_id"] for a in body.get("answers", [])},
                        )
                    )

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        lifetimes: dict[str, list[int | None]] = {}
        with httpx.Client(base_url=server.url, timeout=120, headers=AUTH) as c:
            for n in range(6 if STRESS else 3):
                doc_id = f"quillport-{n}"
                r = c.post(
                    "/api/documents",
                    json={
                        "id": doc_id,
                        "title": f"Quillport news {n}",
                        "text": f"Mara Voss{n} was appointed harbour master of Quillport in spring.",
                    },
                )
                assert r.status_code == 201, r.text
                lifetimes[doc_id] = [r.json()["index_version"], None]
            r = c.post("/api/index/rebuild", json={"full": True})
            assert r.status_code == 202
            deadline = time.time() + 300
            while c.get("/api/index/status").json()["phase"] not in {"done", "failed"} and time.time() < deadline:
                time.sleep(0.2)
            assert c.get("/api/index/status").json()["phase"] == "done"
            r = c.delete("/api/documents/quillport-0")
            assert r.status_code == 200
            lifetimes["quillport-0"][1] = r.json()["index_version"]
            time.sleep(10 if STRESS else 1)
        stop.set()
        for t in threads:
            t.join(60)

    statuses = [s for s, _, _ in responses]
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests, failures: {[s for s in statuses if s != 200]}"
    latencies.sort()
    print(
        f"\nload during change: {len(responses)} requests, 0 errors, latency p50 "
        f"{latencies[len(latencies) // 2]:.0f} ms, p95 {latencies[int(len(latencies) * 0.95)]:.0f} ms, "
        f"max {latencies[-1]:.0f} ms"
    )
    for _status, version, docs in responses:
        for doc_id, (born, died) in lifetimes.items():
            if doc_id in docs:  # a response only shows an article from versions that had it
                assert version >= born and (died is None or version < died), (doc_id, version, born, died)


# Killed builds.


def test_builds_killed_at_random_moments_leave_a_working_index(sample_config, embedder):
    build_index(sample_config, embedder)
    trials = 20 if STRESS else 3
    rng = random.Random(7)
    started = time.time()
    add_fillers(sample_config.corpus, 20, tag="warmup")
    assert qa_cli("index", cfg=sample_config).returncode == 0  # how long a whole build takes here
    duration = time.time() - started
    pipeline = Pipeline(sample_config, embedder)
    for trial in range(trials):
        add_fillers(sample_config.corpus, 15, tag=f"trial{trial}")
        before = current_version(sample_config.index)
        proc = subprocess.Popen(
            [sys.executable, "-m", "qa.cli", "index", "--corpus", str(sample_config.corpus), "--index", str(sample_config.index)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0, duration * 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = current_version(sample_config.index)
        assert after in (before, before + 1)
        result = pipeline.ask(IBM_QUESTION)  # the service would answer from whichever version is published
        assert result.index_version == after and "lure away customers" in result.answers[0].text
    final = qa_cli("index", cfg=sample_config)
    assert final.returncode == 0, final.stderr
    assert not list(sample_config.index.glob(".build-*"))
    index = open_index(sample_config)
    assert index.manifest.documents == 1 + 20 + 15 * trials
    index.close()


def test_server_killed_during_upload_keeps_article_all_or_nothing(sample_config, embedder):
    build_index(sample_config, embedder)
    text = "\n\n".join(f"Paragraph {k}: the Ostrava tram depot repainted {k} carriages in green and cream." for k in range(120))
    article = {"id": "ostrava", "title": "Ostrava trams", "text": text}
    trials = 5 if STRESS else 1
    for trial in range(trials):
        server = ServeProcess(sample_config, sample_config.index.parent / "serve.log", api_key=KEY)
        server.wait_ready()
        try:

            def upload() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    httpx.post(f"{server.url}/api/documents", json=article, headers=AUTH, timeout=60)

            t = threading.Thread(target=upload)
            t.start()
            time.sleep(random.uniform(0.05, 1.5))
            server.kill()
            t.join()
        finally:
            server.stop()
        server = ServeProcess(sample_config, sample_config.index.parent / "serve.log", api_key=KEY)
        server.wait_ready()  # recovery runs at start-up
        try:
            in_corpus = (sample_config.corpus / "ostrava.json").exists()
            in_index = httpx.get(f"{server.url}/api/documents/ostrava").status_code == 200
            assert in_corpus == in_index, (trial, in_corpus, in_index)
            assert not list((sample_config.corpus / ".pending").glob("*"))
            r = httpx.post(f"{server.url}/api/documents", json=article, headers=AUTH, timeout=120)
            assert r.status_code == 201
            assert (sample_config.corpus / "ostrava.json").exists()
            assert httpx.get(f"{server.url}/api/documents/ostrava").json()["passages"] > 1
            assert httpx.delete(f"{server.url}/api/documents/ostrava", headers=AUTH, timeout=60).status_code == 200
        finally:
            server.stop()


# Damaged index files.


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


@pytest.mark.parametrize(
    "name, damage",
    [
        ("passages.faiss", _truncate),
        ("sentences.faiss", _garbage),
        ("store.sqlite", _garbage),
        ("store.sqlite", _truncate),
        ("manifest.json", _garbage),
        ("manifest.json", Path.unlink),
        ("lexical.rows.npy", _truncate),
        ("lexical.terms.npy", _garbage),
        ("lexical.ids.npy", Path.unlink),
    ],
)
def test_damaged_index_files_give_a_clear_error(sample_config, embedder, name, damage):
    build_index(sample_config, embedder)
    damage(version_dir(sample_config.index, 1) / name)
    with pytest.raises(IndexDamaged, match=r"qa index --rebuild"):
        open_index(sample_config)
    with TestClient(create_app(sample_config, embedder)) as c:
        r = c.get("/api/ask", params={"q": IBM_QUESTION})
        assert r.status_code == 503 and "qa index --rebuild" in r.json()["detail"]
    with pytest.raises(IndexProblem, match=r"qa index --rebuild"):
        build_index(sample_config, embedder)
    assert build_index(sample_config, embedder, rebuild=True).version == 2
    assert "lure away" in Pipeline(sample_config, embedder).ask(IBM_QUESTION).answers[0].text


def test_damaged_index_on_the_command_line_has_no_traceback(sample_config, embedder):
    build_index(sample_config, embedder)
    (sample_config.index / "CURRENT").write_text("garbage\x00")
    for args in (("ask", IBM_QUESTION), ("index",)):
        run = qa_cli(*args, cfg=sample_config)
        assert run.returncode == 1
        assert "qa index --rebuild" in run.stderr and "Traceback" not in run.stderr
    assert qa_cli("index", "--rebuild", cfg=sample_config).returncode == 0
    assert "lure away" in Pipeline(sample_config, embedder).ask(IBM_QUESTION).answers[0].text


# A full disk.


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_full_disk_during_a_build_keeps_the_previous_version(sample_config, embedder, small_disk):
    cfg = sample_config.replace(index=small_disk / "index")
    assert build_index(cfg, embedder).version == 1
    add_fillers(cfg.corpus, 40, paragraphs=4)
    with pytest.raises((OSError, RuntimeError, IndexProblem)):
        build_index(cfg, embedder)
    assert current_version(cfg.index) == 1
    assert not list(cfg.index.glob(".build-*"))
    assert "lure away" in Pipeline(cfg, embedder).ask(IBM_QUESTION).answers[0].text
    run = qa_cli("index", cfg=cfg)
    assert run.returncode == 1 and "Traceback" not in run.stderr and "previous index" in run.stderr


# Builders at once.


def test_two_index_commands_at_once_one_waits_or_refuses(sample_config):
    add_fillers(sample_config.corpus, 30)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "qa.cli", "index", "--corpus", str(sample_config.corpus), "--index", str(sample_config.index)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [(p.wait(300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes in ([0, 0], [0, 1]), outcomes
    for code, _, err in outcomes:
        if code == 1:
            assert "another build" in err and "Traceback" not in err
    index = open_index(sample_config)
    assert index.manifest.documents == 31 and index.passage_vectors.ntotal == index.manifest.passages
    index.close()


def test_rebuild_requested_while_one_runs_is_refused(sample_config, embedder):
    add_fillers(sample_config.corpus, 20)
    build_index(sample_config, embedder)
    cfg = sample_config.replace(api_key=KEY)
    with TestClient(create_app(cfg, embedder)) as c:
        assert c.post("/api/index/rebuild", headers=AUTH, json={"full": True}).status_code == 202
        second = c.post("/api/index/rebuild", headers=AUTH, json={"full": True})
        assert second.status_code == 409 and "already running" in second.json()["detail"]
        c.app.state.rebuilds.wait()
        assert c.get("/api/index/status").json()["phase"] == "done"
