"""Fit and check the span reader's score calibration (qa/readers/calibration.py).

    python -m training.calibrate fit --out DIR [--limit N]        # writes DIR/calibration.json
    QA_SPAN_CONTEXT_TOKENS=128 python -m training.calibrate fit --out DIR   # a fit for other settings, beside it
    python -m training.calibrate report [--set squad] [--limit N] [--mode open|gold]
    python -m training.calibrate tune [--limit N] [--margins 0,-1,-2,-4]  # chooses QA_SPAN_NULL_MARGIN, QA_ANSWER_THRESHOLD

`make train-reader` ends with `python -m training.calibrate fit --out qa/reader_weights`, the
shipped reader's calibration (after `python -m training.squad_reader train --out qa/reader_weights`).
`fit` asks the calibration fold of `squad11_train` (articles with md5(title) % 40 == 0, never trained
on) through the service's own path (open mode: retrieval over the fold's paragraphs, then the span
reader) and fits a logistic regression from each answer's features to whether it is right (SQuAD
exact match). `report` measures on held-out questions: the reliability table (score bins against
the fraction right) and the expected calibration error, before (sigmoid of the logit) and after; and
the no-answer check on hard unanswerable questions made from the held-out ones (a key name, number
or year swapped for another of the article's, asked of the gold paragraph), next to what the
threshold costs the answerable ones.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import numpy as np

from qa.config import Config
from qa.readers.calibration import FITTED_SETTINGS, Calibration, fit, reliability
from qa.readers.span import WEIGHTS
from qa.scoring import exact_match, f1_score, read_jsonl
from training.common import DATA, SEED
from training.squad_reader import load_questions, swap_key_term

LABEL = "f1"  # what `fit` and `tune` fit the score to, by default (fit_rows)


def collect(config: Config, paragraphs: Path, questions: list[dict], mode: str) -> list[dict]:
    """For each question, its span candidates (features, text) as the service reads them."""
    import torch

    from qa.embedding import Embedder
    from qa.evaluate import build_eval_index, eval_config
    from qa.models import Filters
    from qa.pipeline import Pipeline
    from qa.progress import Progress
    from qa.readers.base import is_why
    from qa.readers.span import SpanReader

    cfg = eval_config(config, paragraphs)
    embedder = Embedder.from_config(cfg)
    embedder.model
    torch.set_num_threads(max(1, config.reader_threads))
    build_eval_index(cfg, embedder, read_jsonl(paragraphs))
    reader = SpanReader(cfg)
    pipeline = Pipeline(cfg, embedder, reader=reader)
    index = pipeline.index()
    out = []
    progress = Progress(len(questions), "questions", "question")
    for q in questions:
        progress.update(1)
        if is_why(q["question"]):
            continue  # answered by the sentence reader, whose score is not calibrated
        vector = embedder.embed([q["question"]])[0]
        filters = Filters(document_id=q["context_id"]) if mode == "gold" else None
        hits = pipeline.retriever.retrieve(index, vector, q["question"], max(20, cfg.read_passages), filters)
        rows = index.store.passages([h.passage_id for h in hits])
        cands = reader.scored_spans(q["question"], vector, index, hits, rows)[: cfg.max_answers]
        gold = [a["text"] for a in q.get("answers", [])]
        out.append(
            {
                "id": q["id"],
                "impossible": bool(q.get("is_impossible")),
                "gold": gold,
                "candidates": [
                    {
                        "features": list(f),
                        "text": a.text,
                        "em": exact_match(a.text, gold) if gold else 0.0,
                        "f1": f1_score(a.text, gold) if gold else 0.0,
                    }
                    for a, f in cands
                ],
            }
        )
    progress.close()
    return out


def hard_questions(paragraphs: Path, questions: list[dict]) -> list[dict]:
    """SQuAD 2.0-style unanswerable twins: the question's key year, number or name swapped for another
    of its article's that its paragraph does not hold (`swap_key_term`), to be asked of that paragraph."""
    by_paragraph = {p["id"]: p for p in read_jsonl(paragraphs)}
    articles: dict[str, str] = {}
    for p in by_paragraph.values():
        articles[p.get("title") or p["id"]] = articles.get(p.get("title") or p["id"], "") + "\n" + p["context"]
    rng = random.Random(SEED)
    hard = []
    for q in questions:
        p = by_paragraph[q["context_id"]]
        swapped = swap_key_term(q["question"], articles[p.get("title") or p["id"]], p["context"], rng)
        if swapped is not None:
            hard.append({**q, "id": q["id"] + "-swapped", "question": swapped, "answers": [], "is_impossible": True})
    return hard


def policy(gold_rows: list[dict], cal: Calibration, threshold: float) -> dict:
    """What a threshold does in gold mode: answerable F1 of the top answer (withheld = 0), the share
    answered, and the share of hard unanswerable questions that get no answer."""
    answerable = [r for r in gold_rows if not r["impossible"]]
    impossible = [r for r in gold_rows if r["impossible"]]

    def top(r: dict) -> dict | None:
        c = r["candidates"][0] if r["candidates"] else None
        return c if c is not None and cal.probability(*c["features"]) >= threshold else None

    return {
        "threshold": threshold,
        "answerable_gold_f1": round(sum((top(r) or {"f1": 0.0})["f1"] for r in answerable) / max(1, len(answerable)), 4),
        "answerable_answered": round(sum(top(r) is not None for r in answerable) / max(1, len(answerable)), 4),
        "hard_unanswerable_no_answer": round(sum(top(r) is None for r in impossible) / max(1, len(impossible)), 4),
    }


def fold_questions(data: Path, limit: int) -> list[dict]:
    questions = load_questions(data, "calibration")
    if limit:
        questions = random.Random(SEED).sample(questions, min(limit, len(questions)))
    return [{**q, "answers": [{"text": t} for t in q["answers"]]} for q in questions]


def fit_rows(rows: list[dict], mode: str, label: str = "em") -> Calibration:
    """`label` is what an answer is fitted to: exact match with the fold's one reference answer
    ("em"), or its F1 to it ("f1"): the fold has one reference per question where SQuAD dev has
    about three, and an answer that overlaps the one partly is often another annotator's."""
    x = np.array([c["features"] for r in rows for c in r["candidates"]])
    y = np.array([c[label] for r in rows for c in r["candidates"]])
    weights, bias = fit(x, y)
    return Calibration(
        weights,
        bias,
        f"squad11_train calibration fold, {mode} mode, fitted to {label}: {len(rows)} questions, {len(y)} answers",
        {"mode": mode, "label": label, "questions": len(rows), "answers": int(len(y))},
    )


def write_set(questions: list[dict], folder: Path) -> Path:
    """Questions of `load_questions` in the qa eval format: (paragraphs file), questions returned in place."""
    paragraphs = {q["context_id"]: {"id": q["context_id"], "title": q["title"], "context": q["paragraph"]} for q in questions}
    path = folder / "paragraphs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in paragraphs.values()))
    return path


def cmd_fit(args) -> None:
    questions = fold_questions(Path(args.data), args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "calibration_fold"
        folder.mkdir()
        config = Config.load()
        rows = collect(config, write_set(questions, folder), questions, args.mode)
    cal = fit_rows(rows, args.mode, args.label)
    # The features depend on what the reader reads and withholds: a refit is due when these change.
    cal.extra["settings"] = {k: getattr(config, k) for k in FITTED_SETTINGS}
    weights, bias = cal.weights, cal.bias
    x = np.array([c["features"] for r in rows for c in r["candidates"]])
    y = np.array([c["em"] for r in rows for c in r["candidates"]])
    before, ece_before = reliability(1 / (1 + np.exp(-x[:, 0])), y)
    after, ece_after = reliability(np.array([cal.probability(*f) for f in x]), y)
    path = cal.save(Path(args.out), config)
    print(
        json.dumps(
            {
                "weights": weights,
                "bias": bias,
                "fold_ece_before": ece_before,
                "fold_ece_after": ece_after,
                "fold_reliability_after": after,
                "fold_reliability_before": before,
                "written": str(path),
            },
            indent=1,
        )
    )


def cmd_report(args) -> None:
    from training.reader_eval import held_out_questions

    paragraphs, questions = held_out_questions(args.set, Path(args.data))
    if args.limit:
        questions = random.Random(SEED).sample(questions, min(args.limit, len(questions)))
    config = Config.load()
    cal = Calibration.load(Path(args.calibration))
    report: dict = {"set": args.set, "mode": args.mode, "calibration": cal.fitted_on}
    rows = collect(config, paragraphs, questions, args.mode)
    for which in ("top", "all"):
        cands = [c for r in rows for c in (r["candidates"][:1] if which == "top" else r["candidates"])]
        y = np.array([c["em"] for c in cands])
        raw = np.array([1 / (1 + np.exp(-c["features"][0])) for c in cands])
        calibrated = np.array([cal.probability(*c["features"]) for c in cands])
        report[f"{which}_answers"] = len(cands)
        report[f"{which}_ece_sigmoid"] = reliability(raw, y)[1]
        report[f"{which}_ece_calibrated"], report[f"{which}_reliability_calibrated"] = reliability(calibrated, y)[::-1]
        report[f"{which}_reliability_sigmoid"] = reliability(raw, y)[0]
    # What the threshold costs answerable questions (F1 of the top answer, withheld when below it),
    # and the hard unanswerable probe in gold mode: the share that gets no answer.
    hard = hard_questions(paragraphs, questions)
    gold_rows = collect(config, paragraphs, questions + hard, "gold")
    table = [policy(gold_rows, cal, t) for t in sorted({0.0, 0.1, 0.2, 0.3, 0.4, 0.5, config.answer_threshold})]
    report["hard_unanswerable_questions"] = len(hard)
    report["threshold_table_gold"] = table
    print(json.dumps(report, indent=1))


def cmd_tune(args) -> None:
    """Choose the no-answer margin and the threshold on the calibration fold (never trained on): for
    each margin the calibration is refitted (open mode) and every threshold measured in gold mode, on
    the fold's questions and their hard unanswerable twins. The cost of a policy is the answerable F1
    it loses against never abstaining (margin -100, threshold 0)."""
    questions = fold_questions(Path(args.data), args.limit)
    base = Config.load()
    margins = sorted({*(float(m) for m in args.margins.split(",")), -100.0}, reverse=True)
    thresholds = [round(0.05 * i, 2) for i in range(13)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "calibration_fold"
        folder.mkdir()
        paragraphs = write_set(questions, folder)
        hard = hard_questions(paragraphs, questions)
        for margin in margins:
            config = base.replace(span_null_margin=margin)
            cal = fit_rows(collect(config, paragraphs, questions, "open"), "open", args.label)
            gold = collect(config, paragraphs, questions + hard, "gold")
            rows += [{"margin": margin, **policy(gold, cal, t)} for t in thresholds]
    never = next(r for r in rows if r["margin"] == -100.0 and r["threshold"] == 0.0)["answerable_gold_f1"]
    for r in rows:
        r["cost"] = round(never - r["answerable_gold_f1"], 4)
    holding = [r for r in rows if r["hard_unanswerable_no_answer"] >= args.no_answer]
    best = min(holding, key=lambda r: (r["cost"], -r["hard_unanswerable_no_answer"])) if holding else None
    report = {"questions": len(questions), "hard": len(hard), "never_abstaining_f1": never, "policies": rows, "chosen": best}
    print(json.dumps(report, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.calibrate")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--data", default=str(DATA))
    f.add_argument("--out", required=True, help="the reader folder whose calibration is fitted (qa/reader_weights: the shipped one)")
    f.add_argument("--mode", choices=("open", "gold"), default="open")
    f.add_argument("--limit", type=int, default=0)
    f.add_argument("--label", choices=("em", "f1"), default=LABEL, help="what the score is fitted to (fit_rows)")
    r = sub.add_parser("report")
    r.add_argument("--data", default=str(DATA))
    r.add_argument("--set", choices=("squad", "squad13", "rtqa"), default="squad")
    r.add_argument("--mode", choices=("open", "gold"), default="open")
    r.add_argument("--calibration", default=str(WEIGHTS), help="the folder of the calibration.json to measure")
    r.add_argument("--limit", type=int, default=0)
    u = sub.add_parser("tune")
    u.add_argument("--data", default=str(DATA))
    u.add_argument("--limit", type=int, default=0)
    u.add_argument("--label", choices=("em", "f1"), default=LABEL, help="what the score is fitted to (fit_rows)")
    u.add_argument("--margins", default="0,-1,-2,-4", help="no-answer margins to try (-100, never abstaining, is always tried)")
    u.add_argument("--no-answer", type=float, default=0.70, help="the least no-answer accuracy a chosen policy must hold")
    args = ap.parse_args(argv)
    {"fit": cmd_fit, "report": cmd_report, "tune": cmd_tune}[args.cmd](args)


if __name__ == "__main__":
    main()
