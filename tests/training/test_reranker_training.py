"""The cross-encoder reranker's recipe (training/reranker.py): its mined hard negatives, a run that
resumes to the same weights as an unbroken one, one that goes on from them, distillation from a
teacher's scores, and the weights it writes loading on either backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qa.config import Config
from qa.reranker import META_FILE, WEIGHTS_FILE, Reranker
from tests.training.fixtures import ARTICLES, NEWS, QUESTIONS
from training.reranker import main
from training.retrieval import load_fold


@pytest.fixture(scope="module")
def mined(data: Path, tmp_path_factory) -> tuple[Path, Path, list[str], list[dict]]:
    """(data, work folder, passage texts, examples): each training question with 3 mined negatives."""
    root = tmp_path_factory.mktemp("reranker")
    work, targets = root / "work", root / "targets"
    main(["--data", str(data), "--work", str(work), "--targets", str(targets), "prepare", "--limit", "0", "--pool", "3"])
    found = json.loads((work / "examples.json").read_text())
    return data, work, found["texts"], found["examples"]


def train(mined, out: Path, *extra: str) -> None:
    data, work, *_ = mined
    args = ["--epochs", "2", "--batch", "2", "--negatives", "2", "--pool", "3", "--max-len", "64"]
    args += ["--threads", "1", "--precision", "fp32", "--checkpoint-every", "1", *extra]
    main(["--data", str(data), "--work", str(work), "train", "--out", str(out), *args])


@pytest.fixture(scope="module")
def unbroken(mined, tmp_path_factory) -> Path:
    """The weights of an unbroken run: 2 epochs of 4 steps."""
    out = tmp_path_factory.mktemp("unbroken")
    train(mined, out)
    return out


def test_mined_negatives_are_other_paragraphs_without_the_answer(mined) -> None:
    data, _, texts, examples = mined
    paragraphs, _ = load_fold(data, "train")
    assert sorted(texts) == sorted(p["context"] for p in paragraphs)  # one passage per short paragraph
    answers = {q: a for *_, q, a in QUESTIONS} | {q: a for _, _, q, a in NEWS}
    assert len(examples) == len(QUESTIONS) + 1  # the SQuAD questions and the oldest news question
    for ex in examples:
        assert answers[ex["question"]] in texts[ex["positive"]]
        assert len(ex["negatives"]) == 3 and ex["positive"] not in ex["negatives"]
        assert all(answers[ex["question"]] not in texts[n] for n in ex["negatives"])


def test_a_killed_run_resumes_to_the_weights_of_an_unbroken_one(mined, unbroken: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    _, work, _, examples = mined
    for ckpt in work.glob("checkpoint-*.pt"):
        ckpt.unlink()
    train(mined, tmp_path / "w2", "--stop-after", "3")
    assert not (tmp_path / "w2" / WEIGHTS_FILE).exists()
    train(mined, tmp_path / "w2")  # resumed from step 3
    one, two = load_file(str(unbroken / WEIGHTS_FILE)), load_file(str(tmp_path / "w2" / WEIGHTS_FILE))
    assert one.keys() == two.keys() and "classifier.weight" in one
    assert not any(k.startswith("bert.embeddings.") for k in one)  # the bundled model's, not shipped
    assert all(torch.equal(one[k], two[k]) for k in one)
    meta = json.loads((unbroken / META_FILE).read_text())
    assert meta["train_questions"] == len(examples) and meta["max_len"] == 64


def test_a_reranker_goes_on_from_all_its_weights_head_too_over_later_questions(mined, unbroken: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    examples = mined[3]
    train(mined, tmp_path / "w3", "--init", str(unbroken), "--skip", "2", "--epochs", "1", "--lr", "0")
    one, three = load_file(str(unbroken / WEIGHTS_FILE)), load_file(str(tmp_path / "w3" / WEIGHTS_FILE))
    assert all(torch.equal(one[k], three[k]) for k in one)  # learning rate 0: nothing moved from the run it goes on from
    continued = json.loads((tmp_path / "w3" / META_FILE).read_text())
    assert continued["train_questions"] == len(examples) - 2
    assert continued["init_recipe"] == json.loads((unbroken / META_FILE).read_text())


def test_distilling_pulls_the_student_to_the_teachers_order_over_the_questions_it_scored(mined, unbroken: Path, tmp_path: Path) -> None:
    """A teacher that ranks the first negative above the passage that answers pulls the student its
    way; questions the teacher did not score are left out."""
    _, work, texts, examples = mined
    teacher = tmp_path / "teacher.jsonl"
    teacher.write_text("".join(json.dumps({"i": i, "logits": [0.0, 8.0, -8.0, -8.0]}) + "\n" for i in range(len(examples) - 1)))

    def margins(weights: Path) -> float:
        """The mean logit of each question's first negative over its passage's."""
        reranker = Reranker(Config.load(backend="torch"), weights)
        pairs = [(ex["question"], [texts[ex["negatives"][0]], texts[ex["positive"]]]) for ex in examples]
        return float(np.mean([np.subtract(*reranker.scores(q, read)) for q, read in pairs]))

    student = tmp_path / "w4"
    train(mined, student, "--init", str(unbroken), "--teacher", str(teacher), "--distill", "1", "--negatives", "3", "--lr", "2e-4")
    assert json.loads((student / META_FILE).read_text())["train_questions"] == len(examples) - 1
    assert margins(student) > margins(unbroken) + 1.0


def test_the_trained_layers_load_on_the_bundled_model_and_score_on_either_backend(unbroken: Path, tmp_path: Path) -> None:
    for backend in ("torch", "onnx"):
        config = Config.load(backend=backend, cache=tmp_path / "cache")
        scores = Reranker(config, unbroken).scores("Who leads the survey in Harlow?", [ARTICLES["Kites_of_Harlow"][0], NEWS[2][1]])
        assert scores.shape == (2,) and np.isfinite(scores).all()
