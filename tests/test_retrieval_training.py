"""The retriever's training data (training/retrieval.py): its folds and its targets; and a question
encoder of its own (`QA_QUESTION_ENCODER=FOLDER`) beside the passages' model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qa.config import Config
from qa.embedding import Embedder, resolve_model
from tests.test_squad_reader import ARTICLES, QUESTIONS
from training.retrieval import RTQA_FUSION_FROM, RTQA_HELD_OUT_FROM, fold_of, load_fold, main
from training.squad_reader import calibration_fold

NEWS = [  # (date, evidence, question, answer)
    (
        "2020/03/06",
        "The ferry to Ostwick was cancelled for a week after the pier collapsed.",
        "Why was the ferry to Ostwick cancelled?",
        "the pier collapsed",
    ),
    (
        "2021/07/09",
        "Quillport's council voted to rename the harbour road after Edith Varley.",
        "Who is Quillport's harbour road named after?",
        "Edith Varley",
    ),
    ("2021/09/03", "A storm flooded the beech woods north of Harlow.", "What did the storm flood?", "the beech woods north of Harlow"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("qe-data")
    squad, rtqa = root / "squad11_train", root / "realtimeqa_2020_2021"
    squad.mkdir()
    rtqa.mkdir()
    paragraphs, questions = [], []
    for a, (title, texts) in enumerate(ARTICLES.items()):
        paragraphs += [{"id": f"t-{a}-{p}", "title": title, "context": text} for p, text in enumerate(texts)]
    for k, (title, p, question, answer) in enumerate(QUESTIONS):
        a, context = list(ARTICLES).index(title), ARTICLES[title][p]
        answers = [{"text": answer, "answer_start": context.index(answer)}]
        questions.append({"id": f"t-{a}-{p}-q{k}", "question": question, "context_id": f"t-{a}-{p}", "answers": answers})
    (squad / "paragraphs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in paragraphs))
    (squad / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in questions))
    news_p, news_q = [], []
    for k, (date, evidence, question, answer) in enumerate(NEWS):
        qid = date.replace("/", "") + f"_{k}"
        news_p.append({"id": f"rtqa-ev-{qid}", "title": f"news quiz {date}", "context": evidence, "question_id": qid})
        answers = [{"text": answer, "answer_start": evidence.index(answer)}]
        news_q.append({"id": qid, "question": question, "answers": answers, "context_id": f"rtqa-ev-{qid}", "date": date})
    news_q.append({"id": "20200306_9", "question": "Which city hosted the fair?", "answers": [], "context_id": None, "date": "2020/03/06"})
    (rtqa / "paragraphs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in news_p))
    (rtqa / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in news_q))
    return root


def test_news_is_split_by_date_and_squad_by_article() -> None:
    assert RTQA_FUSION_FROM < RTQA_HELD_OUT_FROM
    assert fold_of("realtimeqa_2020_2021", {"id": "x"}, "2021/06/25") == "train"
    assert fold_of("realtimeqa_2020_2021", {"id": "x"}, "2021/07/02") == "fusion"
    assert fold_of("realtimeqa_2020_2021", {"id": "x"}, "2021/12/31") == "held-out"
    held = next(f"Article {i}" for i in range(1000) if calibration_fold(f"Article {i}"))
    assert fold_of("squad11_train", {"id": "x", "title": held}, None) == "fusion"
    assert fold_of("squad11_train", {"id": "x", "title": "Kites_of_Harlow"}, None) == "train"


def test_folds_hold_only_their_questions(data: Path) -> None:
    paragraphs, questions = load_fold(data, "train")
    assert len(questions) == len(QUESTIONS) + 1  # the SQuAD questions and the oldest news question
    assert {p["id"] for p in paragraphs} >= {q["context_id"] for q in questions}
    _, fusion = load_fold(data, "fusion")
    assert [q["question"] for q in fusion] == [NEWS[1][2]]
    assert all(q["date"] < RTQA_HELD_OUT_FROM for q in fusion)


def test_targets_are_the_training_folds_passages_and_sentences(data: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    main(["--data", str(data), "--work", str(work), "prepare"])
    targets = np.load(work / "targets.npz")
    rows = json.loads((work / "questions.json").read_text())
    assert len(rows) == len(QUESTIONS) + 1
    docs = load_fold(data, "train")[0]
    assert targets["passages"].shape == (len(docs), 384)  # one passage per short paragraph
    assert np.allclose(np.linalg.norm(targets["sentences"], axis=1), 1, atol=1e-4)
    assert len(targets["sentences"]) == len(targets["s_passage"]) > len(docs)
    answers = [a for *_, a in QUESTIONS] + [NEWS[0][3]]
    for r, answer in zip(rows, answers):
        context = docs[r["doc"]]["context"]
        assert context[r["answer"] :].startswith(answer)
        # Exactly one of the paragraph's sentences holds the answer's offset, and it holds the answer.
        mine = np.flatnonzero(targets["p_doc"][targets["s_passage"]] == r["doc"])
        holding = [k for k in mine if targets["s_start"][k] <= r["answer"] < targets["s_end"][k]]
        assert len(holding) == 1
        assert answer in context[targets["s_start"][holding[0]] : targets["s_end"][holding[0]]]


def test_questions_can_go_through_a_question_encoder_of_their_own() -> None:
    cache = Config.load().cache  # the machine's exported models, as the service uses them
    question = "Who leads the survey in Harlow?"
    folder = resolve_model("all-MiniLM-L6-v2-qa", cache)  # any model folder of the same dimension
    paired = Embedder("all-MiniLM-L6-v2", "onnx", cache, question_encoder=folder)
    plain = Embedder("all-MiniLM-L6-v2", "onnx", cache, question_encoder="model")
    assert np.allclose(paired.embed([question]), plain.embed([question]), atol=1e-5)  # passages: the model's
    assert np.allclose(plain.embed_questions([question]), plain.embed([question]), atol=1e-5)
    q_paired = paired.embed_questions([question])
    assert q_paired.shape == (1, 384) and abs(float(np.linalg.norm(q_paired)) - 1) < 1e-4
    assert not np.allclose(q_paired, plain.embed_questions([question]), atol=1e-4)  # a different encoder
    with pytest.raises(ValueError, match="question encoder"):
        Embedder("all-MiniLM-L6-v2", "onnx", cache, question_encoder="/no/such/folder").question_path
    with pytest.raises(ValueError, match="question encoder"):
        Embedder("all-MiniLM-L6-v2", "onnx", cache, question_encoder="tuned").question_path  # removed
