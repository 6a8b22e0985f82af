"""Both sides of the retriever trained: questions and passages go through one fine-tuned encoder.

    python -m training.dual_encoder prepare                       # passages and sentences as the index splits them
    python -m training.dual_encoder train --out DIR [--epochs 1]  # resumable; writes the trained layers to DIR
    QA_MODEL=FOLDER python -m training.retrieval eval --set squad13|rtqa-new   # measured held out

`make train-retriever` makes the shipped layers (`--out qa/retriever_weights`, in two runs: the
Makefile has the commands); nothing writes over them unless `--out` names them.

Training the question side alone against fixed passage vectors (tried first, docs/evaluation.md)
learned its own data and carried little to held-out questions. Here the passages move too, so an
index must be rebuilt, and the negatives are the other passages of a batch. A batch holds a few
articles, several passages of each, with every question of those passages: the passages of the same
article are the hard negatives (they share the question's topic and names), and each passage's one
forward pass serves all its questions (about 4.5 a paragraph on SQuAD). The sentence vectors the
best-sentence retriever reads are pooled from the same token states, as the index pools them, and
trained with their own loss at no extra forward pass.

Folds and data are `training.retrieval.load_fold`'s: SQuAD train but
the calibration fold, RealTimeQA before 2021/07; measured on squad11_dev13 and RealTimeQA from
2021/08, never seen.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

from qa.config import BUNDLED_MODEL, Config
from qa.embedding import ENCODER_FILE
from training.common import DATA, SEED, Checkpoint, Progress, device_for, linear_schedule, optimizer_step, trained_state, use_bf16
from training.retrieval import answer_start, load_fold

WORK = Path(__file__).resolve().parent.parent / ".cache" / "dual-encoder"
META_FILE = "dual_encoder.json"
#: What ships and trains: the transformer layers (the token embeddings stay frozen, the bundled model's).
SHIPS = ("encoder.layer.",)


def cmd_prepare(args) -> None:
    """Passage texts and sentence spans exactly as the index embeds them, and each question's
    positive passage and sentences (those holding its answer)."""
    from qa.embedding import Embedder
    from qa.evaluate import paragraphs_as_documents
    from qa.index.build import split_documents

    started = time.time()
    paragraphs, questions = load_fold(Path(args.data), "train")
    config = Config.load()
    embedder = Embedder.from_config(config)
    docs = paragraphs_as_documents(paragraphs)
    group_of = {str(p["id"]): (p.get("title") or "") if not str(p["id"]).startswith("rtqa") else "news" for p in paragraphs}
    passages, of_doc = [], {}
    for doc, split in split_documents(config, embedder, docs):  # as every index splits them
        shift = len(doc.title) + 1
        for p in split:
            of_doc.setdefault(doc.id, []).append(len(passages))
            passages.append(
                {
                    "text": f"{doc.title}\n{p.text}",
                    "doc": doc.id,
                    "group": group_of[doc.id],
                    "start": p.start,
                    "end": p.start + len(p.text),
                    "shift": shift,
                    "sentences": [(shift + s.start, shift + s.end) for s in p.sentences],
                }
            )
    context = {str(p["id"]): p["context"] for p in paragraphs}
    rows = []
    for q in questions:
        doc = str(q["context_id"])
        if doc not in of_doc:
            continue
        a = answer_start(q, context[doc])
        holding = [k for k in of_doc[doc] if a >= 0 and passages[k]["start"] <= a < passages[k]["end"]]
        for k in holding or of_doc[doc]:  # the passage holding the answer; without an offset, each of the paragraph's
            p = passages[k]
            local = a - p["start"] + p["shift"]  # the answer's offset in "title\ntext"
            sents = [j for j, (s, e) in enumerate(p["sentences"]) if a >= 0 and s <= local < e]
            rows.append({"question": q["question"], "passage": k, "sentences": sents})
            break
    out = Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    (out / "passages.json").write_text(json.dumps(passages))
    (out / "questions.json").write_text(json.dumps(rows))
    print(
        f"{len(docs)} paragraphs, {len(passages)} passages, {sum(len(p['sentences']) for p in passages)} sentences, "
        f"{len(rows)} questions ({sum(bool(r['sentences']) for r in rows)} with an answer sentence); {time.time() - started:.0f}s",
        flush=True,
    )


def batches(passages: list[dict], epoch: int, seed: int, per_group: int, groups: int, news_repeat: int) -> list[list[int]]:
    """One epoch's batches of passage indices: each batch is `groups` chunks of `per_group` passages,
    a chunk from one article (news passages, one a quiz question, are chunked at random)."""
    rng = random.Random(seed * 1000 + epoch)
    by_group: dict[str, list[int]] = {}
    for k, p in enumerate(passages):
        by_group.setdefault(p["group"], []).append(k)
    chunks = []
    for name, ids in sorted(by_group.items()):
        for _ in range(news_repeat if name == "news" else 1):
            ids = ids[:]
            rng.shuffle(ids)
            chunks += [ids[i : i + per_group] for i in range(0, len(ids), per_group)]
    rng.shuffle(chunks)
    return [sum(chunks[i : i + groups], []) for i in range(0, len(chunks), groups)]


def cmd_train(args) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from qa.embedding import resolve_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = device_for(args.device)
    bf16 = use_bf16(device, args.precision)
    hf_logging.set_verbosity_error()
    work = Path(args.work)
    passages = json.loads((work / "passages.json").read_text())
    rows = json.loads((work / "questions.json").read_text())
    if args.limit:
        keep = set(random.Random(args.seed).sample(range(len(passages)), min(args.limit, len(passages))))
        rows = [r for r in rows if r["passage"] in keep]
        passages = [p if k in keep else {**p, "group": ""} for k, p in enumerate(passages)]
    asked: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        asked.setdefault(r["passage"], []).append(i)
    trainable = [p if k in asked else {**p, "group": ""} for k, p in enumerate(passages)]
    trainable = {k: p for k, p in enumerate(trainable) if p["group"]}
    keys = sorted(trainable)

    def epoch_batches(epoch: int) -> list[list[int]]:
        local = batches([trainable[k] for k in keys], epoch, args.seed, args.per_article, args.articles, args.news_repeat)
        return [[keys[j] for j in b] for b in local]

    base = resolve_model(BUNDLED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(base)
    max_len = int(json.loads((Path(base) / "sentence_bert_config.json").read_text())["max_seq_length"])
    model = AutoModel.from_pretrained(base).to(device)
    if args.init:  # go on from an earlier run's layers (with --skip: over the batches it did not see)
        from safetensors.torch import load_file

        model.load_state_dict({k: v.float() for k, v in load_file(str(Path(args.init) / ENCODER_FILE)).items()}, strict=False)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(SHIPS))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    per_epoch = len(epoch_batches(0))
    steps = min(args.epochs * per_epoch - args.skip, args.max_steps or 1 << 30)
    sched = linear_schedule(opt, steps)
    print(
        f"training on {device}, {'bf16' if bf16 else 'fp32'}: {len(rows)} questions, {len(keys)} passages, {per_epoch} batches an epoch",
        flush=True,
    )
    run = f"{args.seed}-{steps}-{args.lr}-{args.articles}x{args.per_article}-{args.scale}-{args.sentence_weight}-{args.limit}"
    run += f"-{args.skip}-{Path(args.init).name}"
    ckpt = Checkpoint(work / f"checkpoint-{run}.pt", model, opt, sched, SHIPS)
    step, trained_s = ckpt.resume(device)

    def mean_pool(states, mask):
        m = mask.unsqueeze(-1).float()
        return torch.nn.functional.normalize((states.float() * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    def loss_over(logits, positives: list[list[int]]):
        """-log of the softmax mass on each question's positives (questions without one do not count)."""
        keep = [j for j, pos in enumerate(positives) if pos]
        if not keep:
            return logits.sum() * 0
        mask = torch.zeros_like(logits, dtype=torch.bool)
        for j in keep:
            mask[j, positives[j]] = True
        rows_t = torch.tensor(keep, device=logits.device)
        sub = logits[rows_t]
        return (torch.logsumexp(sub, 1) - torch.logsumexp(sub.masked_fill(~mask[rows_t], float("-inf")), 1)).mean()

    model.train()
    progress = Progress(steps, 20, "questions", trained_s)
    while step < steps:
        epoch, k = divmod(step + args.skip, per_epoch)
        batch = epoch_batches(epoch)[k]
        texts = [passages[i]["text"] for i in batch]
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")
        # Sentence pooling masks, as the index pools sentences (qa.embedding.pool_spans).
        sent_masks, sent_of = [], {}
        for b, i in enumerate(batch):
            starts, ends = offsets[b, :, 0], offsets[b, :, 1]
            real = (ends > starts) & enc["attention_mask"][b].bool()
            for j, (s, e) in enumerate(passages[i]["sentences"]):
                inside = real & (starts < e) & (ends > s)
                row = torch.zeros(offsets.shape[1])
                row[inside if inside.any() else enc["attention_mask"][b].bool()] = 1.0
                sent_of[(i, j)] = len(sent_masks)
                sent_masks.append((b, row))
        qs = [r for i in batch for r in asked[i]]
        q_enc = tokenizer([rows[r]["question"] for r in qs], padding=True, truncation=True, max_length=64, return_tensors="pt").to(device)
        enc = enc.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            p_states = model(**enc).last_hidden_state
            q_states = model(**q_enc).last_hidden_state
        P = mean_pool(p_states, enc["attention_mask"])
        Q = mean_pool(q_states, q_enc["attention_mask"])
        where = {i: b for b, i in enumerate(batch)}
        loss = loss_over(args.scale * Q @ P.T, [[where[rows[r]["passage"]]] for r in qs])
        if args.sentence_weight and sent_masks:
            owner = torch.tensor([b for b, _ in sent_masks], device=device)
            M = torch.stack([row for _, row in sent_masks]).to(device)
            summed = torch.einsum("st,std->sd", M, p_states.float()[owner])
            S = torch.nn.functional.normalize(summed / M.sum(1, keepdim=True).clamp(min=1), dim=-1)
            pos = [[sent_of[(rows[r]["passage"], j)] for j in rows[r]["sentences"]] for r in qs]
            loss = loss + args.sentence_weight * loss_over(args.scale * Q @ S.T, pos)
        step += 1
        progress.update(step, optimizer_step(loss, params, opt, sched), len(qs))
        if step % args.checkpoint_every == 0 or step == steps:
            ckpt.save(step, progress.trained_s)
        if args.stop_after and step >= args.stop_after:  # the tests' stand-in for a kill
            print(f"stopped at step {step}", flush=True)
            return
    save(model, Path(args.out), args, device, bf16, len(rows), len(keys), progress.trained_s)


def save(model, out: Path, args, device, bf16: bool, questions: int, passages: int, trained_s: float) -> None:
    """The trained layers (fp16) and what made them; with --folder, also a whole model folder to try
    with QA_MODEL=FOLDER."""
    from safetensors.torch import save_file

    from qa.embedding import resolve_model

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().half().contiguous() for k, v in trained_state(model, SHIPS).items()}, str(out / ENCODER_FILE))
    meta = {
        "base_model": BUNDLED_MODEL,
        "trains": "questions and passages (the transformer layers; token embeddings frozen)",
        "command": "python -m training.dual_encoder train " + " ".join(args.argv),
        "seed": args.seed,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "init": args.init,
        "skip": args.skip,
        "lr": args.lr,
        "batch": f"{args.articles} articles x {args.per_article} passages, with all their questions",
        "scale": args.scale,
        "sentence_weight": args.sentence_weight,
        "news_repeat": args.news_repeat,
        "device": str(device),
        "precision": "bf16" if bf16 else "fp32",
        "train_questions": questions,
        "train_passages": passages,
        "train_s": round(trained_s),
    }
    if args.init and (Path(args.init) / META_FILE).exists():  # the run this one went on from, and its own
        meta["continues"] = json.loads((Path(args.init) / META_FILE).read_text())
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if args.folder:
        folder = Path(args.folder)
        shutil.rmtree(folder, ignore_errors=True)
        base = Path(resolve_model(BUNDLED_MODEL))
        shutil.copytree(base, folder, ignore=shutil.ignore_patterns("model.safetensors", "pytorch_model.bin", "onnx", "*.onnx"))
        from safetensors.torch import load_file

        state = load_file(str(base / "model.safetensors"))
        state.update({k: v.detach().cpu().to(state[k].dtype).contiguous() for k, v in trained_state(model, SHIPS).items()})
        save_file(state, str(folder / "model.safetensors"))
    print(f"saved {out / ENCODER_FILE}; trained {trained_s:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv[1:]
    {"prepare": cmd_prepare, "train": cmd_train}[args.cmd](args)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.dual_encoder")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--work", default=str(WORK), help="prepared data and checkpoints")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    t = sub.add_parser("train")
    t.add_argument("--out", required=True, help="where the layers go (qa/retriever_weights replaces the shipped ones)")
    t.add_argument("--folder", default="", help="also write a whole model folder here (for QA_MODEL)")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--max-steps", type=int, default=0, help="stop the schedule here (a part of an epoch)")
    t.add_argument("--init", default="", help="start from the layers an earlier run wrote (its --out)")
    t.add_argument("--skip", type=int, default=0, help="batches of the first epoch to leave out (those the --init run took)")
    t.add_argument("--lr", type=float, default=2e-5)
    t.add_argument("--articles", type=int, default=3, help="articles a batch")
    t.add_argument("--per-article", type=int, default=8, help="passages of each article a batch")
    t.add_argument("--news-repeat", type=int, default=2, help="times each news passage is seen an epoch")
    t.add_argument("--scale", type=float, default=20.0, help="cosine -> logit (1 / temperature)")
    t.add_argument("--sentence-weight", type=float, default=1.0, help="weight of the loss over sentences")
    t.add_argument("--limit", type=int, default=0, help="train on this many passages (a quick run)")
    t.add_argument("--checkpoint-every", type=int, default=50, help="steps")
    t.add_argument("--stop-after", type=int, default=0, help=argparse.SUPPRESS)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--device", default="auto", help="auto (cuda when torch sees one), cpu, cuda")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    t.add_argument("--seed", type=int, default=SEED)
    return ap


if __name__ == "__main__":
    main()
