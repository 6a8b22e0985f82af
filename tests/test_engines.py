"""One conformance suite, two engines: the embedded files and Milvus Lite (`QA_MILVUS_URI=....db`).

The same questions give the same answers with the same offsets; incremental changes show up;
filters work; a build that dies midway leaves the previous version answering.
"""

from __future__ import annotations

import numpy as np
import pytest

from qa.config import Config
from qa.embedding import Embedder
from qa.index import IndexProblem, build_index, open_index
from qa.models import Document, Filters
from qa.pipeline import Pipeline
from tests.conftest import IBM_QUESTION, write_article

QUESTIONS = (IBM_QUESTION, "Which chips would Inspur use in its servers?", "What did Chinese banks use?")


@pytest.fixture(params=["files", "milvus"])
def engine(request, sample_config: Config, tmp_path) -> Config:
    if request.param == "milvus":
        return sample_config.replace(milvus_uri=str(tmp_path / "milvus.db"))
    return sample_config


def answers(cfg: Config, embedder: Embedder, question: str, filters: Filters | None = None) -> list[tuple]:
    result = Pipeline(cfg, embedder).ask(question, filters=filters)
    return [(a.text, a.document_id, a.start, a.end, a.document_start, a.sentence_start) for a in result.answers]


def test_both_engines_give_the_same_answers_with_the_same_offsets(sample_config: Config, tmp_path, embedder: Embedder) -> None:
    milvus = sample_config.replace(milvus_uri=str(tmp_path / "milvus.db"))
    build_index(sample_config, embedder)
    build_index(milvus, embedder)
    for question in QUESTIONS:
        assert answers(sample_config, embedder, question) == answers(milvus, embedder, question), question
    files_index, milvus_index = open_index(sample_config), open_index(milvus)
    assert files_index.store.counts() == milvus_index.store.counts()
    assert files_index.store.documents(0, 10) == milvus_index.store.documents(0, 10)
    doc_id = files_index.store.documents(0, 1)[0]["id"]
    assert files_index.store.document(doc_id) == milvus_index.store.document(doc_id)


def test_incremental_add_replace_delete(engine: Config, embedder: Embedder) -> None:
    first = build_index(engine, embedder)
    harbour = Document(
        "harbour",
        "Harbour reopens",
        "The harbour at Quillport reopened on Monday after a two-year rebuild.",
        date="2020-05-04",
        source="Local News",
    )
    added = build_index(engine, embedder, upserts=[harbour], deletes=[])
    assert added.version == first.version + 1 and added.added == 1
    assert Pipeline(engine, embedder).ask("When did the harbour at Quillport reopen?").passages[0].document_id == "harbour"
    changed = Document(
        "harbour",
        "Harbour stays shut",
        "The harbour at Quillport stays shut until the autumn storms pass.",
        date="2020-05-04",
        source="Local News",
    )
    summary = build_index(engine, embedder, upserts=[changed], deletes=[])
    assert summary.changed == 1
    assert "autumn" in open_index(engine).store.document("harbour")["text"]
    unchanged = build_index(engine, embedder, upserts=[changed], deletes=[])
    assert unchanged.version == summary.version and unchanged.unchanged == 1  # same content hash: nothing to do
    gone = build_index(engine, embedder, upserts=[], deletes=["harbour"])
    assert gone.removed == 1 and open_index(engine).store.document("harbour") is None
    assert open_index(engine).store.counts()["documents"] == 1


def test_filters(engine: Config, embedder: Embedder) -> None:
    build_index(engine, embedder)
    build_index(
        engine,
        embedder,
        deletes=[],
        upserts=[
            Document(
                "kites-2019", "Kite survey 2019", "Harlow counted 212 red kites in the 2019 survey week.", date="2019-03-01", source="Birds"
            ),
            Document(
                "kites-2021", "Kite survey 2021", "Harlow counted 340 red kites in the 2021 survey week.", date="2021-03-01", source="Birds"
            ),
        ],
    )
    pipeline = Pipeline(engine, embedder)
    question = "How many red kites did Harlow count?"
    by_date = pipeline.ask(question, filters=Filters(date_from="2020-01-01", date_to="2021-12-31"))
    assert {p.document_id for p in by_date.passages} == {"kites-2021"}
    by_source = pipeline.ask(question, filters=Filters(source="Birds"))
    assert {p.document_id for p in by_source.passages} == {"kites-2019", "kites-2021"}
    by_id = pipeline.ask(question, filters=Filters(document_id="kites-2019"))
    assert {p.document_id for p in by_id.passages} == {"kites-2019"}
    assert pipeline.ask(question, filters=Filters(source="Nobody")).passages == []


class Dying:
    """The embedder of a build that dies midway (as a kill would), after the old rows were marked."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder

    def __getattr__(self, name: str):
        return getattr(self._embedder, name)

    def embed_with_spans(self, *args, **kwargs):
        raise RuntimeError("killed")


def test_a_build_that_dies_leaves_the_previous_version_answering(engine: Config, embedder: Embedder) -> None:
    first = build_index(engine, embedder)
    before = answers(engine, embedder, IBM_QUESTION)
    replacement = Document("ibm-inspur-partnership.txt", "Replaced", "Nothing about servers is left in this article at all.")
    with pytest.raises(RuntimeError):
        build_index(engine, Dying(embedder), upserts=[replacement], deletes=[])  # type: ignore[arg-type]
    index = open_index(engine)
    assert index.version == first.version and index.store.counts()["documents"] == 1
    assert answers(engine, embedder, IBM_QUESTION) == before
    after = build_index(engine, embedder, upserts=[replacement], deletes=[])  # the next build completes
    assert after.version == first.version + 1 and open_index(engine).store.document(replacement.id)["title"] == "Replaced"


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
        found = index.candidates(embedder.embed(["How late was the ferry to Ostwick?"])[0], "ferry Ostwick", 3, None)
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
    found = index.candidates(np.zeros(384, np.float32), question, 10, None).lexical
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


def test_a_passage_without_terms_is_indexed_and_removed(engine: Config, embedder) -> None:
    build_index(engine, embedder)
    empty = Document("stop-words", "It", "And then it was so. Was it?")  # nothing BM25 indexes
    assert build_index(engine, embedder, upserts=[empty], deletes=[]).added == 1
    assert open_index(engine).store.document("stop-words") is not None
    assert Pipeline(engine, embedder).ask(IBM_QUESTION).answers
    assert build_index(engine, embedder, upserts=[], deletes=["stop-words"]).removed == 1


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
