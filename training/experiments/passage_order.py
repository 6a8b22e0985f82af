"""The record of two experiments on the order of the passages (2026-12-02, docs/evaluation.md, "The
span reader's answer lists its passage first"): how likely the span reader's answer must be to put
its passage first (`QA_ANSWER_PASSAGE_FIRST`, shipped), and dense pseudo-relevance feedback (the
question vector moved toward its first fused passages, not shipped).

    python -m training.experiments.passage_order dump --set fusion|rtqa-new|squad13 --out DUMP
    python -m training.experiments.passage_order sweep DUMP [DUMP ...]
    python -m training.experiments.passage_order prf --set fusion|rtqa-new [--limit N]

`dump` runs the service's parts (retrieval, the reranker when `QA_RERANK_PASSAGES` is set, the span
reader) once per question and keeps the order and the reader's candidates; `sweep` re-orders them
under each threshold. Choose on the fusion fold; the held-out sets only confirm.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from qa.config import Config
from qa.scoring import read_jsonl
from training.common import DATA
from training.retrieval import eval_sets

THRESHOLDS = (1.01, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9)


def _eval_index(name: str, limit: int) -> tuple[Config, list[dict]]:
    from qa.embedding import Embedder
    from qa.evaluate import build_eval_index, eval_config

    with tempfile.TemporaryDirectory() as tmp:
        paragraphs, questions = eval_sets(Path(DATA), name, Path(tmp))
        config = eval_config(Config.load(), paragraphs)
        build_eval_index(config, Embedder.from_config(config), read_jsonl(paragraphs))
        rows = read_jsonl(questions)
    return config, rows[:limit] if limit else rows


def cmd_dump(args) -> None:
    from qa.pipeline import Pipeline

    config, questions = _eval_index(args.set, args.limit)
    pipe = Pipeline(config)
    reader = pipe.reader
    with open(args.out, "w") as out:
        for q in questions:
            index = pipe.index()
            vector = pipe.embedder.embed_questions([q["question"]])[0]
            hits = pipe.retriever.retrieve(index, vector, q["question"], max(20, config.read_passages, config.rerank_passages), None)
            rows = index.store.passages([h.passage_id for h in hits])
            if config.rerank_passages:
                head = [h.passage_id for h in hits[: config.rerank_passages]]
                hits = pipe.reranker.rerank(q["question"], hits, rows, index.store.sentences(head))
            found = reader.scored_spans(q["question"], vector, index, hits, rows)
            record = {
                "id": q["id"],
                "gold": q["context_id"],
                "docs": [rows[h.passage_id].document_id for h in hits],
                "answers": [[a.document_id, reader.calibration.probability(*f)] for a, f in found],
            }
            out.write(json.dumps(record) + "\n")


def first_passage(record: dict, threshold: float) -> str:
    answers = record["answers"]
    return answers[0][0] if answers and answers[0][1] >= threshold else record["docs"][0]


def cmd_sweep(args) -> None:
    for path in args.dumps:
        records = read_jsonl(Path(path))
        squad = [r for r in records if r["id"].startswith("squad")]
        news = [r for r in records if not r["id"].startswith("squad")]
        for group, rows in (("squad", squad), ("news", news)):
            if rows:
                recall = [np.mean([first_passage(r, t) == r["gold"] for r in rows]) for t in THRESHOLDS]
                print(Path(path).name, group, len(rows), " ".join(f"{t}:{x:.4f}" for t, x in zip(THRESHOLDS, recall)))


def cmd_prf(args) -> None:
    from qa.embedding import Embedder
    from qa.index import open_index
    from qa.retriever import _fuse_scores

    config, questions = _eval_index(args.set, args.limit)
    embedder = Embedder.from_config(config)
    index = open_index(config)
    settings = [(b, k, both) for b in (0.2, 0.4, 0.7) for k in (1, 3) for both in (True, False)]
    found: dict[tuple, list[tuple[bool, bool]]] = {s: [] for s in [(0.0, 0, True), *settings]}

    def first_doc(c) -> tuple[list, str]:
        hits = _fuse_scores(c.dense, dict(c.sentence[: config.candidates]), c.lexical, config, 5)
        return hits, index.store.passages([hits[0].passage_id])[hits[0].passage_id].document_id

    for q in questions:
        vector = embedder.embed_questions([q["question"]])[0]
        base = index.rankings(vector, q["question"], config.candidates, None)
        hits, doc = first_doc(base)
        squad = q["id"].startswith("squad")
        found[(0.0, 0, True)].append((squad, doc == q["context_id"]))
        for b, k, both in settings:
            moved = vector + b * np.mean([index.passage_vectors.reconstruct(h.passage_id) for h in hits[:k]], 0)
            moved = (moved / np.linalg.norm(moved)).astype(np.float32)
            c = index.rankings(moved, q["question"], config.candidates, None)
            if not both:  # the passage search only; sentences keep the question's own vector
                c.sentence = base.sentence
            found[(b, k, both)].append((squad, first_doc(c)[1] == q["context_id"]))
    for (b, k, both), rows in found.items():
        a = np.asarray(rows, dtype=float)
        parts = [f"{name} {a[a[:, 0] == g, 1].mean():.4f}" for name, g in (("squad", 1.0), ("news", 0.0)) if (a[:, 0] == g).any()]
        print(f"beta {b} top {k} {'both searches' if both else 'passages only'}: recall@1 " + ", ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.experiments.passage_order")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--set", choices=("fusion", "rtqa-new", "squad13"), default="fusion")
    d.add_argument("--out", required=True)
    d.add_argument("--limit", type=int, default=0)
    s = sub.add_parser("sweep")
    s.add_argument("dumps", nargs="+")
    p = sub.add_parser("prf")
    p.add_argument("--set", choices=("fusion", "rtqa-new", "squad13"), default="fusion")
    p.add_argument("--limit", type=int, default=0)
    args = ap.parse_args(argv)
    {"dump": cmd_dump, "sweep": cmd_sweep, "prf": cmd_prf}[args.cmd](args)


if __name__ == "__main__":
    main()
