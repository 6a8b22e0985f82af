"""The span reader's recipe (training/squad_reader.py) on the tiny data set of tests/training/fixtures.py:
its windows, cut at the sentences the service splits, its hard negatives, and a run that resumes from
its checkpoint to the same weights as an unbroken one."""

from __future__ import annotations

import json
import random
from pathlib import Path

from qa.passages import sentence_spans
from tests.training.fixtures import ARTICLES, QUESTIONS
from training.squad_reader import build_examples, cmd_train, featurize, load_questions, parser, swap_key_term


def test_swapping_a_key_term_makes_the_question_unanswerable_from_its_window() -> None:
    rng = random.Random(0)
    article = " ".join(ARTICLES["Harbour_of_Quillport"])
    window = ARTICLES["Harbour_of_Quillport"][1]
    swapped = swap_key_term("How many ships did the harbour handle in 1990?", article, window, rng)
    assert swapped is not None and "1990" not in swapped
    year = swapped.split(" in ")[-1].rstrip("?")
    assert year in article and year not in window  # another year of the article, one the window lacks
    assert swap_key_term("What is the weather like?", article, window, rng) is None


def test_windows_hold_their_answers_and_negatives_do_not(data: Path) -> None:
    from transformers import AutoTokenizer

    from qa.embedding import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2"))
    args = parser().parse_args(
        ["train", "--out", "unused", "--same-paragraph", "1", "--other-paragraph", "1", "--hard", "1", "--context-tokens", "24"]
    )
    questions = load_questions(data, "train")
    assert len(questions) == len(QUESTIONS) and not load_questions(data, "calibration")
    examples = build_examples(questions, tokenizer, args, random.Random(1))
    answers = {q["question"]: q["answers"][0] for q in questions}
    positives = [e for e in examples if e["start"] is not None]
    assert len(positives) == len(QUESTIONS)
    for e in positives:
        assert e["context"][e["start"] : e["end"]] == answers[e["question"]]
        assert len(tokenizer(e["context"], add_special_tokens=False)["input_ids"]) <= 24 or e["context"].count(". ") == 0
    for e in examples:
        if e["start"] is None and e["question"] in answers:  # same or other paragraph: the answer is not there
            assert answers[e["question"]] not in e["context"]
    hard = [e for e in examples if e["start"] is None and e["question"] not in answers]
    assert hard, "no hard negatives were made"
    feats = featurize(tokenizer, examples, 96)
    assert sum(f["start"] > 0 for f in feats) == len(positives) and sum(f["start"] == 0 for f in feats) == len(examples) - len(positives)


def test_a_run_resumed_from_its_checkpoint_ends_where_an_unbroken_one_does(data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    def run(out: str, checkpoints: str, stop_after: int = 0) -> None:
        args = parser().parse_args(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(tmp_path / out),
                "--checkpoints",
                str(tmp_path / checkpoints),
                "--batch",
                "4",
                "--checkpoint-every",
                "2",
                "--threads",
                "1",
                "--precision",
                "fp32",
            ]
        )
        args.argv, args.stop_after = [], stop_after
        cmd_train(args)

    run("unbroken", "ck-a")
    run("resumed", "ck-b", stop_after=2)  # "killed" after the step-2 checkpoint
    assert not (tmp_path / "resumed" / "top_layers.safetensors").exists()
    run("resumed", "ck-b")  # the same command again continues from step 2
    a, b = load_file(str(tmp_path / "unbroken" / "top_layers.safetensors")), load_file(str(tmp_path / "resumed" / "top_layers.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    meta = json.loads((tmp_path / "resumed" / "reader.json").read_text())
    assert meta["device"] == "cpu" and meta["train_windows"] > len(QUESTIONS)


def test_a_teachers_span_logits_land_on_the_students_tokens_and_a_distilled_run_records_it(data: Path, tmp_path: Path) -> None:
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from qa.embedding import resolve_model
    from qa.readers.span import load_qa_model
    from training.squad_reader import teacher_targets

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2"))
    args = parser().parse_args(["train", "--data", str(data), "--out", "unused"])
    examples = build_examples(load_questions(data), tokenizer, args, random.Random(0))
    feats = featurize(tokenizer, examples, 192)
    teacher_targets("shipped", tokenizer, examples, feats, 192, torch.device("cpu"))
    model, _ = load_qa_model(None)
    for f in feats[:4]:
        enc = tokenizer(examples[f["example"]]["question"], examples[f["example"]]["context"], return_tensors="pt")
        with torch.inference_mode():
            out = model(**enc)
        context = np.array(enc.sequence_ids(0)) == 1
        # the same tokenizer: every context token is its own counterpart, [CLS] keeps the no-answer logit
        np.testing.assert_allclose(f["t_start"][context], out.start_logits[0].numpy()[context], atol=0.02, rtol=0.01)
        np.testing.assert_allclose(f["t_end"][0], out.end_logits[0, 0].item(), atol=0.02, rtol=0.01)
        assert (f["t_start"][1 : context.argmax()] == -1e4).all()  # the question is never an answer

    run = ["train", "--data", str(data), "--out", str(tmp_path / "student"), "--checkpoints", str(tmp_path / "ck")]
    args = parser().parse_args([*run, "--teacher", "shipped", "--batch", "4", "--threads", "1", "--precision", "fp32"])
    args.argv, args.stop_after = [], 0
    cmd_train(args)
    meta = json.loads((tmp_path / "student" / "reader.json").read_text())
    assert meta["teacher"] == {"model": "shipped", "distill": 0.5, "temperature": 2.0}
    assert (tmp_path / "student" / "top_layers.safetensors").exists()


def test_windows_are_cut_at_the_sentence_boundaries_the_service_splits_passages_at(data: Path) -> None:
    from transformers import AutoTokenizer

    from qa.embedding import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2"))
    args = parser().parse_args(["train", "--out", "unused", "--same-paragraph", "1", "--other-paragraph", "1", "--context-tokens", "24"])
    examples = build_examples(load_questions(data, "train"), tokenizer, args, random.Random(3))
    cuts = [(text, sentence_spans(text)) for texts in ARTICLES.values() for text in texts]
    for e in examples:  # each window is a run of whole sentences of one paragraph, as qa.passages splits it
        assert any(text[a:b] == e["context"] for text, spans in cuts for a, _ in spans for _, b in spans), e["context"]
