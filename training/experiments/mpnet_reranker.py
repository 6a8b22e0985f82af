"""The record of one experiment (2026-12-02, docs/evaluation.md, "A larger cross-encoder"): a
cross-encoder on all-mpnet-base-v2 (12 layers of 768, from PyPI), trained on the reranker's mined
examples and scored over the service's fused candidates. Not the shipped recipe: `qa.reranker`
loads BERT-shaped models only, and this one reads 8 times slower.

    python -m training.experiments.mpnet_reranker dump --set fusion|rtqa-new|squad13 --out DUMP
    python -m training.experiments.mpnet_reranker train --base MPNET --examples EXAMPLES.json --limit 2400 --out W.pt
    python -m training.experiments.mpnet_reranker score --base MPNET --weights W.pt --dump DUMP --out LOGITS.json

EXAMPLES.json: `python -m training.reranker mine --limit 6000 --news-repeat 2` at commit 89832b2.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from training.common import DATA
from training.retrieval import eval_sets


def batch_logits(model, tokenizer, questions: list[str], texts: list[str]):
    import torch

    enc = tokenizer(questions, texts, truncation="only_second", max_length=192, padding="longest", return_tensors="pt")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(**enc).logits.float().squeeze(-1)


def cmd_dump(args) -> None:
    """Each question's fused top 10 as the reranker reads them, whether each is its paragraph, fused scores."""
    from qa.config import Config
    from qa.embedding import Embedder
    from qa.evaluate import build_eval_index, eval_config
    from qa.index import open_index
    from qa.reranker import Reranker
    from qa.retriever import Retriever
    from qa.scoring import read_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        paragraphs, questions = eval_sets(Path(DATA), args.set, Path(tmp))
        config = eval_config(Config.load(), paragraphs)
        embedder = Embedder.from_config(config)
        build_eval_index(config, embedder, read_jsonl(paragraphs))
        asked = read_jsonl(questions)
    index, retriever, reranker = open_index(config), Retriever(config), Reranker(config)
    with open(args.out, "w") as f:
        for q in asked:
            vector = embedder.embed_questions([q["question"]])[0]
            hits = retriever.retrieve(index, vector, q["question"], 20, None)
            rows = index.store.passages([h.passage_id for h in hits])
            hits = [h for h in hits if h.passage_id in rows]
            head = [rows[h.passage_id] for h in hits[:10]]
            texts = reranker.texts(q["question"], head, index.store.sentences([r.id for r in head]))
            gold = [rows[h.passage_id].document_id == q["context_id"] for h in hits]
            f.write(json.dumps({"question": q["question"], "gold": gold, "fused": [h.score for h in hits], "texts": texts}) + "\n")


def cmd_train(args) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(2)
    torch.manual_seed(13)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    mined = json.loads(Path(args.examples).read_text())
    texts, examples = mined["texts"], mined["examples"][: args.limit]
    model = AutoModelForSequenceClassification.from_pretrained(args.base, num_labels=1)
    for p in model.base_model.embeddings.parameters():
        p.requires_grad_(False)
    body = list(model.base_model.encoder.parameters())
    head = [p for n, p in model.named_parameters() if not n.startswith(("mpnet.", "bert."))]
    opt = torch.optim.AdamW([{"params": body, "lr": args.lr}, {"params": head, "lr": args.lr * 10}], weight_decay=0.01)
    steps = len(examples) // 4
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    order = list(range(len(examples)))
    random.Random(13).shuffle(order)
    model.train()
    started, losses = time.time(), []
    for step in range(steps):
        batch = [examples[i] for i in order[step * 4 : (step + 1) * 4]]
        groups = []
        for k, ex in enumerate(batch):
            rng, pool = random.Random(f"13-{step}-{k}"), ex["negatives"][:10]
            groups.append([ex["positive"], *[pool[j] for j in sorted(rng.sample(range(len(pool)), min(5, len(pool))))]])
        size = min(len(g) for g in groups)
        groups = [g[:size] for g in groups]
        questions = [ex["question"] for ex, g in zip(batch, groups) for _ in g]
        logits = batch_logits(model, tokenizer, questions, [texts[p] for g in groups for p in g])
        loss = torch.nn.functional.cross_entropy(logits.view(len(groups), size), torch.zeros(len(groups), dtype=torch.long))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(body + head, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        if (step + 1) % 25 == 0:
            print(f"step {step + 1}/{steps} loss {sum(losses[-25:]) / 25:.3f} {time.time() - started:.0f}s", flush=True)
    torch.save(model.state_dict(), args.out)


def cmd_score(args) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForSequenceClassification.from_pretrained(args.base, num_labels=1)
    model.load_state_dict(torch.load(args.weights))
    model.eval()
    rows = [json.loads(line) for line in open(args.dump)]
    started = time.time()
    with torch.inference_mode():
        logits = [batch_logits(model, tokenizer, [r["question"]] * len(r["texts"]), r["texts"]).tolist() for r in rows]
    Path(args.out).write_text(json.dumps(logits))
    print(f"{len(rows)} questions, {1000 * (time.time() - started) / len(rows):.0f} ms a question (torch, bf16)")


def cmd_teach(args) -> None:
    """The cross-encoder's logits over each training example's positive and negatives (a teacher's
    soft labels for `training.reranker train --teacher`); one JSON line per example, resumable."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForSequenceClassification.from_pretrained(args.base, num_labels=1)
    model.load_state_dict(torch.load(args.weights))
    model.eval()
    mined = json.loads(Path(args.examples).read_text())
    texts, examples = mined["texts"], mined["examples"][: args.limit or None]
    out = Path(args.out)
    done = {json.loads(line)["i"] for line in out.open()} if out.exists() else set()
    seen: dict[str, list[float]] = {}
    started = time.time()
    with out.open("a") as f, torch.inference_mode():
        for i, ex in enumerate(examples):
            if i in done:
                continue
            read = [texts[p] for p in [ex["positive"], *ex["negatives"]]]
            key = json.dumps([ex["question"], read])
            if key not in seen:  # news questions appear twice, read the same way
                seen[key] = [round(x, 4) for x in batch_logits(model, tokenizer, [ex["question"]] * len(read), read).tolist()]
            f.write(json.dumps({"i": i, "logits": seen[key]}) + "\n")
            f.flush()
            if (i + 1) % 100 == 0:
                print(f"{i + 1}/{len(examples)} {time.time() - started:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.experiments.mpnet_reranker")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--set", choices=("squad13", "rtqa-new", "fusion"), required=True)
    d.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--base", required=True)
    t.add_argument("--examples", required=True)
    t.add_argument("--limit", type=int, default=2400)
    t.add_argument("--lr", type=float, default=2e-5)
    t.add_argument("--out", required=True)
    s = sub.add_parser("score")
    s.add_argument("--base", required=True)
    s.add_argument("--weights", required=True)
    s.add_argument("--dump", required=True)
    s.add_argument("--out", required=True)
    c = sub.add_parser("teach")
    c.add_argument("--base", required=True)
    c.add_argument("--weights", required=True)
    c.add_argument("--examples", required=True)
    c.add_argument("--limit", type=int, default=0)
    c.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    {"dump": cmd_dump, "train": cmd_train, "score": cmd_score, "teach": cmd_teach}[args.cmd](args)


if __name__ == "__main__":
    main()
