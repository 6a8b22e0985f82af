"""`make train-retriever`: a question encoder trained to find the passage that answers a question.

    python -m training.question_encoder prepare          # the targets: passage and sentence vectors, as the index holds them
    python -m training.question_encoder train [--epochs 1]   # resumable; writes qa/retriever_weights/
    python -m training.question_encoder fusion           # fusion weights, on the fusion fold only
    python -m training.question_encoder eval --set squad13|rtqa-new [--encoders model,tuned]

Only the question side is trained. Passages keep the bundled model's vectors, so:
- an index built before keeps working (no rebuild), and indexing speed cannot change;
- every training passage can be a negative of every question: the loss is a softmax over the
  vectors of all training passages (about 19,000) and, for the best-sentence retriever, over all
  their sentences (about 90,000), which the `prepare` step computes once, with the index's own
  code and backend. The negatives BM25 or the current model would mine are among them, and the
  hardest weigh the most.

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
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from qa.config import BUNDLED_MODEL, Config
from qa.embedding import QUESTION_FILE, RETRIEVER_WEIGHTS
from qa.metrics import read_jsonl
from training.checkpoints import Checkpoint, linear_schedule
from training.squad_reader import DATA, RTQA, SEED, SQUAD_TRAIN, calibration_fold, device_for, native_bf16

WORK = Path(__file__).resolve().parent.parent / ".cache" / "question-encoder"
META_FILE = "question_encoder.json"
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


def positives(targets, rows: list[dict]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each question's passages (those of its paragraph) and sentences (those holding its answer)."""
    p_doc, s_passage = targets["p_doc"], targets["s_passage"]
    by_doc: dict[int, np.ndarray] = {}
    for d in np.unique(p_doc):
        by_doc[int(d)] = np.flatnonzero(p_doc == d)
    s_doc = p_doc[s_passage]
    order = np.argsort(s_doc, kind="stable")
    bounds = np.searchsorted(s_doc[order], np.arange(int(p_doc.max()) + 2))
    pos_p, pos_s = [], []
    for r in rows:
        pos_p.append(by_doc[r["doc"]])
        sids = order[bounds[r["doc"]] : bounds[r["doc"] + 1]]
        a = r["answer"]
        inside = sids[(targets["s_start"][sids] <= a) & (targets["s_end"][sids] > a)] if a >= 0 else sids[:0]
        pos_s.append(inside)
    return pos_p, pos_s


# --------------------------------------------------------------------------------------- training


def trained_state(model) -> dict:
    """What ships: the transformer layers (the embeddings stay frozen, the bundled model's)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith("encoder.layer.")}


def cmd_train(args) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from qa.embedding import resolve_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = device_for(args.device)
    bf16 = device.type == "cuda" or args.precision == "bf16" or (args.precision == "auto" and native_bf16())
    hf_logging.set_verbosity_error()
    work = Path(args.work)
    targets = np.load(work / "targets.npz")
    rows = json.loads((work / "questions.json").read_text())
    pos_p, pos_s = positives(targets, rows)
    P = torch.from_numpy(targets["passages"]).to(device)
    S = torch.from_numpy(targets["sentences"]).to(device)
    print(f"training on {device}, {'bf16' if bf16 else 'fp32'}: {len(rows)} questions against {len(P)} passages, {len(S)} sentences")

    base = resolve_model(BUNDLED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModel.from_pretrained(base).to(device)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("encoder.layer."))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    per_epoch = (len(rows) + args.batch - 1) // args.batch
    steps = args.epochs * per_epoch
    sched = linear_schedule(opt, steps)

    run = f"{args.seed}-{args.epochs}-{args.lr}-{args.batch}-{args.scale}-{args.sentence_weight}"
    ckpt = Checkpoint(work / f"checkpoint-{run}.pt", model, opt, sched, trained_state)
    step, trained_s = ckpt.resume(device)

    def order(epoch: int) -> list[int]:
        idx = list(range(len(rows)))
        random.Random(args.seed * 1000 + epoch).shuffle(idx)
        return idx

    def multi_positive_loss(logits, pos: list[np.ndarray]):
        """-log of the softmax mass on the positives (questions without a positive do not count)."""
        mask = torch.zeros_like(logits, dtype=torch.bool)
        keep = []
        for j, ids in enumerate(pos):
            if len(ids):
                mask[j, torch.from_numpy(ids)] = True
                keep.append(j)
        if not keep:
            return logits.sum() * 0
        keep_t = torch.tensor(keep, device=logits.device)
        lse_all = torch.logsumexp(logits[keep_t], dim=1)
        lse_pos = torch.logsumexp(logits[keep_t].masked_fill(~mask[keep_t], float("-inf")), dim=1)
        return (lse_all - lse_pos).mean()

    model.train()
    t0, total, seen = time.time(), 0.0, 0
    while step < steps:
        epoch, k = divmod(step, per_epoch)
        batch = order(epoch)[k * args.batch : (k + 1) * args.batch]
        enc = tokenizer([rows[i]["question"] for i in batch], padding=True, truncation=True, max_length=64, return_tensors="pt").to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            states = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        q = torch.nn.functional.normalize((states.float() * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)
        loss = multi_positive_loss(args.scale * q @ P.T, [pos_p[i] for i in batch])
        if args.sentence_weight:
            loss = loss + args.sentence_weight * multi_positive_loss(args.scale * q @ S.T, [pos_s[i] for i in batch])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        step += 1
        total += loss.item()
        seen += len(batch)
        if step % 50 == 0 or step == steps:
            elapsed = time.time() - t0
            trained_s += elapsed
            print(f"step {step}/{steps} loss {total / 50:.3f} {seen / elapsed:.0f} questions/s", flush=True)
            t0, total, seen = time.time(), 0.0, 0
        if step % args.checkpoint_every == 0 or step == steps:
            ckpt.save(step, trained_s)
        if args.stop_after and step >= args.stop_after:  # the tests' stand-in for a kill
            print(f"stopped at step {step}", flush=True)
            return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().half().contiguous() for k, v in trained_state(model).items()}, str(out / QUESTION_FILE))
    meta = {
        "base_model": BUNDLED_MODEL,
        "trains": "the question side only; passages keep the bundled model's vectors",
        "command": "python -m training.question_encoder train " + " ".join(args.argv),
        "seed": args.seed,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch": args.batch,
        "scale": args.scale,
        "sentence_weight": args.sentence_weight,
        "device": str(device),
        "precision": "bf16" if bf16 else "fp32",
        "train_questions": len(rows),
        "negatives": f"all {len(P)} training passages and {len(S)} sentences",
        "held_out": f"squad11_dev13 (all); RealTimeQA from {RTQA_HELD_OUT_FROM}; fusion fold: squad11_train md5(title) % 40 == 0 "
        f"and RealTimeQA {RTQA_FUSION_FROM[:7]}",
        "train_s": round(trained_s),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"saved {out / QUESTION_FILE}; trained {trained_s:.0f}s", flush=True)


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
    from qa.evaluate import eval_config, paragraphs_as_documents
    from qa.index import build_index, open_index
    from qa.retriever import _fuse_scores

    with tempfile.TemporaryDirectory() as tmp:
        paragraphs_path, questions_path = eval_sets(Path(args.data), "fusion", Path(tmp))
        config = eval_config(Config.load(question_encoder=args.encoder), paragraphs_path)
        embedder = Embedder.from_config(config)
        build_index(config, embedder, upserts=paragraphs_as_documents(read_jsonl(paragraphs_path)), deletes=[], wait=600)
        questions = read_jsonl(questions_path)
    index = open_index(config)
    found = []
    for q in questions:
        vector = embedder.embed_questions([q["question"]])[0]
        c = index.candidates(vector, q["question"], config.candidates, None)
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
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv[1:]
    {"prepare": cmd_prepare, "train": cmd_train, "eval": cmd_eval, "fusion": cmd_fusion}[args.cmd](args)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.question_encoder")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--work", default=str(WORK), help="targets and checkpoints")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    t = sub.add_parser("train")
    t.add_argument("--out", default=str(RETRIEVER_WEIGHTS))
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--scale", type=float, default=20.0, help="cosine -> logit (1 / temperature)")
    t.add_argument("--sentence-weight", type=float, default=1.0, help="weight of the loss over sentences")
    t.add_argument("--checkpoint-every", type=int, default=100, help="steps")
    t.add_argument("--stop-after", type=int, default=0, help=argparse.SUPPRESS)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--device", default="auto", help="auto (cuda when torch sees one), cpu, cuda")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    t.add_argument("--seed", type=int, default=SEED)
    e = sub.add_parser("eval")
    e.add_argument("--set", choices=("squad13", "rtqa-new", "rtqa-all", "fusion"), default="squad13")
    e.add_argument("--encoders", default="model,tuned")
    e.add_argument("--reader", default="sentence", help="retrieval figures do not depend on it; sentence is the fastest")
    e.add_argument("--limit", type=int, default=0)
    f = sub.add_parser("fusion")
    f.add_argument("--encoder", default="tuned")
    f.add_argument("--show", type=int, default=8)
    return ap


if __name__ == "__main__":
    main()
