"""One answer from many reports: occurrences of the same answer in several passages and articles
merged into one answer that lists its sources (qa/readers/aggregate.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from qa.index import build_index, open_index
from qa.models import Answer
from qa.pipeline import Pipeline
from qa.readers.aggregate import aggregate, same_answer
from qa.service import create_app
from tests.conftest import HARBOUR_QUESTION, write_article, write_harbour_reports, write_wire_copies


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("Sudan", "the Sudan", True),
        ("Rometty", "Ginni Rometty", True),
        ("Arvind Krishna", "Krishna", True),
        ("Ginni Rometty", "Rometty.", True),
        ("president", "president Biden", False),  # a name gains words, a common noun does not
        ("Rometty", "IBM chief executive Ginni Rometty", False),  # more than two words added
        ("Paris", "Lyon", False),
        ("", "Paris", False),
    ],
)
def test_the_same_answer_is_the_same_text_or_a_name_with_words_added(a, b, same):
    assert same_answer(a, b) is same and same_answer(b, a) is same


def answer(text: str, doc: str, score: float, passage: int) -> Answer:
    return Answer(
        text=text,
        score=score,
        start=0,
        end=len(text),
        document_start=0,
        document_end=len(text),
        sentence=text,
        sentence_start=0,
        passage_id=passage,
        document_id=doc,
        title=doc.title(),
    )


def test_occurrences_merge_into_the_best_one_with_every_source_and_copies_count_once():
    found = [
        answer("Rometty", "a", 0.6, 1),
        answer("Krishna", "b", 0.5, 2),
        answer("Ginni Rometty", "c", 0.4, 3),
        answer("Rometty", "a2", 0.3, 4),
    ]
    merged = aggregate(found, cluster_of=lambda d: d.rstrip("2"))  # a2 is a copy of a
    assert [m.text for m in merged] == ["Rometty", "Krishna"]
    top = merged[0]
    assert (top.score, top.document_id, top.passage_id) == (0.6, "a", 1)  # the best occurrence's fields
    assert [s.document_id for s in top.sources] == ["a", "c", "a2"] and top.sources[1].text == "Ginni Rometty"
    assert top.articles == 2 and top.support == pytest.approx(1 - 0.4 * 0.6)  # a and its copy count once
    by_support = aggregate([answer("Krishna", "b", 0.5, 2), *found[:1], *found[2:]], by_support=True)
    assert by_support[0].text == "Rometty"  # 0.6, 0.4 and 0.3 in three articles outweigh one 0.5


def test_an_answer_in_three_articles_is_one_answer_with_three_sources(config, embedder):
    write_harbour_reports(config.corpus)
    write_article(config.corpus, "other.txt", "Ferries", "The ferry to Ostwick was late again on Tuesday, its captain said.")
    build_index(config, embedder)
    result = Pipeline(config, embedder).ask(HARBOUR_QUESTION)
    texts = [a.text for a in result.answers]
    assert texts and "Brenning" in texts[0] and len(texts) == len(set(texts))
    top = result.answers[0]
    assert top.articles == 3 and {s.document_id for s in top.sources} == {"wire.txt", "daily.txt", "weekly.txt"}
    store = open_index(config).store
    assert all(store.document(s.document_id)["text"][s.document_start : s.document_end] == s.text for s in top.sources)

    separate = Pipeline(config.replace(aggregate="off"), embedder).ask(HARBOUR_QUESTION)
    assert [a.text for a in separate.answers].count(top.text) >= 2 and separate.answers[0].sources == []  # the same answer twice


def test_copies_of_one_story_count_as_one_article(config, embedder):
    write_wire_copies(config.corpus)
    write_article(config.corpus, "local.txt", "Quillport's harbour", "Alva Brenning, the harbour master of Quillport, opened the quay.")
    build_index(config, embedder)
    top = Pipeline(config, embedder).ask(HARBOUR_QUESTION).answers[0]
    assert "Brenning" in top.text and len(top.sources) == 3
    assert top.articles == 2  # the wire story and its copy are one report


def test_copies_of_one_story_take_one_passage_slot_that_lists_them(config, embedder):
    write_wire_copies(config.corpus)
    write_article(config.corpus, "ferry.txt", "Ferries", "The ferry to Ostwick was late again on Tuesday, its captain said.")
    build_index(config, embedder)
    passages = Pipeline(config, embedder).ask(HARBOUR_QUESTION, top_k=5).passages
    harbour = [p for p in passages if p.document_id.startswith("wire")]
    assert len(harbour) == 1 and len(harbour[0].copies) == 1
    assert {harbour[0].document_id, *harbour[0].copies} == {"wire.txt", "wire-copy.txt"}
    assert any(p.document_id == "ferry.txt" and p.copies == [] for p in passages)
    with TestClient(create_app(config, embedder)) as client:  # the web page says so
        page = client.get("/", params={"q": HARBOUR_QUESTION}).text
    assert page.count("also in 1 more article<") == 1
