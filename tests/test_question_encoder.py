"""The question encoder (training/question_encoder.py, qa.embedding): its folds, its targets, a run
that resumes to the same weights as an unbroken one, and the shipped weights assembled at load time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qa.config import Config
from qa.embedding import QUESTION_FILE, RETRIEVER_WEIGHTS, Embedder, resolve_model, tuned_question_encoder
from tests.test_squad_reader import ARTICLES, QUESTIONS
from training.question_encoder import RTQA_FUSION_FROM, RTQA_HELD_OUT_FROM, fold_of, load_fold, main, positives
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


def test_targets_resume_and_shipping(data: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    work = tmp_path / "work"
    main(["--data", str(data), "--work", str(work), "prepare"])
    targets = np.load(work / "targets.npz")
    rows = json.loads((work / "questions.json").read_text())
    assert len(rows) == len(QUESTIONS) + 1
    docs = load_fold(data, "train")[0]
    assert targets["passages"].shape == (len(docs), 384)  # one passage per short paragraph
    assert np.allclose(np.linalg.norm(targets["sentences"], axis=1), 1, atol=1e-4)
    pos_p, pos_s = positives(targets, rows)
    answers = [a for *_, a in QUESTIONS] + [NEWS[0][3]]
    for r, pp, ps, answer in zip(rows, pos_p, pos_s, answers):
        assert set(targets["p_doc"][pp]) == {r["doc"]}
        assert len(ps) == 1  # the one sentence holding the answer
        sentence = docs[r["doc"]]["context"][targets["s_start"][ps[0]] : targets["s_end"][ps[0]]]
        assert answer in sentence

    def train(out: Path, *extra: str) -> None:
        args = ["--epochs", "2", "--batch", "4", "--threads", "1", "--precision", "fp32", "--checkpoint-every", "1", *extra]
        main(["--data", str(data), "--work", str(work), "train", "--out", str(out), *args])

    train(tmp_path / "w1")  # unbroken: 2 epochs of 3 batches
    for ckpt in work.glob("checkpoint-*.pt"):
        ckpt.unlink()
    train(tmp_path / "w2", "--stop-after", "2")
    assert not (tmp_path / "w2" / QUESTION_FILE).exists()
    train(tmp_path / "w2")  # resumed from step 2
    one, two = load_file(str(tmp_path / "w1" / QUESTION_FILE)), load_file(str(tmp_path / "w2" / QUESTION_FILE))
    assert one.keys() == two.keys() and all(k.startswith("encoder.layer.") for k in one)
    assert all(torch.equal(one[k], two[k]) for k in one)
    meta = json.loads((tmp_path / "w1" / "question_encoder.json").read_text())
    assert meta["train_questions"] == len(rows) and meta["seed"] == 13

    # Assembled at load time: the bundled model with the trained layers overlaid.
    base = Path(resolve_model("all-MiniLM-L6-v2"))
    folder = tuned_question_encoder(base, tmp_path / "cache", tmp_path / "w1")
    assembled = load_file(str(folder / "model.safetensors"))
    bundled = load_file(str(base / "model.safetensors"))
    assert torch.equal(assembled["embeddings.word_embeddings.weight"], bundled["embeddings.word_embeddings.weight"])
    k = "encoder.layer.5.output.dense.weight"
    assert torch.equal(assembled[k], one[k].float()) and not torch.equal(assembled[k], bundled[k])
    assert tuned_question_encoder(base, tmp_path / "cache", tmp_path / "w1") == folder  # once per machine


def test_questions_go_through_the_shipped_encoder_and_passages_do_not() -> None:
    assert (RETRIEVER_WEIGHTS / QUESTION_FILE).exists()
    cache = Config.load().cache  # the machine's exported models, as the service uses them
    question = "Who leads the survey in Harlow?"
    tuned = Embedder("all-MiniLM-L6-v2", "onnx", cache, question_encoder="tuned")
    plain = Embedder("all-MiniLM-L6-v2", "onnx", cache, question_encoder="model")
    assert np.allclose(tuned.embed([question]), plain.embed([question]), atol=1e-5)  # passages: the bundled model
    assert np.allclose(plain.embed_questions([question]), plain.embed([question]), atol=1e-5)
    q_tuned = tuned.embed_questions([question])
    assert q_tuned.shape == (1, 384) and abs(float(np.linalg.norm(q_tuned)) - 1) < 1e-4
    assert not np.allclose(q_tuned, plain.embed_questions([question]), atol=1e-4)  # a different encoder
    # Any other model keeps its own question side: the shipped layers belong to the bundled one.
    other = Embedder(str(Path(resolve_model("all-MiniLM-L6-v2"))), "onnx", cache, question_encoder="tuned")
    assert other.question_path is None
    with pytest.raises(ValueError, match="question encoder"):
        Embedder("all-MiniLM-L6-v2", "onnx", cache, question_encoder="/no/such/folder").question_path
