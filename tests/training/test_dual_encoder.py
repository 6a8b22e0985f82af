"""The retriever trained on both sides (training/dual_encoder.py): its positives, its batches of
same-article passages, and a run that resumes to the weights of an unbroken one."""

from __future__ import annotations

import json
from pathlib import Path

from qa.embedding import ENCODER_FILE
from tests.training.fixtures import ARTICLES, NEWS, QUESTIONS
from training.dual_encoder import META_FILE, batches, main


def test_each_question_points_at_the_passage_and_sentence_that_hold_its_answer(data: Path, tmp_path: Path) -> None:
    main(["--data", str(data), "--work", str(tmp_path), "prepare"])
    passages = json.loads((tmp_path / "passages.json").read_text())
    rows = json.loads((tmp_path / "questions.json").read_text())
    answers = [a for *_, a in QUESTIONS] + [NEWS[0][3]]
    assert [r["question"] for r in rows] == [q for _, _, q, _ in QUESTIONS] + [NEWS[0][2]]
    for r, answer in zip(rows, answers):
        p = passages[r["passage"]]
        assert len(r["sentences"]) == 1
        s, e = p["sentences"][r["sentences"][0]]
        assert answer in p["text"][s:e]  # spans in the embedded text, title line included
    titles = {p["group"] for p in passages}
    assert titles == {*ARTICLES, "news"}
    assert all(p["text"].startswith(p["group"].replace("_", " ")) for p in passages if p["group"] != "news")


def test_a_batch_holds_chunks_of_one_article_and_an_epoch_sees_every_passage() -> None:
    passages = [{"group": g} for g in ["a"] * 7 + ["b"] * 5 + ["news"] * 3]
    epoch = batches(passages, 0, 13, per_group=3, groups=2, news_repeat=2)
    seen = sorted(i for b in epoch for i in b)
    assert seen == sorted([*range(12), *range(12, 15), *range(12, 15)])  # news twice
    groups = [[passages[i]["group"] for i in b] for b in epoch]
    assert all(len(set(g)) <= 2 for g in groups)  # at most `groups` articles a batch
    assert any(g.count("a") >= 3 for g in groups)  # several passages of one article together
    assert epoch == batches(passages, 0, 13, 3, 2, 2) and epoch != batches(passages, 1, 13, 3, 2, 2)


def test_a_killed_run_resumes_to_the_weights_of_an_unbroken_one(data: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    work = tmp_path / "work"
    main(["--data", str(data), "--work", str(work), "prepare"])

    def train(out: Path, *extra: str) -> None:
        args = ["--epochs", "2", "--articles", "1", "--per-article", "2", "--threads", "1", "--precision", "fp32"]
        main(["--data", str(data), "--work", str(work), "train", "--out", str(out), "--checkpoint-every", "1", *args, *extra])

    train(tmp_path / "w1", "--folder", str(tmp_path / "model"))
    for ckpt in work.glob("checkpoint-*.pt"):
        ckpt.unlink()
    train(tmp_path / "w2", "--stop-after", "3")
    assert not (tmp_path / "w2" / ENCODER_FILE).exists()
    train(tmp_path / "w2")
    one, two = load_file(str(tmp_path / "w1" / ENCODER_FILE)), load_file(str(tmp_path / "w2" / ENCODER_FILE))
    assert one.keys() == two.keys() and all(k.startswith("encoder.layer.") for k in one)
    assert all(torch.equal(one[k], two[k]) for k in one)
    meta = json.loads((tmp_path / "w1" / META_FILE).read_text())
    assert meta["train_questions"] == len(QUESTIONS) + 1 and meta["train_passages"] == 5

    # A run that goes on from shipped layers starts from them and records the run it continues.
    train(tmp_path / "w3", "--init", str(tmp_path / "w1"), "--skip", "1", "--max-steps", "1", "--lr", "0")
    three = load_file(str(tmp_path / "w3" / ENCODER_FILE))
    assert all(torch.equal(one[k], three[k]) for k in one)  # a step at lr 0 leaves w1's layers, not the bundled ones
    meta3 = json.loads((tmp_path / "w3" / META_FILE).read_text())
    assert meta3["skip"] == 1 and meta3["continues"] == meta

    # The whole folder loads as a sentence-transformers model, with the trained layers in it.
    model = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    k = "encoder.layer.5.output.dense.weight"
    assert torch.allclose(model[0].auto_model.state_dict()[k], one[k].float(), atol=1e-3)
