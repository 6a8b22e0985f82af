"""Extractive answers: traceable offsets, the sample question, no-answer, and `qa eval` metrics."""

import json
import subprocess
import sys

import pytest

from qa.evaluate import evaluate
from qa.models import Filters
from qa.scoring import exact_match, f1_score, normalize_answer
from tests.conftest import IBM_QUESTION, ROOT, write_article

REASONS = {
    "lure": "lure away customers",
    "demand": "analyse larger data sets",
    "revenue": "revive declining revenue",
}


def test_ibm_question_gives_the_reasons_not_the_headline(sample_pipeline, sample_index, embedder):
    from qa.pipeline import Pipeline

    result = sample_pipeline.ask(IBM_QUESTION)
    assert not result.no_answer
    texts = [a.text for a in result.answers]
    assert REASONS["lure"] in texts[0]
    # The sentence reader's reason clauses (what a withheld span head falls back to) find several.
    clauses = [a.text for a in Pipeline(sample_index.replace(reader="sentence"), embedder).ask(IBM_QUESTION).answers]
    found = {k for k, phrase in REASONS.items() if any(phrase in t for t in clauses)}
    assert len(found) >= 2, clauses
    headline = "IBM enters into partnership with China’s Inspur Group Ltd"
    assert all(headline not in a.text for a in result.answers)
    assert all(0.0 <= a.score <= 1.0 for a in result.answers)
    assert [a.score for a in result.answers] == sorted((a.score for a in result.answers), reverse=True)


def test_reason_clauses_leave_the_attribution_out(sample_pipeline):
    from qa.readers.sentence import answer_span

    texts = [a.text for a in sample_pipeline.ask(IBM_QUESTION).answers]
    assert texts and not any(t.endswith(("reported", "said in an email")) for t in texts), texts
    kept = "Ships waited because the port, which he said was late, closed on Monday, officials said."
    start, end = answer_span("Why did ships wait?", kept, set(), why=True)
    assert kept[start:end] == "because the port, which he said was late, closed on Monday"


def test_answer_offsets_point_at_the_text(sample_pipeline, sample_index):
    from qa.index import open_index

    result = sample_pipeline.ask("What chips would Inspur use?")
    assert result.answers
    index = open_index(sample_index)
    for a in result.answers:
        passage = next(p for p in result.passages if p.id == a.passage_id) if any(p.id == a.passage_id for p in result.passages) else None
        doc = index.store.document(a.document_id)
        assert doc["text"][a.document_start : a.document_end] == a.text
        row = index.store.passages([a.passage_id])[a.passage_id]
        assert row.text[a.start : a.end] == a.text
        assert row.text[a.sentence_start : a.sentence_start + len(a.sentence)] == a.sentence
        assert a.sentence_start <= a.start and a.end <= a.sentence_start + len(a.sentence)
        if passage is not None:
            assert passage.text[a.start : a.end] == a.text
    # The article names both: "IBM's Power8 chips" and "IBM's Powerserver chips".
    assert "Power" in result.answers[0].text and "chips" in result.answers[0].sentence
    index.close()


def test_a_likely_answer_lists_its_passage_first(config, embedder):
    from qa.index import build_index
    from qa.pipeline import Pipeline

    write_article(
        config.corpus,
        "bridge.txt",
        "The Eldham bridge",
        "The Eldham bridge, a steel arch over the river Wend, was designed by engineers from Oslo and painted green.",
        "The Eldham bridge carries two lanes of traffic and a footpath across the river Wend.",
    )
    write_article(
        config.corpus,
        "opening.txt",
        "Traffic at last",
        "Cars first crossed the new crossing at Eldham on 3 March 2019, after four years of work on the river banks.",
        "The council said the opening ceremony was attended by 2,000 people.",
    )
    write_article(config.corpus, "ferry.txt", "Ferry timetable", "The ferry to Eldham will run every hour during the festival weekend.")
    build_index(config, embedder)
    question = "On what date was the Eldham bridge opened?"

    def order(threshold: float) -> tuple[list[int], list]:
        result = Pipeline(config.replace(answer_passage_first=threshold), embedder).ask(question)
        return [p.id for p in result.passages], result.answers

    retrieved, answers = order(1.01)  # never: the retrieval order
    assert "3 March 2019" in answers[0].text and answers[0].document_id == "opening.txt"
    assert retrieved[0] != answers[0].passage_id, "retrieval must rank the bridge's own article first for this test"
    moved, again = order(answers[0].score - 0.1)
    assert again[0].passage_id == answers[0].passage_id
    assert moved[0] == answers[0].passage_id and moved[1:] == [p for p in retrieved if p != moved[0]][: len(moved) - 1]
    assert order(answers[0].score + 0.01)[0] == retrieved  # a less likely answer leaves the order alone


def test_unrelated_question_has_no_answer(sample_pipeline):
    result = sample_pipeline.ask("What is the capital of France?")
    assert result.no_answer and result.answers == []
    assert result.passages  # passages are still shown


def test_filters_restrict_retrieval(sample_pipeline):
    assert sample_pipeline.ask(IBM_QUESTION, filters=Filters(document_id="nope")).passages == []
    assert sample_pipeline.ask(IBM_QUESTION, filters=Filters(date_from="2015-01-01")).passages == []
    hits = sample_pipeline.ask(IBM_QUESTION, filters=Filters(date_from="2014-08-01", date_to="2014-08-31")).passages
    assert hits and all(p.date == "2014-08-23" for p in hits)


def test_ask_json_is_the_api_object(sample_index):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "qa.cli",
            "ask",
            IBM_QUESTION,
            "--json",
            "--top-k",
            "3",
            "--corpus",
            str(sample_index.corpus),
            "--index",
            str(sample_index.index),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    obj = json.loads(run.stdout)
    assert set(obj) >= {"question", "answers", "passages", "no_answer", "took_ms"}
    assert obj["question"] == IBM_QUESTION and len(obj["passages"]) == 3
    assert set(obj["answers"][0]) >= {
        "text",
        "score",
        "start",
        "end",
        "document_start",
        "document_end",
        "sentence",
        "passage_id",
        "document_id",
        "title",
        "date",
        "url",
    }


@pytest.mark.parametrize(
    "prediction, gold, em, f1",
    [
        ("The Denver Broncos", ["Denver Broncos"], 1.0, 1.0),
        ("Broncos", ["Denver Broncos", "Broncos!"], 1.0, 1.0),
        ("Denver", ["Denver Broncos"], 0.0, 2 / 3),
        ("the Carolina Panthers team", ["Panthers"], 0.0, 0.5),
        ("", ["x"], 0.0, 0.0),
    ],
)
def test_exact_match_and_f1_score_as_squad_does(prediction, gold, em, f1):
    assert exact_match(prediction, gold) == em
    assert f1_score(prediction, gold) == pytest.approx(f1)
    assert normalize_answer("  The  cat, a hat!") == "cat hat"


def test_eval_on_a_fixture_set(tmp_path, config):
    paragraphs = [
        {
            "id": "p-volcano",
            "title": "Volcano",
            "context": "Mount Etna erupted on Tuesday, sending ash 5 kilometres into the sky above Sicily.",
        },
        {"id": "p-chess", "title": "Chess", "context": "The chess championship in Oslo was won by a 19-year-old grandmaster from Chennai."},
        {"id": "p-bakery", "title": "Bakery", "context": "The oldest bakery in Lyon closed after 140 years because rents tripled."},
    ]
    questions = [
        {
            "id": "q1",
            "question": "Which volcano erupted on Tuesday in Sicily?",
            "answers": [{"text": "Mount Etna", "answer_start": 0}],
            "context_id": "p-volcano",
        },
        {
            "id": "q2",
            "question": "Where was the chess championship held?",
            "answers": [{"text": "Oslo", "answer_start": 32}],
            "context_id": "p-chess",
        },
        # its gold paragraph is not in the set, so it can never be retrieved
        {
            "id": "q3",
            "question": "Why did the oldest bakery in Lyon close?",
            "answers": [{"text": "rents tripled", "answer_start": 0}],
            "context_id": "p-missing",
        },
    ]
    pp, qp = tmp_path / "paragraphs.jsonl", tmp_path / "questions.jsonl"
    pp.write_text("".join(json.dumps(p) + "\n" for p in paragraphs))
    qp.write_text("".join(json.dumps(q) + "\n" for q in questions))
    m = evaluate(config, pp, qp, mode="open", show_progress=False)
    assert m["questions"] == 3
    assert m["recall@1"] == m["recall@5"] == m["recall@20"] == m["mrr"] == round(2 / 3, 4)
    assert m["sentence_accuracy"] == 1.0  # one-sentence paragraphs: the right passage gives the right sentence
    assert 0.0 <= m["em"] <= m["f1"] <= 1.0
    assert m["latency_ms_p50"] > 0 and m["latency_ms_p95"] >= m["latency_ms_p50"]
    gold = evaluate(config, pp, qp, mode="gold", limit=2, show_progress=False)
    assert gold["questions"] == 2 and gold["recall@1"] == 1.0
    # The private index is reused by the next run; one left by other model weights is started afresh.
    from qa.evaluate import eval_config
    from qa.index import current_version, version_dir

    private = eval_config(config, pp).index
    manifest = version_dir(private, current_version(private)) / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "model_version": "0" * 16}))
    again = evaluate(config, pp, qp, mode="open", show_progress=False)
    assert again["recall@1"] == m["recall@1"]
    assert json.loads((version_dir(private, current_version(private)) / "manifest.json").read_text())["model_version"] != "0" * 16


def test_qa_ask_as_of_leaves_out_later_articles(sample_index):
    from click.testing import CliRunner

    from qa.cli import main

    where = ["--corpus", str(sample_index.corpus), "--index", str(sample_index.index)]
    runner = CliRunner()
    before = runner.invoke(main, ["ask", IBM_QUESTION, "--json", "--as-of", "2014-08-22", *where])
    assert before.exit_code == 0, before.output
    assert json.loads(before.stdout)["passages"] == []  # the only article is dated 2014-08-23
    on_the_day = runner.invoke(main, ["ask", IBM_QUESTION, "--json", "--as-of", "2014-08-23", *where])
    assert on_the_day.exit_code == 0 and json.loads(on_the_day.stdout)["passages"]
    bad = runner.invoke(main, ["ask", IBM_QUESTION, "--as-of", "2014-08-32", *where])
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output
