"""`make train-reranker`: a cross-encoder that re-orders the retrieved passages (`QA_RERANK_PASSAGES`).

    python -m training.reranker prepare                # each training question's positive and mined negatives
    python -m training.reranker train --out DIR [--limit N]   # resumable; writes the weights to DIR
    python -m training.reranker train --out DIR --teacher LOGITS.jsonl [--distill 0.5]   # learning a larger model's scores
    python -m training.reranker tune --set fusion|squad13|rtqa-new --depth 20   # recall by depth and weight
    python -m training.reranker eval --set squad13|rtqa-new|fusion --passages 0,10

`make train-reranker` makes the shipped weights (`prepare`, then `train --limit 6000 --negatives 5
--pool 10 --lr 4e-5 --out qa/reranker_weights`); nothing writes over them unless `--out` names them.

The model reads the question and one passage together (BERT's sentence-pair input, up to
`--max-len` tokens) and gives one logit: how likely the passage answers the question. It starts
from the bundled all-MiniLM-L6-v2 with the span reader's trained layers (a model that already reads
questions against passages) and learns a listwise loss: a softmax over each question's passage and
`--negatives` hard negatives.

Hard negatives are mined from the retriever's targets (`training.retrieval prepare`:
every training passage's and sentence's vector, computed by the index's own code): the passages of
other paragraphs that the embedding model ranks highest by passage cosine plus best-sentence cosine,
the two dense halves of the shipped fusion. In SQuAD most of them are paragraphs of the question's
own article, which is the confusion that costs first places on squad11_dev13.

Data (../shared/data, never committed): the retriever's training fold (squad11_train without
its calibration fold, RealTimeQA weeks before 2021/07). Measured on all of squad11_dev13 and on
RealTimeQA from 2021/08 on (the newest weeks), never seen; the combination weight is chosen on the
fusion fold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from qa.config import BUNDLED_MODEL, Config
from qa.readers.span import TOP_FILE
from qa.readers.span import WEIGHTS as READER_WEIGHTS
from qa.reranker import META_FILE, WEIGHTS, WEIGHTS_FILE
from qa.scoring import read_jsonl
from training.common import DATA, SEED, Checkpoint, Progress, device_for, linear_schedule, optimizer_step, trained_state, use_bf16
from training.retrieval import WORK as TARGETS
from training.retrieval import cmd_prepare as prepare_targets
from training.retrieval import eval_sets, load_fold

WORK = Path(__file__).resolve().parent.parent / ".cache" / "reranker"
#: What ships: the encoder layers, the pooler and the score head (the embeddings are the bundled model's).
SHIPS = ("bert.encoder.layer.", "bert.pooler.", "classifier.")


# --------------------------------------------------------------------------------------- data


def passage_texts(paragraphs: list[dict], targets) -> list[str]:
    """Each target passage's text: its document's text from its first sentence to its last."""
    p_doc = targets["p_doc"]
    first = np.full(len(p_doc), np.iinfo(np.int64).max)
    last = np.zeros(len(p_doc), dtype=np.int64)
    np.minimum.at(first, targets["s_passage"], targets["s_start"])
    np.maximum.at(last, targets["s_passage"], targets["s_end"])
    return [paragraphs[d]["context"][a:b] for d, a, b in zip(p_doc, first, last)]


def cmd_prepare(args) -> None:
    """Questions with their positive passage and `--pool` mined negatives, best first."""
    from qa.embedding import Embedder

    started = time.time()
    work, vectors = Path(args.work), Path(args.targets)
    if not (vectors / "targets.npz").exists():
        prepare_targets(argparse.Namespace(data=args.data, work=str(vectors)))
    targets = np.load(vectors / "targets.npz")
    rows = json.loads((vectors / "questions.json").read_text())
    paragraphs, _ = load_fold(Path(args.data), "train")
    texts = passage_texts(paragraphs, targets)
    p_doc = targets["p_doc"]
    s_passage = targets["s_passage"]
    passages, sentences = targets["passages"], targets["sentences"]
    first = np.full(len(p_doc), np.iinfo(np.int64).max)
    np.minimum.at(first, s_passage, targets["s_start"])

    rng = random.Random(args.seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    news = [i for i in order if paragraphs[rows[i]["doc"]]["id"].startswith("rtqa")]
    squad = [i for i in order if not paragraphs[rows[i]["doc"]]["id"].startswith("rtqa")]
    chosen = news + squad[: max(0, args.limit - len(news))] if args.limit else order
    rng.shuffle(chosen)
    config = Config.load()
    embedder = Embedder.from_config(config)
    out = []
    for start in range(0, len(chosen), 256):
        batch = [rows[i] for i in chosen[start : start + 256]]
        q = embedder.embed_questions([r["question"] for r in batch])
        dense = q @ passages.T
        best_sentence = np.full_like(dense, -1.0)
        sims = q @ sentences.T
        for j in range(len(batch)):
            np.maximum.at(best_sentence[j], s_passage, sims[j])
        fused = dense + best_sentence
        for j, r in enumerate(batch):
            gold = np.flatnonzero(p_doc == r["doc"])
            inside = [p for p in gold if first[p] <= max(r["answer"], 0)]
            positive = int(inside[-1] if r["answer"] >= 0 and inside else gold[np.argmax(fused[j, gold])])
            ranked = np.argsort(-fused[j])[: args.pool + len(gold)]
            negatives = [int(p) for p in ranked if p_doc[p] != r["doc"]][: args.pool]
            out.append({"question": r["question"], "positive": positive, "negatives": negatives})
    work.mkdir(parents=True, exist_ok=True)
    (work / "examples.json").write_text(json.dumps({"texts": texts, "examples": out}))
    print(f"{len(out)} questions ({len(news)} news), {len(texts)} passages; {time.time() - started:.0f}s", flush=True)


# --------------------------------------------------------------------------------------- training


def cmd_train(args) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    from qa.embedding import resolve_model

    torch.set_num_threads(args.threads)
    device = device_for(args.device)
    bf16 = use_bf16(device, args.precision)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
    print(f"training on {device} ({name}), {'bf16 autocast' if bf16 else 'fp32'}", flush=True)
    started = time.time()
    hf_logging.set_verbosity_error()
    base = resolve_model(BUNDLED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(base)
    data = json.loads((Path(args.work) / "examples.json").read_text())
    texts, examples = data["texts"], data["examples"]
    teacher: dict[int, list[float]] = {}
    if args.teacher:
        # Another cross-encoder's logits over each example's positive and negatives, in that order.
        for line in open(args.teacher):
            row = json.loads(line)
            teacher[row["i"]] = row["logits"]
    examples = [{**ex, "i": i} for i, ex in enumerate(examples)][args.skip : args.skip + args.limit if args.limit else None]
    if args.teacher:
        examples = [ex for ex in examples if ex["i"] in teacher]
        print(f"{len(examples)} examples with the teacher's logits", flush=True)

    torch.manual_seed(args.seed)
    model = BertForSequenceClassification.from_pretrained(base, num_labels=1).to(device)
    if args.init:
        # A reranker's own weights continue its training (head too); a span reader's give the layers only.
        init = Path(args.init) / WEIGHTS_FILE
        init = init if init.exists() else Path(args.init) / TOP_FILE
        start = load_file(str(init))
        model.load_state_dict({k: v.float() for k, v in start.items() if k.startswith(("bert.", "classifier."))}, strict=False)
        print(f"weights from {init}", flush=True)
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)  # the embeddings stay the bundled model's: they are not shipped
    head = [*model.bert.pooler.parameters(), *model.classifier.parameters()]
    body = [p for layer in model.bert.encoder.layer for p in layer.parameters()]
    opt = torch.optim.AdamW([{"params": body, "lr": args.lr}, {"params": head, "lr": args.lr * args.head_lr}], weight_decay=0.01)
    per_epoch = len(examples) // args.batch
    steps = args.epochs * per_epoch
    sched = linear_schedule(opt, steps)

    run = f"{args.seed}-{args.lr}-{args.batch}-{args.negatives}-{args.max_len}-{len(examples)}" + (f"-from{args.skip}" if args.skip else "")
    run += f"-distill{args.distill}" if args.teacher else ""
    ckpt = Checkpoint(Path(args.work) / f"checkpoint-{run}.pt", model, opt, sched, SHIPS)
    step, trained_s = ckpt.resume(device)

    def picks(i: int, epoch: int) -> list[int]:
        """Which of the example's candidates a step reads: the positive (0) first, then
        `--negatives` drawn at random from the `--pool` hardest mined (1, 2, ...)."""
        rng = random.Random(f"{args.seed}-{epoch}-{i}")
        pool = min(args.pool, len(examples[i]["negatives"]))
        return [0, *[k + 1 for k in sorted(rng.sample(range(pool), min(args.negatives, pool)))]]

    def candidate(ex: dict, k: int) -> int:
        return ex["positive"] if k == 0 else ex["negatives"][k - 1]

    model.train()
    progress = Progress(steps, 25, "pairs", trained_s)
    while step < steps:
        epoch, k = divmod(step, per_epoch)
        order = list(range(len(examples)))
        random.Random(args.seed + epoch).shuffle(order)
        batch = order[k * args.batch : (k + 1) * args.batch]
        groups = [picks(i, epoch) for i in batch]
        enc = tokenizer(
            [examples[i]["question"] for i, g in zip(batch, groups) for _ in g],
            [texts[candidate(examples[i], k)] for i, g in zip(batch, groups) for k in g],
            truncation="only_second",
            max_length=args.max_len,
            padding="longest",
            return_tensors="pt",
        )
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits.float().squeeze(-1)
        size = max(len(g) for g in groups)
        if any(len(g) != size for g in groups):
            raise ValueError("every question needs the same number of negatives")
        logits = logits.view(len(groups), size)
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(groups), dtype=torch.long, device=device))
        if args.teacher:
            # Distillation: the student's softmax over the group learns the teacher's, not only its argmax.
            soft = torch.tensor([[teacher[examples[i]["i"]][k] for k in g] for i, g in zip(batch, groups)], device=device)
            kl = torch.nn.functional.kl_div(logits.log_softmax(-1), soft.log_softmax(-1), log_target=True, reduction="batchmean")
            loss = (1 - args.distill) * loss + args.distill * kl
        step += 1
        progress.update(step, optimizer_step(loss, body + head, opt, sched), len(batch) * size)
        if step % args.checkpoint_every == 0 or step == steps:
            ckpt.save(step, progress.trained_s)
        if args.stop_after and step >= args.stop_after:  # the tests' stand-in for a kill
            print(f"stopped at step {step}", flush=True)
            return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().half().contiguous() for k, v in trained_state(model, SHIPS).items()}, str(out / WEIGHTS_FILE))
    meta = {
        "base_model": BUNDLED_MODEL,
        "architecture": "BertForSequenceClassification",
        "max_len": args.max_len,
        "recipe": "training.reranker",
        "command": "python -m training.reranker train " + " ".join(args.argv),
        "init": str(init.relative_to(init.parents[1])) if args.init else "the bundled model",
        "init_recipe": json.loads((init.parent / META_FILE).read_text()) if args.init and init.name == WEIGHTS_FILE else None,
        "skip": args.skip,
        "seed": args.seed,
        "epochs": args.epochs,
        "lr": args.lr,
        "head_lr": args.head_lr,
        "batch": args.batch,
        "negatives": args.negatives,
        "pool": args.pool,
        "train_questions": len(examples),
        "teacher": Path(args.teacher).name if args.teacher else None,
        "distill": args.distill if args.teacher else None,
        "precision": "bf16" if bf16 else "fp32",
        "device": str(device),
        "held_out": "squad11_dev13 (all 13 articles); RealTimeQA from 2021/07 on; squad11_train md5(title) % 40 == 0",
        "train_s": round(progress.trained_s),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"saved {out / WEIGHTS_FILE}; trained {progress.trained_s:.0f}s, wall {time.time() - started:.0f}s", flush=True)


# --------------------------------------------------------------------------------------- measuring


def cmd_eval(args) -> None:
    from qa.evaluate import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        paragraphs, questions = eval_sets(Path(args.data), args.set, Path(tmp))
        for n in [int(x) for x in args.passages.split(",")]:
            config = Config.load(reader=args.reader, rerank_passages=n)
            if args.weight is not None:
                config = config.replace(rerank_weight=args.weight)
            metrics = evaluate(config, paragraphs, questions, mode="open", limit=args.limit or None, show_progress=False)
            print(json.dumps({"set": args.set, "rerank_passages": n, "rerank_weight": config.rerank_weight, **metrics}), flush=True)


def cmd_tune(args) -> None:
    """Recall at each rerank depth and weight, from one pass: each question's fused candidates and
    the cross-encoder's logits for the first `--depth` of them (kept under --work), then re-ordered
    under every setting. Choose on the fusion fold; the held-out sets only confirm."""
    from qa.embedding import model_version
    from qa.encoders import files_key

    cfg = Config.load()
    # The candidates depend on the embedding model (its weights too) and the fusion weights as much as on the cross-encoder.
    model = f"{cfg.model}|{model_version(cfg.model)}"
    retrieval = hashlib.sha256(f"{model}|{cfg.weight_dense}|{cfg.weight_sentence}|{cfg.weight_lexical}".encode()).hexdigest()[:8]
    cache = Path(args.work) / f"tune-{args.set}-{args.depth}-{args.limit}-{cfg.rerank_context_tokens}-{files_key(WEIGHTS)}-{retrieval}.json"
    if cache.exists():
        found, took = json.loads(cache.read_text())
    else:
        found, took = _candidates(args)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps([found, took]))
    print(f"{len(found)} questions of {args.set}; cross-encoder over {args.depth} passages: p50 {np.percentile(took, 50):.0f} ms")
    for depth in sorted({0, 5, 10, 20, args.depth}):
        if depth > args.depth:
            continue
        for weight in (0.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0) if depth else (0.0,):
            r1 = r5 = 0
            for gold, fused, logits in found:
                n = min(depth, len(logits))
                order = sorted(range(n), key=lambda i: -(logits[i] + weight * fused[i])) + list(range(n, len(gold)))
                r1 += gold[order[0]] if order else 0
                r5 += any(gold[i] for i in order[:5])
            recall = {"recall@1": round(r1 / len(found), 4), "recall@5": round(r5 / len(found), 4)}
            print(json.dumps({"set": args.set, "depth": depth, "weight": weight, **recall}))
    # Re-reading only the questions whose first two fused scores are close: what it keeps of the
    # gain, and what it costs the median question.
    weight = cfg.rerank_weight
    for margin in (float("inf"), 0.3, 0.2, 0.15, 0.1, 0.05, 0.02):
        r1 = r5 = 0
        spent = []
        for (gold, fused, logits), ms in zip(found, took):
            n = min(args.depth, len(logits))
            gated = n > 1 and fused[0] - fused[1] < margin
            order = (
                sorted(range(n), key=lambda i: -(logits[i] + weight * fused[i])) + list(range(n, len(gold)))
                if gated
                else list(range(len(gold)))
            )
            r1 += gold[order[0]] if order else 0
            r5 += any(gold[i] for i in order[:5])
            spent.append(ms if gated else 0.0)
        share = float(np.mean([s > 0 for s in spent]))
        print(
            json.dumps(
                {
                    "set": args.set,
                    "depth": args.depth,
                    "weight": weight,
                    "margin": margin,
                    "reranked": round(share, 3),
                    "recall@1": round(r1 / len(found), 4),
                    "recall@5": round(r5 / len(found), 4),
                    "added_ms_p50": round(float(np.percentile(spent, 50)), 1),
                    "added_ms_p90": round(float(np.percentile(spent, 90)), 1),
                }
            )
        )


def _candidates(args) -> tuple[list, list]:
    """Per question: whether each fused candidate is its paragraph, their fused scores, and the
    cross-encoder's logits of the first `--depth`; and the cross-encoder's milliseconds."""
    from qa.embedding import Embedder
    from qa.evaluate import build_eval_index, eval_config
    from qa.index import open_index
    from qa.reranker import Reranker
    from qa.retriever import Retriever

    with tempfile.TemporaryDirectory() as tmp:
        paragraphs_path, questions_path = eval_sets(Path(args.data), args.set, Path(tmp))
        config = eval_config(Config.load(), paragraphs_path)
        embedder = Embedder.from_config(config)
        build_eval_index(config, embedder, read_jsonl(paragraphs_path))
        questions = read_jsonl(questions_path)
    if args.limit:
        questions = random.Random(args.seed).sample(questions, min(args.limit, len(questions)))
    index, retriever, reranker = open_index(config), Retriever(config), Reranker(config)
    reranker.warm()
    found, took = [], []
    for q in questions:
        vector = embedder.embed_questions([q["question"]])[0]
        hits = retriever.retrieve(index, vector, q["question"], max(20, args.depth), None)
        rows = index.store.passages([h.passage_id for h in hits])
        hits = [h for h in hits if h.passage_id in rows]
        started = time.perf_counter()
        head = [rows[h.passage_id] for h in hits[: args.depth]]
        logits = reranker.scores(q["question"], reranker.texts(q["question"], head, index.store.sentences([r.id for r in head])))
        took.append((time.perf_counter() - started) * 1000)
        found.append(([rows[h.passage_id].document_id == q["context_id"] for h in hits], [h.score for h in hits], logits.tolist()))
    return found, took


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv[1:]
    {"prepare": cmd_prepare, "train": cmd_train, "eval": cmd_eval, "tune": cmd_tune}[args.cmd](args)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.reranker")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--work", default=str(WORK), help="mined examples and checkpoints")
    ap.add_argument("--targets", default=str(TARGETS), help="the retriever's targets (made here when missing)")
    ap.add_argument("--seed", type=int, default=SEED)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--limit", type=int, default=12000, help="training questions (all news ones, then SQuAD); 0: all")
    p.add_argument("--pool", type=int, default=20, help="mined negatives kept per question")
    t = sub.add_parser("train")
    t.add_argument("--out", required=True, help="where the weights go (qa/reranker_weights replaces the shipped ones)")
    start_help = "a span reader's weights (its layers), or a reranker's to continue ('' for the bundled model)"
    t.add_argument("--init", default=str(READER_WEIGHTS), help=start_help)
    t.add_argument("--limit", type=int, default=0, help="train on the first N prepared questions")
    t.add_argument("--skip", type=int, default=0, help="start at this prepared question (to continue on new ones)")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--lr", type=float, default=3e-5)
    t.add_argument("--head-lr", type=float, default=10.0, help="the pooler and score head's learning rate, times --lr")
    t.add_argument("--batch", type=int, default=4, help="questions per step")
    t.add_argument("--negatives", type=int, default=7, help="negatives per question")
    t.add_argument("--pool", type=int, default=12, help="drawn from this many of the hardest")
    t.add_argument("--max-len", type=int, default=192)
    t.add_argument("--teacher", default="", help="JSON lines {i, logits}: a teacher cross-encoder's logits over example i's candidates")
    t.add_argument("--distill", type=float, default=0.5, help="with --teacher: the teacher's share of the loss")
    t.add_argument("--checkpoint-every", type=int, default=50, help="steps")
    t.add_argument("--stop-after", type=int, default=0, help=argparse.SUPPRESS)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--device", default="auto", help="auto (cuda when torch sees one), cpu, cuda")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    e = sub.add_parser("eval")
    e.add_argument("--set", choices=("squad13", "rtqa-new", "rtqa-all", "fusion"), default="squad13")
    e.add_argument("--passages", default="0,10", help="rerank depths to measure (0: off)")
    e.add_argument("--weight", type=float, default=None, help="QA_RERANK_WEIGHT for this run")
    e.add_argument("--reader", default="span", help="the service's; its likely answers list their passage first (QA_ANSWER_PASSAGE_FIRST)")
    e.add_argument("--limit", type=int, default=0)
    u = sub.add_parser("tune")
    u.add_argument("--set", choices=("squad13", "rtqa-new", "rtqa-all", "fusion"), default="fusion")
    u.add_argument("--depth", type=int, default=20, help="passages the cross-encoder reads per question")
    u.add_argument("--limit", type=int, default=0, help="a random sample of this many questions")
    return ap


if __name__ == "__main__":
    main()
