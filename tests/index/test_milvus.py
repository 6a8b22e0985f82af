"""The Milvus engine's own behaviour (the conformance suite both engines pass is test_engines.py):
parallel parts, the service on Milvus, its BM25, its layout version, its two ways of reading."""

from __future__ import annotations

import numpy as np
import pytest

from qa.config import Config
from qa.embedding import Embedder
from qa.index import IndexProblem, build_index, open_index
from qa.models import Document, Filters
from qa.pipeline import Pipeline
from tests.conftest import IBM_QUESTION, SAMPLE_QUESTIONS as QUESTIONS, answer_spans as answers, write_article




def test_parts_written_one_after_the_other_make_the_same_index_as_one_worker(sample_config: Config, tmp_path, embedder) -> None:
    from qa.index.milvus.schema import Milvus

    towns = ("Harlow", "Pelham", "Quillport", "Ostwick", "Brantmoor", "Caddesby")
    for i, town in enumerate(towns):
        write_article(sample_config.corpus, f"ferry-{i}.txt", f"{town} ferry", f"The ferry to {town} ran {i + 2} hours late on Sunday.")
    one = sample_config.replace(milvus_uri=str(tmp_path / "one.db"))
    parts = sample_config.replace(milvus_uri=str(tmp_path / "parts.db"))
    single = build_index(one, embedder)
    for i in (1, 2, 3):
        summary = build_index(parts, embedder, part=(i, 3))
        assert (summary.version is None) == (i < 3), summary.line()  # only the last part in publishes
    a, b = open_index(one), open_index(parts)
    assert a.version == b.version == single.version
    assert a.store.counts() == b.store.counts() and a.store.documents(0, 50) == b.store.documents(0, 50)
    # Row for row the same: ids, offsets and texts; vectors equal up to int8 rounding, which depends on
    # which passages shared an embedding batch.
    for name in ("documents", "passages", "sentences"):
        x, y = (
            sorted(db.rows(getattr(db, name), "added >= 0", ["*"]), key=lambda r: r.get("id", r.get("key")))
            for db in (Milvus(one), Milvus(parts))
        )
        assert len(x) == len(y) > 0
        for r, s in zip(x, y):
            assert {k: v for k, v in r.items() if k not in ("sparse", "vector")} == {
                k: v for k, v in s.items() if k not in ("sparse", "vector")
            }
            if "vector" in r:
                assert float(np.dot(r["vector"], s["vector"])) > 0.97
    # Dense search agrees; Milvus keeps BM25 statistics per segment, so its lexical scores depend on how
    # rows were flushed (docs/scale-out.md).
    for cfg in (one, parts):
        index = open_index(cfg)
        found = index.rankings(embedder.embed(["How late was the ferry to Ostwick?"])[0], "ferry Ostwick", 3, None)
        assert index.store.passages([found.dense[0][0]])[found.dense[0][0]].document_id == "ferry-3.txt"
    with pytest.raises(IndexProblem):
        build_index(sample_config, embedder, part=(1, 2))  # the files index has one builder


def test_the_service_on_milvus(sample_config: Config, tmp_path, embedder) -> None:
    from fastapi.testclient import TestClient

    from qa.service import create_app

    cfg = sample_config.replace(milvus_uri=str(tmp_path / "milvus.db"), api_key="k")
    build_index(cfg, embedder)
    with TestClient(create_app(cfg, embedder)) as client:
        assert client.get("/readyz").json()["ready"]
        body = client.get("/api/ask", params={"q": IBM_QUESTION}).json()
        assert body["answers"] and body["index_version"] == 1
        saved = client.post(
            "/api/documents",
            headers={"Authorization": "Bearer k"},
            json={"id": "harbour", "title": "Harbour", "text": "The harbour at Quillport reopened on Monday."},
        )
        assert saved.status_code == 201 and saved.json()["index_version"] == 2
        assert client.get("/api/documents/harbour").json()["text"].startswith("The harbour")
        assert (cfg.corpus / "harbour.json").exists()
        assert client.delete("/api/documents/harbour", headers={"Authorization": "Bearer k"}).json()["index_version"] == 3
        assert client.get("/api/documents/harbour").status_code == 404 and not (cfg.corpus / "harbour.json").exists()
        assert client.get("/api/health").json()["documents"] == 1


def lexical_by_passage(cfg: Config, question: str) -> list[tuple[str, int, float]]:
    index = open_index(cfg)
    found = index.rankings(np.zeros(384, np.float32), question, 10, None).lexical
    rows = index.store.passages([pid for pid, _ in found])
    # Passages of equal score come in no defined order (the engines number passages differently).
    return sorted(((rows[pid].document_id, rows[pid].ordinal, round(score, 3)) for pid, score in found), key=lambda r: (-r[2], r[:2]))


def test_milvus_bm25_is_the_files_engines_and_its_term_counts_follow_changes(sample_config: Config, tmp_path, embedder) -> None:
    milvus = sample_config.replace(milvus_uri=str(tmp_path / "milvus.db"))
    for cfg in (sample_config, milvus):
        build_index(cfg, embedder)
    for question in (*QUESTIONS, "Bloomberg reported the servers"):
        assert lexical_by_passage(milvus, question) == lexical_by_passage(sample_config, question) != []
    # Term counts after an add, a replace and a delete equal those of one build of the result.
    harbour = Document("harbour", "Harbour", "The harbour at Quillport reopened. Inspur servers run the harbour.")
    build_index(milvus, embedder, upserts=[harbour], deletes=[])
    build_index(milvus, embedder, upserts=[Document("harbour", "Harbour", "The harbour at Quillport stays shut.")], deletes=[])
    write_article(sample_config.corpus, "ferry.txt", "Ferry late", "The ferry to Ostwick ran late on Monday. Inspur said nothing.")
    build_index(milvus, embedder)  # the corpus folder: harbour gone (not a file), ferry added
    once = milvus.replace(milvus_prefix="once")
    build_index(once, embedder)
    question = "Did the Inspur harbour ferry to Ostwick run late?"
    assert open_index(milvus).question_weights(question) == open_index(once).question_weights(question)
    # inspur, ferri, ostwick, late: "harbour" left with its article, and no passage says "run"
    assert len(open_index(milvus).question_weights(question)) == 4


def test_milvus_collections_made_with_another_layout_ask_for_a_new_prefix(sample_config: Config, tmp_path, embedder, monkeypatch) -> None:
    from qa.index.milvus import schema

    cfg = sample_config.replace(milvus_uri=str(tmp_path / "milvus.db"))
    with monkeypatch.context() as m:  # collections as an earlier release made them
        m.setattr(schema, "SCHEMA", schema.SCHEMA - 1)
        build_index(cfg, embedder)
    with pytest.raises(IndexProblem, match="have layout .*QA_MILVUS_PREFIX"):
        open_index(cfg)
    with pytest.raises(IndexProblem, match="have layout"):
        build_index(cfg, embedder)
    fresh = cfg.replace(milvus_prefix="qa2")
    build_index(fresh, embedder)
    assert Pipeline(fresh, embedder).ask(IBM_QUESTION).answers


@pytest.mark.parametrize("probe", [24, 1])
def test_milvus_reads_by_search_and_by_key_agree_with_the_files(sample_config: Config, tmp_path, embedder, monkeypatch, probe) -> None:
    """Milvus Lite reads passages and sentences through filtered searches, a server by primary key
    (SENTENCE_PROBE 1 makes every passage take the scanning fallback)."""
    from qa.index.milvus import read as milvus_read
    from qa.index.milvus.schema import Milvus

    monkeypatch.setattr(milvus_read, "SENTENCE_PROBE", probe)
    cfg = sample_config.replace(milvus_uri=str(tmp_path / "milvus.db"))
    build_index(sample_config, embedder)
    build_index(cfg, embedder)
    build_index(cfg, embedder, upserts=[Document("extra", "Extra", "One sentence here. Another one there. A third to end.")], deletes=[])
    build_index(
        sample_config, embedder, upserts=[Document("extra", "Extra", "One sentence here. Another one there. A third to end.")], deletes=[]
    )

    def read(cfg: Config) -> dict[tuple[str, int], tuple]:
        store = open_index(cfg).store
        ids = [i for d in store.documents(0, 100) for i in store.document_passage_ids(d["id"])]
        passages, sentences = store.passages(ids), store.sentences(ids)
        assert len(passages) == len(ids) and all(sentences.values())
        return {
            (p.document_id, p.ordinal): (p.start, p.end, p.text, p.title, [(s.start, s.end) for s in sentences[p.id]])
            for p in passages.values()
        }

    by_search = read(cfg)
    monkeypatch.setattr(Milvus, "lite", property(lambda self: False))
    assert read(cfg) == by_search == read(sample_config)
    assert sum(len(v[-1]) for v in by_search.values()) > len(by_search)  # passages of several sentences
