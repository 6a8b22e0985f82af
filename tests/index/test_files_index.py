"""The persistent, incremental, crash-safe index (real model, real FAISS, real SQLite)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from qa.index import IndexBusy, IndexMismatch, build_index, build_lock, current_version, open_index, version_dir
from tests.conftest import ROOT, write_article


def passages_of(cfg, doc_id):
    index = open_index(cfg)
    try:
        ids = index.store.document_passage_ids(doc_id)
        return [r.text for r in index.store.passages(ids).values()]
    finally:
        index.close()


def test_sample_corpus_index_and_second_run_embeds_nothing(sample_config, embedder):
    first = build_index(sample_config, embedder)
    assert (first.added, first.documents, first.version) == (1, 1, 1)
    assert first.passages == first.embedded >= 8
    index = open_index(sample_config)
    assert index.passage_vectors.ntotal == first.passages
    assert index.sentence_vectors.ntotal == index.manifest.sentences > first.passages
    assert index.manifest.model == sample_config.model and index.manifest.dimension == 384
    index.close()
    second = build_index(sample_config, embedder)
    assert (second.added, second.changed, second.removed, second.embedded) == (0, 0, 0, 0)
    assert second.version == 1 and current_version(sample_config.index) == 1


def test_add_change_delete_are_reflected_exactly(config, embedder):
    c = config.corpus
    write_article(c, "a.txt", "Alpha", "The alpha plant produced forty tonnes of steel in March last year.")
    write_article(c, "b.txt", "Beta", "The beta bakery sold nine hundred loaves of rye bread on Sunday.")
    s = build_index(config, embedder)
    assert (s.added, s.documents) == (2, 2)

    write_article(c, "c.txt", "Gamma", "The gamma ferry carried three hundred passengers across the bay.")
    write_article(c, "b.txt", "Beta", "The beta bakery closed its doors for good after sixty years of trade.")
    (c / "a.txt").unlink()
    s = build_index(config, embedder)
    assert (s.added, s.changed, s.removed, s.unchanged) == (1, 1, 1, 0)
    assert s.embedded == 2 and s.documents == 2 and s.version == 2

    index = open_index(config)
    assert {d["id"] for d in index.store.documents(0, 10)} == {"b.txt", "c.txt"}
    assert index.passage_vectors.ntotal == index.manifest.passages == 2
    index.close()
    assert passages_of(config, "b.txt") == ["The beta bakery closed its doors for good after sixty years of trade."]
    assert passages_of(config, "a.txt") == []


def test_broken_file_is_skipped_and_the_rest_indexed(config, embedder):
    write_article(config.corpus, "good.txt", "Good", "A perfectly fine article about the harbour being rebuilt.")
    (config.corpus / "bad.jsonl").write_text("{not json}\n")
    s = build_index(config, embedder)
    assert s.documents == 1 and [x.path for x in s.skipped] == ["bad.jsonl"]


def test_cli_reports_skips_in_summary_and_exit_status(config):
    write_article(config.corpus, "good.txt", "Good", "A perfectly fine article about the harbour being rebuilt.")
    (config.corpus / "bad.json").write_text("[")
    run = subprocess.run(
        [sys.executable, "-m", "qa.cli", "index", "--corpus", str(config.corpus), "--index", str(config.index)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 3
    assert "skipped bad.json: invalid JSON" in run.stderr
    assert "1 added" in run.stdout and "1 skipped" in run.stdout


def test_model_mismatch_says_to_rebuild(sample_config, embedder):
    build_index(sample_config, embedder)
    other = sample_config.replace(model="some/other-model")
    with pytest.raises(IndexMismatch, match=r"qa index --rebuild"):
        open_index(other)


def test_an_index_of_other_weights_under_the_same_name_asks_for_a_rebuild(sample_config, embedder):
    """The default model retrained by an upgrade keeps its name: the manifest's weights hash tells."""
    from qa.embedding import model_version

    first = build_index(sample_config, embedder)
    manifest = version_dir(sample_config.index, first.version) / "manifest.json"
    data = json.loads(manifest.read_text())
    assert data["model"] == sample_config.model and data["model_version"] == model_version(sample_config.model) != ""
    manifest.write_text(json.dumps({**data, "model_version": "0" * 16}))  # built before a retraining
    with pytest.raises(IndexMismatch, match=r"other weights of model .*qa index --rebuild"):
        open_index(sample_config)
    del data["model_version"]  # the default model's index from before versions were recorded
    manifest.write_text(json.dumps(data))
    with pytest.raises(IndexMismatch, match=r"other weights"):
        open_index(sample_config)
    again = build_index(sample_config, embedder)  # `qa index` starts over from the corpus
    assert again.started_over and again.added == first.added
    open_index(sample_config).close()


def test_an_index_of_an_older_format_is_built_anew_from_the_corpus(sample_config, embedder):
    first = build_index(sample_config, embedder)
    manifest = version_dir(sample_config.index, first.version) / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "format_version": data["format_version"] - 1}))
    with pytest.raises(IndexMismatch):  # the service's one-article path never starts over
        build_index(sample_config, embedder, upserts=[], deletes=["x"])
    again = build_index(sample_config, embedder)
    assert again.started_over and "format" in again.line()
    assert again.added == first.added and again.version == first.version + 1
    open_index(sample_config).close()


def test_second_builder_is_refused_while_one_runs(sample_config, embedder):
    lock = build_lock(sample_config, wait=0)
    try:
        with pytest.raises(IndexBusy, match="another build"):
            build_index(sample_config, embedder)
    finally:
        lock.release()
    assert build_index(sample_config, embedder).documents == 1


def test_killed_build_leaves_previous_version_serving(sample_config, embedder):
    build_index(sample_config, embedder)
    for i in range(150):
        write_article(
            sample_config.corpus,
            f"filler-{i:03d}.txt",
            f"Filler {i}",
            *[f"Filler article {i}, paragraph {k}: the town of Exampleton reported {i * k} new bicycles." for k in range(6)],
        )
    proc = subprocess.Popen(
        [sys.executable, "-m", "qa.cli", "index", "--corpus", str(sample_config.corpus), "--index", str(sample_config.index)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(sample_config.index.glob(".build-*")):
        time.sleep(0.005)
    # Frozen the moment its work folder appears, so the kill lands mid-build on a machine of any
    # speed (a fixed sleep once let a fast machine publish first).
    os.kill(proc.pid, signal.SIGSTOP)
    assert proc.poll() is None, "the build finished before it could be stopped"
    assert list(sample_config.index.glob(".build-*")) and current_version(sample_config.index) == 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    assert current_version(sample_config.index) == 1
    from qa.pipeline import Pipeline

    result = Pipeline(sample_config, embedder).ask("Why did IBM partner with Inspur?")
    assert result.index_version == 1 and result.answers
    s = build_index(sample_config, embedder)
    assert s.added == 150 and s.version == 2
    assert not list(sample_config.index.glob(".build-*"))


def test_versions_that_share_a_base_search_one_loaded_copy_of_it(sample_config, embedder):
    """A small change links the base into the next version: reading it again (an HNSW graph at news
    scale: most of a one-article build's time) is skipped, in the builder and in the service."""
    build_index(sample_config, embedder)
    first = open_index(sample_config)
    write_article(sample_config.corpus, "ferry.txt", "Ferry", "The ferry to Quenby island will be named the Marrow Gull.")
    build_index(sample_config, embedder)
    second = open_index(sample_config)
    assert second.version == first.version + 1
    assert second.passage_vectors.base is first.passage_vectors.base and second.passage_vectors.delta.ntotal == 1
    assert second.sentence_vectors.base is first.sentence_vectors.base
    rewritten = sample_config.replace(vector_delta_fraction=0.0)  # every change rewrites the base: a new file, read anew
    write_article(rewritten.corpus, "kites.txt", "Kites", "Volunteers counted more red kites than ever above Harlow.")
    build_index(rewritten, embedder)
    third = open_index(rewritten)
    assert third.passage_vectors.base is not second.passage_vectors.base and third.passage_vectors.base.ntotal == third.manifest.passages
    for index in (first, second, third):
        index.close()
