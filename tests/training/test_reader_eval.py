"""training/reader_eval.py: the held-out sets the README's reader figures are measured on."""

from __future__ import annotations

import json

from training.reader_eval import unanswerable


def test_unanswerable_questions_go_to_a_paragraph_of_their_article_without_the_answer(tmp_path):
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
