"""training/train_reader.py: the windows it trains on, its optimiser's learning rates, bf16 training,
and the unanswerable questions of `eval --unanswerable` (on a tiny randomly initialised model)."""

from __future__ import annotations

import pytest

from qa.config import Config
from tests.test_span_reader import make_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-qa"))


def test_training_windows_target_every_gold_answer():
    """Each gold answer inside a window is listed as a target (`starts`/`ends`, for training/reader_sweep.py's
    `all_spans` setting); one outside is not, and the first answer's span is the window's `start`/`end`."""
    from transformers import AutoTokenizer

    from qa.embedding import resolve_model
    from training.train_reader import featurize, gold_spans

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(Config().model))
    context = "The game was played at Levi's Stadium in Santa Clara, California, on February 7, 2016. " * 3
    answers = [
        {"text": "Levi's Stadium", "answer_start": 23},
        {"text": "Levi's Stadium in Santa Clara", "answer_start": 0},
        {"text": "February 7, 2016", "answer_start": 69},
        {"text": "Levi's Stadium", "answer_start": 23},
    ]
    spans = gold_spans(context, answers)
    assert spans == [(23, 37), (23, 52), (69, 85)]  # duplicates dropped, a wrong offset found again
    example = {"question": "Where was the game played?", "context": context, "start": 23, "text": "Levi's Stadium", "spans": spans}
    (window,) = featurize(tokenizer, [example])
    starts = {window["offsets"][t][0] for t in window["starts"]}
    ends = {window["offsets"][t][1] for t in window["ends"]}
    assert starts == {23, 69} and ends == {37, 52, 85}
    assert window["offsets"][window["start"]][0] == 23 and window["offsets"][window["end"]][1] == 37

    short = featurize(tokenizer, [example], max_len=24, stride=8)  # most windows hold no answer: [CLS] is their target
    assert any(w["starts"] == [0] and w["start"] == 0 for w in short)


def tiny_training(tiny_model, frozen: int):
    """The tiny model and six cached training windows ("Who won game 3?" -> "team 3")."""
    from transformers import AutoTokenizer, BertForQuestionAnswering

    from training.train_reader import cache_lower, featurize

    model = BertForQuestionAnswering.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = [
        {"question": f"Who won game {i}?", "context": f"Game {i} was won by team {i} in Denver.", "start": 20, "text": f"team {i}"}
        for i in range(6)
    ]
    feats = featurize(tokenizer, examples)
    cache_lower(model, feats, frozen=frozen)
    return model, feats


def test_the_span_head_learns_at_its_own_rate(tiny_model):
    """`train --head-lr 10`: at every step the new head's learning rate is ten times the layers' (warm-up and decay included)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from training.train_reader import train_top

    model, feats = tiny_training(tiny_model, frozen=0)
    head = {id(p) for p in model.qa_outputs.parameters()}
    layers = {id(p) for p in model.bert.encoder.layer.parameters()}
    steps: list[tuple[set, set]] = []

    def rates(opt, *_):
        steps.append(
            (
                {g["lr"] for g in opt.param_groups if {id(p) for p in g["params"]} <= head},
                {g["lr"] for g in opt.param_groups if {id(p) for p in g["params"]} <= layers},
            )
        )

    hook = register_optimizer_step_pre_hook(rates)
    try:
        train_top(model, feats, frozen=0, epochs=2, lr=1e-3, batch=2, seed=0, head_lr=10.0)
    finally:
        hook.remove()
    assert len(steps) == 6
    assert len({lr for _, (lr,) in steps}) > 1  # the schedule moves the rate
    for (head_lr,), (layer_lr,) in steps:
        assert head_lr == pytest.approx(10 * layer_lr)


def test_layer_decay_slows_each_lower_layer(tiny_model):
    """`train --layer-decay 0.5`: each layer learns at half the rate of the one above it, at every step;
    the head keeps its own multiple of the top layer's rate."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from training.train_reader import train_top

    model, feats = tiny_training(tiny_model, frozen=0)
    layers = [{id(p) for p in layer.parameters()} for layer in model.bert.encoder.layer]
    head = {id(p) for p in model.qa_outputs.parameters()}
    steps: list[list[float]] = []

    def rates(opt, *_):
        by_group = {frozenset(id(p) for p in g["params"]): g["lr"] for g in opt.param_groups}
        steps.append([by_group[frozenset(ids)] for ids in layers] + [by_group[frozenset(head)]])

    hook = register_optimizer_step_pre_hook(rates)
    try:
        train_top(model, feats, frozen=0, epochs=1, lr=1e-3, batch=2, seed=0, head_lr=4.0, layer_decay=0.5)
    finally:
        hook.remove()
    assert len(steps) == 3 and len(layers) == 2
    for lower, top, head_lr in steps:
        assert lower == pytest.approx(0.5 * top) and head_lr == pytest.approx(4 * top)


@pytest.mark.parametrize("bf16", [True, False])
def test_bf16_training_computes_in_bf16_and_keeps_fp32_weights(tiny_model, bf16):
    """`train --precision bf16`: the forward pass runs in bfloat16; the weights it updates stay fp32."""
    import torch

    from training.train_reader import train_top

    model, feats = tiny_training(tiny_model, frozen=0)
    seen: list = []
    hook = model.qa_outputs.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    before = model.qa_outputs.weight.detach().clone()
    try:
        train_top(model, feats, frozen=0, epochs=1, lr=1e-2, batch=2, seed=0, bf16=bf16)
    finally:
        hook.remove()
    assert set(seen) == {torch.bfloat16 if bf16 else torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.equal(before, model.qa_outputs.weight)


def test_unanswerable_questions_go_to_a_paragraph_of_their_article_without_the_answer(tmp_path):
    import json

    from training.train_reader import unanswerable

    paragraphs = [
        {"id": "a1", "title": "Cats", "context": "The cat sat on the mat."},
        *({"id": f"a2{k}", "title": "Cats", "context": f"The mat number {k} was red, and the cat lay on it."} for k in range(5)),
        {"id": "a3", "title": "Cats", "context": "Dogs bark at cats."},
        {"id": "b1", "title": "Boats", "context": "The boat was blue."},
    ]
    path = tmp_path / "paragraphs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in paragraphs))
    questions = [
        *(
            {"id": f"q1{k}", "question": "Where did the cat sit?", "context_id": "a1", "answers": [{"text": "mat", "answer_start": 19}]}
            for k in range(3)
        ),
        {"id": "q2", "question": "What colour was the boat?", "context_id": "b1", "answers": [{"text": "blue", "answer_start": 13}]},
    ]
    out = unanswerable(path, questions)
    # the a2 paragraphs hold the answer and b1 has no other paragraph in its article: a3 is the one hard negative
    assert [(q["id"], q["context_id"], q["answers"], q["is_impossible"]) for q in out] == [
        (f"q1{k}-elsewhere", "a3", [], True) for k in range(3)
    ]
    assert questions[0]["context_id"] == "a1"  # the answerable questions are left as they were
