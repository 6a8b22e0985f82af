"""One conformance suite, two engines: the embedded files and Milvus Lite (`QA_MILVUS_URI=....db`).

The same questions give the same answers with the same offsets; incremental changes show up;
filters work; a build that dies midway leaves the previous version answering.
"""

from __future__ import annotations

import pytest

from qa.config import Config
from qa.embedding import Embedder
from qa.index import build_index, open_index
from qa.models import Document, Filters
from qa.pipeline import Pipeline
from tests.conftest import IBM_QUESTION, SAMPLE_QUESTIONS as QUESTIONS, answer_spans as answers




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


def test_filters_by_document_source_and_date_narrow_every_ranking(engine: Config, embedder: Embedder) -> None:
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


def test_a_passage_without_terms_is_indexed_and_removed(engine: Config, embedder) -> None:
    build_index(engine, embedder)
    empty = Document("stop-words", "It", "And then it was so. Was it?")  # nothing BM25 indexes
    assert build_index(engine, embedder, upserts=[empty], deletes=[]).added == 1
    assert open_index(engine).store.document("stop-words") is not None
    assert Pipeline(engine, embedder).ask(IBM_QUESTION).answers
    assert build_index(engine, embedder, upserts=[], deletes=["stop-words"]).removed == 1


def test_as_of_leaves_out_later_articles_and_keeps_undated_ones(engine: Config, embedder: Embedder) -> None:
    kites = [
        Document("kites-2019", "Kite survey 2019", "Harlow counted 212 red kites in the 2019 survey week.", date="2019-03-01"),
        Document("kites-2021", "Kite survey 2021", "Harlow counted 340 red kites in the 2021 survey week.", date="2021-03-01"),
        Document("kites-undated", "Kite survey", "Harlow counted red kites in the survey week, as every year."),
    ]
    build_index(engine, embedder, upserts=kites, deletes=[])
    pipeline = Pipeline(engine, embedder)
    question = "How many red kites did Harlow count?"
    found = {p.document_id for p in pipeline.ask(question, top_k=10, filters=Filters(as_of="2020-06-30")).passages}
    assert "kites-2019" in found and "kites-undated" in found and "kites-2021" not in found
    on_the_day = {p.document_id for p in pipeline.ask(question, top_k=10, filters=Filters(as_of="2021-03-01")).passages}
    assert {"kites-2019", "kites-2021", "kites-undated"} <= on_the_day
    # date_to, unlike as_of, drops the undated article
    assert "kites-undated" not in {p.document_id for p in pipeline.ask(question, top_k=10, filters=Filters(date_to="2021-12-31")).passages}
