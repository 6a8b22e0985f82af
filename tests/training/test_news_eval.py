"""training/news_eval.py: the news evaluation's corpus, dates, splits, parts and abstention curve,
on a tiny data folder laid out as ../shared/data is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.news_eval import THRESHOLDS, corpus, main, news_questions

#: (quiz date, evidence, question, answer): one post held by two people, a year and a half apart.
WEEKS = [
    (
        "2020/03/06",
        "The council named Ginna Rowe harbour master of Quillport on Friday.",
        "Who was named harbour master of Quillport this week?",
        "Ginna Rowe",
    ),
    (
        "2021/09/03",
        "Tamsin Vell was named harbour master of Quillport this week by the council.",
        "Who was named harbour master of Quillport this week?",
        "Tamsin Vell",
    ),
]


def write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    paragraphs, questions = [], []
    for k, (date, evidence, question, answer) in enumerate(WEEKS):
        qid = date.replace("/", "") + f"_{k}"
        paragraphs.append({"id": f"rtqa-ev-{qid}", "title": f"news quiz {date}", "context": evidence, "question_id": qid})
        questions.append(
            {
                "id": qid,
                "question": question,
                "answers": [{"text": answer, "answer_start": evidence.index(answer)}],
                "context_id": f"rtqa-ev-{qid}",
                "date": date,
                "answer_in_context": True,
            }
        )
    questions.append(
        {"id": "20200306_9", "question": "Which city hosted the fair?", "answers": [], "context_id": None, "date": "2020/03/06"}
    )
    write(root / "realtimeqa_2020_2021" / "paragraphs.jsonl", paragraphs)
    write(root / "realtimeqa_2020_2021" / "questions.jsonl", questions)
    ferry = "The ferry to Ostwick sails twice a day from Quillport, and more often in summer."
    write(
        root / "news_2022" / "articles-00.jsonl",
        [{"id": "n1", "url": "https://example.com/2022/02/05/ferry/", "title": "Ferries", "text": ferry}],
    )
    write(
        root / "news_2022" / "articles-01.jsonl",
        [{"id": "n2", "url": "https://example.com/ferry-times", "title": "Ferry times", "text": ferry}],
    )
    write(
        root / "bbc_news" / "articles.jsonl",
        [{"id": "b1", "title": "Kites", "text": "Harlow counted 340 red kites in 2021, the survey said."}],
    )
    return root


def test_the_corpus_dates_evidence_by_quiz_date_and_pages_by_url_and_the_newest_weeks_are_held_out(data):
    records = {r["id"]: r for r in corpus(data)}
    assert records["rtqa-ev-20200306_0"]["date"] == "2020-03-06"
    assert (records["n1"]["date"], records["n2"]["date"], records["b1"]["date"]) == ("2022-02-05", None, None)
    assert [(q["id"], q["as_of"]) for q in news_questions(data, "tune")] == [("20200306_0", "2020-03-06")]
    assert [q["id"] for q in news_questions(data, "held-out")] == ["20210903_1"]


def test_asked_as_of_its_week_a_question_gets_that_weeks_answer_and_the_report_has_every_part(data, tmp_path, capsys):
    out = tmp_path / "report.json"
    main(
        [
            "--data",
            str(data),
            "--work",
            str(tmp_path / "work"),
            "--split",
            "tune",
            "--no-squad",
            "--parts",
            "all,-as_of",
            "--json",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    assert report["news"]["all"]["recall@1"] == 1.0 and report["news"]["all"]["temporal"] == 1
    # Without as_of, the other holder's report (2021), worded as the question is, is in the index and
    # wins. (Not by the date prior: asked today, both weeks are years old, and both priors round to 0.)
    assert report["news"]["-as_of"]["recall@1"] == 0.0
    curve = report["abstention"]
    assert [p["threshold"] for p in curve] == list(THRESHOLDS)
    withheld = [p["withheld_without_evidence"] for p in curve]
    f1 = [p["answerable_f1"] for p in curve]
    assert withheld == sorted(withheld) and f1 == sorted(f1, reverse=True)
