"""The retriever's data and measurements: folds, targets, held-out evaluation and fusion tuning.

    python -m training.retrieval prepare        # passage and sentence vectors of the training fold, as the index holds them
    python -m training.retrieval fusion         # fusion weights, on the fusion fold only
    python -m training.retrieval eval --set squad13|rtqa-new [--encoders model,FOLDER]

The retriever itself is trained by `training/dual_encoder.py` (`make train-retriever`); the
cross-encoder reranker (`training/reranker.py`) mines its hard negatives from `prepare`'s vectors.
Measure another model with `QA_MODEL=FOLDER python -m training.retrieval eval ...`.

Data (../shared/data, never committed):
- trains on `squad11_train` (all 442 articles but the calibration fold, md5(title) % 40 == 0,
  which is also the fusion fold) and on the RealTimeQA questions before RTQA_FUSION_FROM (news
  weeks 2020/01 to 2021/06), with an evidence passage;
- the fusion weights are tuned on the calibration fold and RealTimeQA 2021/07 (never trained on);
- measured on all of `squad11_dev13` and on RealTimeQA from RTQA_HELD_OUT_FROM on (2021/08 to
  2021/12, the newest weeks), never seen.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from qa.config import Config
from qa.scoring import read_jsonl
from training.common import DATA, RTQA, SQUAD_TRAIN, calibration_fold

WORK = Path(__file__).resolve().parent.parent / ".cache" / "retrieval"
RTQA_FUSION_FROM = "2021/07/01"
RTQA_HELD_OUT_FROM = "2021/08/01"


# --------------------------------------------------------------------------------------- data


def _rtqa_dates(data: Path) -> dict[str, str]:
    return {q["id"]: q["date"] for q in read_jsonl(data / RTQA / "questions.jsonl")}


def fold_of(name: str, paragraph: dict, date: str | None) -> str:
    """train, fusion or held-out: which use a paragraph (and its questions) may be put to."""
    if name == SQUAD_TRAIN:
        return "fusion" if calibration_fold(paragraph.get("title") or paragraph["id"]) else "train"
    if name == RTQA:
        if date is None or date >= RTQA_HELD_OUT_FROM:
            return "held-out"
        return "fusion" if date >= RTQA_FUSION_FROM else "train"
    return "held-out"


def load_fold(data: Path, fold: str) -> tuple[list[dict], list[dict]]:
    """Paragraphs and questions (with an evidence paragraph) of a fold, from SQuAD train and RealTimeQA."""
    dates = _rtqa_dates(data)
    paragraphs, questions = [], []
    for name in (SQUAD_TRAIN, RTQA):
        kept = {}
        for p in read_jsonl(data / name / "paragraphs.jsonl"):
            if fold_of(name, p, dates.get(p.get("question_id", ""))) == fold:
                kept[p["id"]] = p
        paragraphs += kept.values()
        for q in read_jsonl(data / name / "questions.jsonl"):
            if q.get("context_id") in kept and (name != RTQA or q["date"] < RTQA_HELD_OUT_FROM):
                questions.append(q)
    return paragraphs, questions


def answer_start(q: dict, context: str) -> int:
    """Where the first gold answer is in the paragraph, or -1 (RealTimeQA's answers are often not)."""
    for a in q.get("answers") or []:
        start = a.get("answer_start", -1)
        if start >= 0 and context[start : start + len(a["text"])] == a["text"]:
            return start
        start = context.find(a["text"])
        if start >= 0:
            return start
    return -1


def cmd_prepare(args) -> None:
    """The training targets: every training passage's and sentence's vector, computed by the index's
    code (`qa.index.build.embed_documents`) on the default backend, and each question's positives."""
    from qa.embedding import Embedder
    from qa.evaluate import paragraphs_as_documents
    from qa.index.build import embed_documents

    started = time.time()
    paragraphs, questions = load_fold(Path(args.data), "train")
    config = Config.load()
    embedder = Embedder.from_config(config)
    docs = paragraphs_as_documents(paragraphs)
    split, vectors, sentence_vectors = embed_documents(config, embedder, docs, show_progress=True)
    doc_of, p_start, s_passage, s_start, s_end = {}, [], [], [], []
    p_doc: list[int] = []
    for d, (doc, passages) in enumerate(split):
        doc_of[doc.id] = d
        for p in passages:
            k = len(p_doc)
            p_doc.append(d)
            p_start.append(p.start)
            for s in p.sentences:
                s_passage.append(k)
                s_start.append(p.start + s.start)
                s_end.append(p.start + s.end)
    context = {p["id"]: p["context"] for p in paragraphs}
    rows = [
        {"question": q["question"], "doc": doc_of[q["context_id"]], "answer": answer_start(q, context[q["context_id"]])}
        for q in questions
        if q["context_id"] in doc_of
    ]
    out = Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "targets.npz",
        passages=vectors,
        sentences=np.vstack(sentence_vectors).astype(np.float32),
        p_doc=np.asarray(p_doc),
        s_passage=np.asarray(s_passage),
        s_start=np.asarray(s_start),
        s_end=np.asarray(s_end),
    )
    (out / "questions.json").write_text(json.dumps(rows))
    print(
        f"{len(docs)} paragraphs, {len(p_doc)} passages, {len(s_passage)} sentences, {len(rows)} questions "
        f"({sum(r['answer'] >= 0 for r in rows)} with an answer offset); {time.time() - started:.0f}s",
        flush=True,
    )


# --------------------------------------------------------------------------------------- measuring


def eval_sets(data: Path, name: str, folder: Path) -> tuple[Path, Path]:
    """Paragraph and question files of a named set: questions with an evidence paragraph only."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "squad13":
        return data / "squad11_dev13" / "paragraphs.jsonl", data / "squad11_dev13" / "questions.jsonl"
    if name in ("rtqa-new", "rtqa-all"):
        questions = [q for q in read_jsonl(data / RTQA / "questions.jsonl") if q.get("context_id")]
        if name == "rtqa-new":
            questions = [q for q in questions if q["date"] >= RTQA_HELD_OUT_FROM]
        out = folder / f"{name}.jsonl"
        out.write_text("".join(json.dumps(q) + "\n" for q in questions))
        return data / RTQA / "paragraphs.jsonl", out
    if name == "fusion":
        paragraphs, questions = load_fold(data, "fusion")
        p, q = folder / "fusion-paragraphs.jsonl", folder / "fusion-questions.jsonl"
        p.write_text("".join(json.dumps(x) + "\n" for x in paragraphs))
        q.write_text("".join(json.dumps(x) + "\n" for x in questions))
        return p, q
    raise ValueError(f"unknown set {name!r}")


def cmd_eval(args) -> None:
    from qa.evaluate import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        paragraphs, questions = eval_sets(Path(args.data), args.set, Path(tmp))
        for encoder in args.encoders.split(","):
            config = Config.load(reader=args.reader, question_encoder=encoder)
            metrics = evaluate(config, paragraphs, questions, mode="open", limit=args.limit or None, show_progress=False)
            print(json.dumps({"set": args.set, "encoder": encoder, **metrics}), flush=True)


def cmd_fusion(args) -> None:
    """Weights of the score fusion, searched on the fusion fold (never trained on): each question's
    candidates are fetched once, then fused under every weight on the grid."""
    from qa.embedding import Embedder
    from qa.evaluate import build_eval_index, eval_config
    from qa.index import open_index
    from qa.retriever import _fuse_scores

    with tempfile.TemporaryDirectory() as tmp:
        paragraphs_path, questions_path = eval_sets(Path(args.data), "fusion", Path(tmp))
        config = eval_config(Config.load(question_encoder=args.encoder), paragraphs_path)
        embedder = Embedder.from_config(config)
        build_eval_index(config, embedder, read_jsonl(paragraphs_path))
        questions = read_jsonl(questions_path)
    index = open_index(config)
    found = []
    for q in questions:
        vector = embedder.embed_questions([q["question"]])[0]
        c = index.rankings(vector, q["question"], config.candidates, None)
        found.append((q["context_id"], c, q["id"].startswith("squad")))
    # The document of every passage a question's candidates name, fetched once in chunks (SQLite
    # caps the variables of one statement).
    wanted = sorted({pid for _, c, _ in found for pid, _ in [*c.dense, *c.sentence, *c.lexical]})
    doc_of = {}
    for start in range(0, len(wanted), 500):
        doc_of |= {pid: r.document_id for pid, r in index.store.passages(wanted[start : start + 500]).items()}
    grid = [(d, s, lx) for d in (0.5, 1.0, 1.5) for s in (0.5, 1.0, 1.5) for lx in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]
    results = []
    for d, s, lx in grid:
        cfg = config.replace(weight_dense=d, weight_sentence=s, weight_lexical=lx)
        r1 = {True: [], False: []}
        for gold, c, squad in found:
            hits = _fuse_scores(c.dense, dict(c.sentence[: cfg.candidates]), c.lexical, cfg, 5)
            ranked = [doc_of[h.passage_id] for h in hits]
            r1[squad].append((ranked[:1] == [gold], gold in ranked))
        sq, news = np.mean(r1[True], 0), np.mean(r1[False], 0)
        results.append({"dense": d, "sentence": s, "lexical": lx, "squad": sq.round(4).tolist(), "news": news.round(4).tolist()})
    # SQuAD and news count alike: the mean of the two sets' recall@1, then recall@5.
    results.sort(key=lambda r: -(r["squad"][0] + r["news"][0] + 0.5 * (r["squad"][1] + r["news"][1])))
    for r in results[: args.show]:
        print(json.dumps(r))
    print(f"{sum(f[2] for f in found)} SQuAD and {sum(not f[2] for f in found)} news questions on the fusion fold")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    {"prepare": cmd_prepare, "eval": cmd_eval, "fusion": cmd_fusion}[args.cmd](args)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.retrieval")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--work", default=str(WORK), help="where prepare writes the targets")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    e = sub.add_parser("eval")
    e.add_argument("--set", choices=("squad13", "rtqa-new", "rtqa-all", "fusion"), default="squad13")
    e.add_argument("--encoders", default="model", help="question encoders, comma-separated: model (the passages' own) or folders")
    e.add_argument("--reader", default="span", help="the service's; its likely answers list their passage first (QA_ANSWER_PASSAGE_FIRST)")
    e.add_argument("--limit", type=int, default=0)
    f = sub.add_parser("fusion")
    f.add_argument("--encoder", default="model", help="the question encoder: model or a folder")
    f.add_argument("--show", type=int, default=8)
    return ap


if __name__ == "__main__":
    main()
