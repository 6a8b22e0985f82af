"""An operator's slip must not empty the index: a missing corpus folder and a mass removal are
refused on both engines, through `qa index`, the API's rebuild and `qa serve`; and a long `qa index`
shows its progress in a log."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from qa.config import Config
from qa.embedding import Embedder
from qa.index import CorpusMissing, TooManyRemovals, build_index, open_index, published_version
from qa.pipeline import Pipeline
from qa.service import create_app
from tests.conftest import IBM_QUESTION, ROOT, write_article

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def qa(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`qa ...` as an operator runs it, from a cron job: no terminal, output to pipes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    return subprocess.run([sys.executable, "-m", "qa.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def top_answer(cfg: Config, embedder: Embedder) -> tuple[str, str]:
    answer = Pipeline(cfg, embedder).ask(IBM_QUESTION).answers[0]
    return answer.text, answer.document_id


def ten_articles(cfg: Config) -> None:
    for i in range(10):
        write_article(cfg.corpus, f"town-{i}.txt", f"Town {i} news", f"The council of town number {i} met on Monday to vote on the budget.")


def test_qa_index_refuses_a_missing_corpus_folder_and_the_served_index_keeps_answering(sample_config, embedder, tmp_path):
    build_index(sample_config, embedder)
    before, answer = published_version(sample_config), top_answer(sample_config, embedder)
    (tmp_path / "a-file.txt").write_text("not a folder")
    for corpus in (tmp_path / "corpus_typo", tmp_path / "a-file.txt"):
        run = qa("index", "--corpus", str(corpus), "--index", str(sample_config.index))
        assert run.returncode != 0, run.stdout
        assert str(corpus) in run.stderr and "nothing was indexed" in run.stderr, run.stderr
        assert "indexed:" not in run.stdout
    assert published_version(sample_config) == before
    assert top_answer(sample_config, embedder) == answer
    with pytest.raises(CorpusMissing):  # a rebuild too: it would read the folder as empty
        build_index(sample_config.replace(corpus=tmp_path / "corpus_typo"), embedder, rebuild=True)


def test_qa_serve_refuses_a_missing_corpus_folder(sample_config, tmp_path):
    run = qa("serve", "--corpus", str(tmp_path / "nowhere"), "--index", str(sample_config.index), "--port", "1", timeout=60)
    assert run.returncode != 0 and "does not exist" in run.stderr, run.stderr


def test_emptying_the_corpus_folder_is_refused_until_removals_are_allowed(config, embedder):
    ten_articles(config)
    assert build_index(config, embedder).documents == 10
    for path in config.corpus.iterdir():
        path.unlink()
    run = qa("index", "--corpus", str(config.corpus), "--index", str(config.index))
    assert run.returncode != 0
    assert "refusing to remove 10 of the 10 indexed documents" in run.stderr and "--allow-removals" in run.stderr, run.stderr
    assert published_version(config) == 1 and open_index(config).manifest.documents == 10
    with pytest.raises(TooManyRemovals):  # --rebuild is held to the same guard
        build_index(config, embedder, rebuild=True)

    run = qa("index", "--corpus", str(config.corpus), "--index", str(config.index), "--allow-removals")
    assert run.returncode == 0, run.stderr
    assert "10 removed" in run.stdout and "0 documents" in run.stdout
    assert published_version(config) == 2


def test_the_share_of_removals_allowed_is_a_setting(config, embedder):
    ten_articles(config)
    build_index(config, embedder)
    for i in range(4):  # 40%: under the default 50%, an ordinary clean-up
        (config.corpus / f"town-{i}.txt").unlink()
    with pytest.raises(TooManyRemovals, match="4 of the 10"):
        build_index(config.replace(max_remove_fraction=0.3), embedder)
    summary = build_index(config, embedder)
    assert (summary.removed, summary.documents) == (4, 6)


def test_small_indexes_and_explicit_deletes_are_not_limited(config, embedder):
    write_article(config.corpus, "one.txt", "One", "The only article of a new corpus, about the harbour's opening day.")
    build_index(config, embedder)
    (config.corpus / "one.txt").unlink()
    assert build_index(config, embedder).documents == 0  # an index of one document: setting up, not a slip
    ten_articles(config)
    build_index(config, embedder)
    summary = build_index(config, embedder, deletes=[f"town-{i}.txt" for i in range(8)])  # the API's deletes, one by one or many
    assert summary.documents == 2


def test_both_engines_refuse_a_missing_folder_and_a_mass_removal(engine, embedder, tmp_path):
    ten_articles(engine)
    first = build_index(engine, embedder)
    answer = top_answer(engine, embedder)
    with pytest.raises(CorpusMissing):
        build_index(engine.replace(corpus=tmp_path / "unmounted"), embedder)
    for path in engine.corpus.glob("town-*.txt"):
        path.unlink()
    with pytest.raises(TooManyRemovals, match="10 of the 11"):
        build_index(engine, embedder)
    with pytest.raises(TooManyRemovals):
        build_index(engine, embedder, rebuild=True)
    assert published_version(engine) == first.version and top_answer(engine, embedder) == answer
    summary = build_index(engine, embedder, allow_removals=True)
    assert (summary.removed, summary.documents, summary.version) == (10, 1, first.version + 1)


def test_the_api_rebuild_reports_a_refusal_and_publishes_nothing(config, embedder):
    ten_articles(config)
    build_index(config, embedder)
    for path in config.corpus.iterdir():
        path.unlink()
    with TestClient(create_app(config.replace(api_key=KEY), embedder)) as client:

        def rebuild(**body) -> dict:
            assert client.post("/api/index/rebuild", headers=AUTH, json=body).status_code == 202
            deadline = time.time() + 60
            while (status := client.get("/api/index/status").json())["phase"] not in ("done", "failed", "refused"):
                assert time.time() < deadline
                time.sleep(0.05)
            return status

        status = rebuild(full=True)
        assert status["phase"] == "refused" and "refusing to remove 10 of the 10" in status["error"]
        assert client.get("/api/health").json()["documents"] == 10
        assert 'qa_build_phase{phase="refused"} 1.0' in client.get("/metrics").text
        status = rebuild(allow_removals=True)
        assert status["phase"] == "done" and status["summary"]["removed"] == 10
        assert client.get("/api/health").json()["documents"] == 0
        shutil.rmtree(config.corpus)
        status = rebuild()
        assert status["phase"] == "refused" and "does not exist" in status["error"]


def test_qa_index_writes_progress_lines_to_a_pipe(config):
    for i in range(300):
        text = f"Shipment number {i} of grain left the port of Tilbury on a Tuesday."
        write_article(config.corpus, f"report-{i:03d}.txt", f"Report {i}", text)
    run = qa("index", "--corpus", str(config.corpus), "--index", str(config.index))
    assert run.returncode == 0, run.stderr
    reading = [line for line in run.stderr.splitlines() if line.startswith("reading: ")]
    embedding = [line for line in run.stderr.splitlines() if line.startswith("embedding: ")]
    assert len(reading) >= 5 and reading[-1].startswith("reading: 300/300 files (100%)"), run.stderr
    # passages are embedded in blocks of 256 (qa/index/build.py): a line per block here, per tenth on a large corpus
    assert len(embedding) == 2 and embedding[-1].startswith("embedding: 300/300 passages (100%)"), run.stderr
    assert "passages/s, ETA " in embedding[0] and "\r" not in run.stderr  # plain lines: a rate and an ETA, no bar
    assert run.stdout.strip().splitlines()[-1].startswith("indexed: 300 added")
