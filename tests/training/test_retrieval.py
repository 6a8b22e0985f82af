"""The retriever's training data (training/retrieval.py): its folds, and its targets computed by the
index's own code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.training.fixtures import NEWS, QUESTIONS
from training.common import calibration_fold
from training.retrieval import RTQA_FUSION_FROM, RTQA_HELD_OUT_FROM, fold_of, load_fold, main


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
