"""The reader measured through the service, on questions it was never trained on (the README's figures).

    python -m training.reader_eval --set squad13|squad|rtqa --mode gold|open [--reader span|sentence]
                                   [--limit N] [--titles A,B] [--unanswerable] [--why-only]
                                   [--threshold P] [--null-margin L] [--passage-weight W] ...

Sets (../shared/data beside the repo, or --data; never committed):
- squad13: all 13 articles of squad11_dev13 (the shipped reader trains on squad11_train only);
- squad: the 4 of them (HELD_OUT_TITLES) that the reader before 2026-12-01 was not trained on;
- rtqa: the RealTimeQA held-out split (`answer_in_context`, md5(question id) % 5 == 0), as
  `training/squad_reader.py` leaves it out of training.

gold: each question is asked of its own paragraph only; open: of the whole set's paragraphs.
The loop is `qa eval`'s (`qa.evaluate.evaluate_questions`), with the reader chosen here.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from qa.config import Config
from qa.evaluate import evaluate_questions
from qa.scoring import read_jsonl
from training.common import DATA, RTQA, SEED, rtqa_held_out

SQUAD = "squad11_dev13"
#: SQuAD dev articles that no reader was ever trained on (1,356 of the 4,557 questions).
HELD_OUT_TITLES = ("Nikola_Tesla", "Doctor_Who", "Kenya", "Chloroplast")


def held_out_questions(which: str, data: Path = DATA) -> tuple[Path, list[dict]]:
    """The paragraphs file to index and the held-out questions (the `qa eval` format) of one set."""
    name = RTQA if which == "rtqa" else SQUAD
    paragraphs_path = data / name / "paragraphs.jsonl"
    questions = [q for q in read_jsonl(data / name / "questions.jsonl") if q.get("answers")]
    if which == "squad13":
        return paragraphs_path, questions
    if which == "squad":
        titles = {p["id"]: p.get("title") for p in read_jsonl(paragraphs_path)}
        return paragraphs_path, [q for q in questions if titles.get(q["context_id"]) in HELD_OUT_TITLES]
    return paragraphs_path, [q for q in questions if q.get("answer_in_context") and rtqa_held_out(q["id"])]


def unanswerable(paragraphs_path: Path, questions: list[dict]) -> list[dict]:
    """Each question again, asked of another paragraph of its article that holds none of its answers
    (SQuAD 2's hard negatives): in gold mode the right reply is no answer."""
    rng = random.Random(SEED)
    by_title: dict[str, list[dict]] = {}
    paragraphs = read_jsonl(paragraphs_path)
    for p in paragraphs:
        by_title.setdefault(p.get("title") or p["id"], []).append(p)
    title = {p["id"]: p.get("title") or p["id"] for p in paragraphs}
    out = []
    for q in questions:
        gold = [a["text"] for a in q["answers"]]
        others = [p for p in by_title[title[q["context_id"]]] if p["id"] != q["context_id"] and not any(g in p["context"] for g in gold)]
        if others:
            out.append({**q, "id": f"{q['id']}-elsewhere", "context_id": rng.choice(others)["id"], "answers": [], "is_impossible": True})
    return out


def main(argv: list[str] | None = None) -> None:
    import torch

    from qa.readers.base import is_why
    from qa.readers.sentence import SentenceReader
    from qa.readers.span import SpanReader

    args = parser().parse_args(argv)
    overrides = {
        k: v
        for k, v in (
            ("span_context_tokens", args.context_tokens),
            ("span_max_tokens", args.max_tokens),
            ("span_null_margin", args.null_margin),
            ("answer_threshold", args.threshold),
            ("span_passage_weight", args.passage_weight),
        )
        if v is not None
    }
    config = Config.load(**overrides)
    paragraphs, questions = held_out_questions(args.set, Path(args.data))
    if args.titles:  # e.g. half the held-out articles, to choose a setting there and check it on the rest
        keep = {p["id"] for p in read_jsonl(paragraphs) if p.get("title") in args.titles.split(",")}
        questions = [q for q in questions if q["context_id"] in keep]
    if args.why_only:
        questions = [q for q in questions if is_why(q["question"])]
    if args.limit:
        questions = random.Random(SEED).sample(questions, min(args.limit, len(questions)))
    if args.unanswerable:
        if args.mode != "gold":
            raise SystemExit("--unanswerable needs --mode gold: the question is asked of a paragraph without its answer")
        questions = questions + unanswerable(paragraphs, questions)
    torch.set_num_threads(max(1, config.reader_threads))  # the embedder asks for every core; the CPU is shared
    reader = SpanReader(config) if args.reader == "span" else SentenceReader(config)
    metrics = evaluate_questions(config, paragraphs, questions, args.mode, reader=reader, show_progress=False)
    metrics.update({"reader": args.reader, "set": args.set, **({"titles": args.titles} if args.titles else {}), **overrides})
    print(json.dumps(metrics), flush=True)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.reader_eval", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA), help="the data folder (default: shared/data beside the repo)")
    ap.add_argument("--reader", choices=("span", "sentence"), default="span")
    ap.add_argument("--mode", choices=("gold", "open"), default="gold")
    ap.add_argument("--set", choices=("squad", "squad13", "rtqa"), default="squad13")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--titles", default="", help="only the held-out questions of these articles (comma-separated)")
    ap.add_argument("--unanswerable", action="store_true", help="also ask each question of another paragraph of its article (SQuAD 2)")
    ap.add_argument("--why-only", action="store_true", help="only why-questions (QA_WHY_READER says which reader answers them)")
    ap.add_argument("--context-tokens", type=int)
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--null-margin", type=float)
    ap.add_argument("--threshold", type=float)
    ap.add_argument("--passage-weight", type=float)
    return ap


if __name__ == "__main__":
    main()
