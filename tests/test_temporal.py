"""Questions asked relative to a day (qa/temporal.py): their intent, the date prior on passages, the
answer's date (its newest source's) and the timeline when answers differ over time."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from qa.index import build_index
from qa.models import Filters
from qa.pipeline import Pipeline, timeline
from qa.readers.aggregate import aggregate
from qa.service import create_app
from qa.temporal import date_prior, temporal_intent
from tests.conftest import write_article
from tests.test_aggregation import answer


@pytest.mark.parametrize(
    ("question", "kind", "phrase"),
    [
        ("Which fast food chain filed for bankruptcy this week?", "recent", "this week"),
        ("Who is currently the chief executive of IBM?", "recent", "currently"),
        ("What did the Fed decide last month?", "recent", "last month"),
        ("Which company announced yesterday that it would cut jobs?", "recent", "yesterday"),
        ("Who won the World Cup in 2014?", "period", "in 2014"),
        ("What happened in March 2022 in Ukraine?", "period", "in March 2022"),
        ("Why did IBM partner with Inspur?", None, None),
        ("Who may be the next president?", None, None),  # "may" is not a date here
        ("How many seconds are there in a minute?", None, None),
    ],
)
def test_a_question_says_when_only_with_words_of_time(question, kind, phrase):
    intent = temporal_intent(question, "2021-08-06")
    assert (intent.kind if intent else None) == kind
    if intent:
        assert intent.phrase == phrase and intent.reference == "2021-08-06"


def test_periods_span_their_year_or_month_and_the_prior_is_soft():
    year = temporal_intent("Who won the World Cup in 2014?", "2021-08-06")
    assert (year.start, year.end) == ("2014-01-01", "2014-12-31")
    month = temporal_intent("What happened in February 2020 in Wuhan?", "2021-08-06")
    assert (month.start, month.end) == ("2020-02-01", "2020-02-29")
    assert date_prior(year, "2014-06-30", 30) == 1.0
    assert date_prior(year, "2015-01-30", 30) == pytest.approx(0.5)  # a month after the period: half
    assert date_prior(year, None, 30) == 0.0  # undated: cannot show it is in the period
    recent = temporal_intent("Who leads it now?", "2021-08-06")
    assert date_prior(recent, "2021-08-06", 30) == 1.0 > date_prior(recent, "2021-07-06", 30) > date_prior(recent, "2020-08-06", 30)


def test_a_merged_answer_is_dated_by_its_newest_source_and_a_timeline_lists_answers_newest_first():
    old = answer("Ginna Rowe", "a", 0.7, 1).model_copy(update={"date": "2014-08-23"})
    again = answer("Rowe", "b", 0.4, 2).model_copy(update={"date": "2016-01-05"})
    new = answer("Tamsin Vell", "c", 0.6, 3).model_copy(update={"date": "2020-04-06"})
    merged = aggregate([old, new, again])
    assert [(m.text, m.date) for m in merged] == [("Ginna Rowe", "2016-01-05"), ("Tamsin Vell", "2020-04-06")]
    assert [(t.date, t.text) for t in timeline(merged)] == [("2020-04-06", "Tamsin Vell"), ("2016-01-05", "Ginna Rowe")]
    assert timeline([old, answer("Rowe", "b", 0.4, 2).model_copy(update={"date": "2020-01-01"})]) == []  # one answer: no timeline
    assert timeline([old, new.model_copy(update={"date": "2014-08-23"})]) == []  # one date: no timeline


QUESTION_NOW = "Who is the harbour master of Quillport now?"


@pytest.fixture
def succession(config, embedder):
    """Two dated reports of who holds one post, six years apart, and an undated one beside them."""
    write_article(
        config.corpus,
        "harbour-2014.txt",
        "Quillport names a harbour master",
        "The council named Ginna Rowe harbour master of Quillport after a vote on Friday.",
        date="2014-08-23",
    )
    write_article(
        config.corpus,
        "harbour-2020.txt",
        "A new harbour master for Quillport",
        "Tamsin Vell is the new harbour master of Quillport, the council said on Monday.",
        date="2020-04-06",
    )
    write_article(config.corpus, "ferries.txt", "Ferries", "The ferry to Ostwick sails twice a day from the harbour of Quillport.")
    cfg = config.replace(answer_threshold=0.0)  # every answer the reader finds, so both holders are seen
    build_index(cfg, embedder)
    return cfg


def test_the_newer_report_leads_a_question_about_now_and_the_older_one_a_question_about_its_year(succession, embedder):
    pipeline = Pipeline(succession, embedder)
    now = pipeline.ask(QUESTION_NOW)
    assert now.temporal.kind == "recent"
    assert now.passages[0].document_id == "harbour-2020.txt" and now.answers[0].text == "Tamsin Vell"
    assert now.timeline[0].date == "2020-04-06" and "2014-08-23" in [t.date for t in now.timeline]
    then = pipeline.ask("Who was named harbour master of Quillport in 2014?")
    assert (then.temporal.start, then.temporal.end) == ("2014-01-01", "2014-12-31")
    assert then.passages[0].document_id == "harbour-2014.txt" and then.answers[0].text == "Ginna Rowe"
    plain = Pipeline(succession.replace(recency_weight=0.0), embedder).ask(QUESTION_NOW)
    assert plain.temporal is None  # the prior switched off: no intent read


def test_as_of_a_day_before_the_newer_report_the_older_holder_is_the_answer(succession, embedder):
    result = Pipeline(succession, embedder).ask(QUESTION_NOW, filters=Filters(as_of="2015-01-01"))
    assert result.temporal.reference == "2015-01-01"
    assert "harbour-2020.txt" not in {p.document_id for p in result.passages}
    assert result.answers[0].text == "Ginna Rowe" and result.timeline == []


def test_the_api_carries_the_intent_the_timeline_and_the_web_page_shows_it(succession):
    client = TestClient(create_app(succession))
    body = client.post("/api/ask", json={"question": QUESTION_NOW}).json()
    assert body["temporal"]["kind"] == "recent" and body["answers"][0]["date"] == "2020-04-06"
    assert body["timeline"][0] == {"date": "2020-04-06", "text": "Tamsin Vell", "score": body["answers"][0]["score"]}
    page = client.get("/", params={"q": QUESTION_NOW}).text
    assert 'class="timeline"' in page and "2020-04-06</time>: <strong>Tamsin Vell</strong>" in page
    assert "newer reports weigh more" in page
