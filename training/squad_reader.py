"""The span reader's one recipe: trained on all of SQuAD v1.1 train, resumable, on a CPU or a GPU.

    python -m training.squad_reader train --out DIR [--epochs 1] [--limit N] [--checkpoints DIR]
    python -m training.squad_reader train --base ENCODER --out DIR      # another encoder, e.g. a teacher
    python -m training.squad_reader train --teacher DIR --out DIR [--distill 0.5]  # the bundled model learning from it
    python -m training.squad_reader score --models shipped,DIR [--limit N]

`make train-reader` makes the shipped reader: `python -m training.squad_reader train --out
qa/reader_weights`, then `python -m training.calibrate fit --out qa/reader_weights` (the score's
calibration). Nothing writes over qa/reader_weights unless `--out` names it. The held-out figures
(the README's) come from `python -m training.reader_eval --set squad13|rtqa --mode gold|open`.

Data (../shared/data, never committed):
- trains on `squad11_train` (all 442 articles but the CALIBRATION fold) and the RealTimeQA training
  split (`answer_in_context`, md5(question id) % 5 != 0);
- the CALIBRATION fold (squad11_train articles with md5(title) % 40 == 0) is never trained on: the
  score's calibration is fitted there (`python -m training.calibrate`);
- all 13 articles of `squad11_dev13` and the RealTimeQA held-out split are never seen: figures are
  measured there (`python -m training.reader_eval --set squad13`).

Windows are what the service reads: the question and about `--context-tokens` tokens of contiguous
sentences around the answer, split into sentences by the service's own splitter
(`qa.passages.sentence_spans`; the service reads the question's best sentences, 96 tokens by default),
so a window is about a third of the old 384-token ones and an epoch of 100,000 questions fits a CPU.
No-answer targets ([CLS]) come from three kinds of windows:
- sentences of the same paragraph that do not hold the answer (`--same-paragraph`),
- another paragraph of the article (`--other-paragraph`),
- hard negatives (`--hard`): the question with its key name, number or year swapped for another of
  the same kind from the same article and absent from the window, read with the answer's own window,
  so that the window holds a plausible-looking wrong span (SQuAD 2.0's unanswerable kind).

The run is resumable: every `--checkpoint-every` steps the trained weights, the optimiser and the
step go to `--checkpoints`; running the same command again continues from the last one (the batch
order is a function of the seed, so the result is the same as an uninterrupted run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import time
from pathlib import Path

import numpy as np

from qa.config import BUNDLED_MODEL
from qa.passages import sentence_spans
from qa.readers.span import META_FILE, TOP_FILE
from qa.scoring import read_jsonl
from training.common import (
    DATA,
    RTQA,
    SEED,
    SQUAD_TRAIN,
    Checkpoint,
    Progress,
    calibration_fold,
    device_for,
    linear_schedule,
    optimizer_step,
    rtqa_held_out,
    trained_state,
    use_bf16,
)

CHECKPOINTS = Path(__file__).resolve().parent.parent / ".cache" / "reader-train"


# --------------------------------------------------------------------------------------- data


def load_questions(data: Path, fold: str = "train") -> list[dict]:
    """Questions with their paragraph: fold "train" (training), "calibration" (the calibration fold)."""
    out = []
    for name in (SQUAD_TRAIN, RTQA):
        paragraphs = {p["id"]: p for p in read_jsonl(data / name / "paragraphs.jsonl")}
        for q in read_jsonl(data / name / "questions.jsonl"):
            if not q.get("answers") or (name == RTQA and not q.get("answer_in_context")):
                continue
            p = paragraphs.get(q["context_id"])
            if p is None:
                continue
            title = p.get("title") or p["id"]
            if name == RTQA:
                if rtqa_held_out(q["id"]) or fold != "train":
                    continue
            elif calibration_fold(title) != (fold == "calibration"):
                continue
            ctx, a = p["context"], q["answers"][0]
            start = a["answer_start"]
            if ctx[start : start + len(a["text"])] != a["text"]:
                start = ctx.find(a["text"])
                if start < 0:
                    continue
            out.append(
                {
                    "id": q["id"],
                    "question": q["question"],
                    "context_id": p["id"],
                    "paragraph": ctx,
                    "title": title,
                    "start": start,
                    "end": start + len(a["text"]),
                    "answers": [x["text"] for x in q["answers"]],
                }
            )
    return out


def window(sentences: list[tuple[int, int]], lengths: list[int], first: int, last: int, budget: int, rng: random.Random) -> tuple[int, int]:
    """Sentence indices [lo, hi] around first..last, grown at random to either side within `budget` tokens."""
    lo, hi = first, last
    used = sum(lengths[lo : hi + 1])
    while True:
        sides = [s for s in ("left", "right") if (s == "left" and lo > 0) or (s == "right" and hi < len(sentences) - 1)]
        sides = [s for s in sides if used + lengths[lo - 1 if s == "left" else hi + 1] <= budget]
        if not sides:
            return lo, hi
        if rng.choice(sides) == "left":
            lo -= 1
            used += lengths[lo]
        else:
            hi += 1
            used += lengths[hi]


_YEAR = re.compile(r"\b(1[5-9]\d\d|20\d\d)\b")
_NUMBER = re.compile(r"\b\d[\d,.]*\b")
_NAME = re.compile(r"(?<!^)(?<![.?!] )\b[A-Z][a-z]+(?: (?:of |de |the )?[A-Z][a-z]+)*")


def swap_key_term(question: str, article_text: str, window_text: str, rng: random.Random) -> str | None:
    """The question with a year, number or name swapped for another of its kind from the article that
    the window does not hold; None when there is none to swap."""
    for pattern in (_YEAR, _NUMBER, _NAME):
        found = [m for m in pattern.finditer(question) if m.group(0) in window_text]
        if not found:
            continue
        m = rng.choice(found)
        others = sorted({x.group(0) for x in pattern.finditer(article_text)} - {m.group(0)})
        others = [o for o in others if o not in window_text and o not in question]
        if others:
            return question[: m.start()] + rng.choice(others) + question[m.end() :]
    return None


def build_examples(questions: list[dict], tokenizer, args, rng: random.Random) -> list[dict]:
    """(question, context, answer offsets in the context or None) for every training window."""
    by_title: dict[str, dict[str, str]] = {}
    for q in questions:
        by_title.setdefault(q["title"], {})[q["context_id"]] = q["paragraph"]
    articles = {t: "\n".join(ps.values()) for t, ps in by_title.items()}
    split: dict[str, tuple[list[tuple[int, int]], list[int]]] = {}
    for paragraphs in by_title.values():
        for pid, text in paragraphs.items():
            spans = sentence_spans(text) or [(0, len(text))]  # split as the service splits passages (qa.passages)
            lengths = [len(ids) for ids in tokenizer([text[a:b] for a, b in spans], add_special_tokens=False)["input_ids"]]
            split[pid] = (spans, lengths)
    out: list[dict] = []
    kinds = {"answer": 0, "same_paragraph": 0, "other_paragraph": 0, "hard": 0}
    for q in questions:
        spans, lengths = split[q["context_id"]]
        first = next((i for i, (_, b) in enumerate(spans) if b > q["start"]), len(spans) - 1)
        last = next((i for i, (_, b) in enumerate(spans) if b >= q["end"]), len(spans) - 1)
        lo, hi = window(spans, lengths, first, last, args.context_tokens, rng)
        a, b = spans[lo][0], spans[hi][1]
        text = q["paragraph"]
        out.append({"question": q["question"], "context": text[a:b], "start": q["start"] - a, "end": q["end"] - a})
        kinds["answer"] += 1
        if rng.random() < args.same_paragraph:  # sentences of the paragraph that do not hold the answer
            free = [i for i, (x, y) in enumerate(spans) if not any(ans in text[x:y] for ans in q["answers"])]
            if free:
                i = rng.choice(free)
                lo2, hi2 = window(spans, lengths, i, i, args.context_tokens, rng)
                ctx = text[spans[lo2][0] : spans[hi2][1]]
                if not any(ans in ctx for ans in q["answers"]):
                    out.append({"question": q["question"], "context": ctx, "start": None, "end": None})
                    kinds["same_paragraph"] += 1
        if rng.random() < args.other_paragraph:
            others = [pid for pid, t in by_title[q["title"]].items() if pid != q["context_id"] and not any(x in t for x in q["answers"])]
            if others:
                pid = rng.choice(others)
                spans2, lengths2 = split[pid]
                i = rng.randrange(len(spans2))
                lo2, hi2 = window(spans2, lengths2, i, i, args.context_tokens, rng)
                out.append(
                    {
                        "question": q["question"],
                        "context": by_title[q["title"]][pid][spans2[lo2][0] : spans2[hi2][1]],
                        "start": None,
                        "end": None,
                    }
                )
                kinds["other_paragraph"] += 1
        if rng.random() < args.hard:
            swapped = swap_key_term(q["question"], articles[q["title"]], text[a:b], rng)
            if swapped is not None:
                out.append({"question": swapped, "context": text[a:b], "start": None, "end": None})
                kinds["hard"] += 1
    print(f"windows: {json.dumps(kinds)}", flush=True)
    return out


def encode_windows(tokenizer, windows: list[dict], max_len: int, **kwargs):
    """Each window's question and context as the model reads them (the context cut to fit), with offsets."""
    questions, contexts = [w["question"] for w in windows], [w["context"] for w in windows]
    return tokenizer(questions, contexts, truncation="only_second", max_length=max_len, return_offsets_mapping=True, **kwargs)


def featurize(tokenizer, examples: list[dict], max_len: int) -> list[dict]:
    """Input ids, token types, and start/end token targets (0, the [CLS] token, for no answer)."""
    feats = []
    for k in range(0, len(examples), 4096):
        chunk = examples[k : k + 4096]
        enc = encode_windows(tokenizer, chunk, max_len)
        for w, e in enumerate(chunk):
            seq, offsets = enc.sequence_ids(w), enc["offset_mapping"][w]
            s_tok = e_tok = 0
            if e["start"] is not None:
                ctx = [t for t, s in enumerate(seq) if s == 1]
                inside = [t for t in ctx if offsets[t][1] > e["start"] and offsets[t][0] < e["end"]]
                if not inside:
                    continue  # the answer was cut off by truncation: no clean target
                s_tok, e_tok = inside[0], inside[-1]
            feat = {"input_ids": enc["input_ids"][w], "start": s_tok, "end": e_tok, "example": k + w}
            if "token_type_ids" in enc:  # BERT's; MPNet has none
                feat["token_type_ids"] = enc["token_type_ids"][w]
            feats.append(feat)
    return feats


def teacher_targets(teacher: str, tokenizer, examples: list[dict], feats: list[dict], max_len: int, device, batch: int = 32) -> None:
    """Adds a teacher model's start and end logits, on the student's tokens, to every window.

    The teacher may split words differently (another encoder): a student token takes the logit of
    the teacher token that starts (for a start) or ends (for an end) at the same character of the
    context; [CLS], the no-answer position, takes the teacher's first token's; tokens without a
    counterpart (the question, separators, a split the teacher does not share) get -1e4, nothing.
    """
    import torch

    from qa.readers.span import load_qa_model

    model, teacher_tokenizer = load_qa_model(None if teacher == "shipped" else teacher)
    model.to(device)
    started = time.time()
    for k in range(0, len(feats), batch):
        chunk = feats[k : k + batch]
        windows = [examples[f["example"]] for f in chunk]
        mine = encode_windows(tokenizer, windows, max_len)
        theirs = encode_windows(teacher_tokenizer, windows, max_len, padding=True, return_tensors="pt")
        their_offsets = theirs.pop("offset_mapping").tolist()
        with torch.inference_mode():
            out = model(**{name: v.to(device) for name, v in theirs.items()})
        starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        for j, f in enumerate(chunk):
            if mine["input_ids"][j] != f["input_ids"]:
                raise ValueError("the student's windows changed between featurizing and distilling")
            seq = theirs.sequence_ids(j)
            by_start = {their_offsets[j][i][0]: i for i, s in enumerate(seq) if s == 1}
            by_end = {their_offsets[j][i][1]: i for i, s in enumerate(seq) if s == 1}
            t_start = np.full(len(f["input_ids"]), -1e4, np.float32)
            t_end = t_start.copy()
            t_start[0], t_end[0] = starts[j, 0], ends[j, 0]
            for i, s in enumerate(mine.sequence_ids(j)):
                if s == 1:
                    a, b = mine["offset_mapping"][j][i]
                    if a in by_start:
                        t_start[i] = starts[j, by_start[a]]
                    if b in by_end:
                        t_end[i] = ends[j, by_end[b]]
            f["t_start"], f["t_end"] = t_start.astype(np.float16), t_end.astype(np.float16)
        if (k // batch) % 50 == 0:
            print(f"teacher: {k + len(chunk)}/{len(feats)} windows in {time.time() - started:.0f}s", flush=True)


# --------------------------------------------------------------------------------------- training


def batches(feats: list[dict], size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of similar length, in an order fixed by (seed, epoch): a resumed run sees the same ones."""
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(feats)))
    rng.shuffle(order)
    # Sort within chunks of 50 batches: little padding, still a random mix.
    chunk = size * 50
    order = [i for c in range(0, len(order), chunk) for i in sorted(order[c : c + chunk], key=lambda i: len(feats[i]["input_ids"]))]
    out = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(out)
    return out


def shipped_prefixes(model) -> tuple[str, ...]:
    """What ships: the encoder layers and the span head (the embeddings stay the bundled model's)."""
    return ("qa_outputs.", f"{model.base_model_prefix}.encoder.layer.")  # bert. for the bundled model


def signature(args, n_feats: int) -> str:
    keys = (
        "seed",
        "epochs",
        "lr",
        "head_lr",
        "layer_decay",
        "batch",
        "context_tokens",
        "max_len",
        "same_paragraph",
        "other_paragraph",
        "hard",
        "limit",
        "init",
    )
    # Added later: only where they differ from the defaults, so that older runs keep their checkpoints.
    defaults = {"base": BUNDLED_MODEL, "teacher": "", "distill": 0.5, "temperature": 2.0}
    later = {k: getattr(args, k) for k, default in defaults.items() if getattr(args, k) != default}
    return hashlib.sha256(json.dumps([n_feats, *[getattr(args, k) for k in keys], *([later] if later else [])]).encode()).hexdigest()[:16]


def cmd_train(args) -> None:
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from qa.embedding import resolve_model

    torch.set_num_threads(args.threads)
    device = device_for(args.device)
    bf16 = use_bf16(device, args.precision)
    print(
        f"training on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{args.threads} threads'}), "
        f"{'bf16 autocast' if bf16 else 'fp32'}",
        flush=True,
    )
    started = time.time()
    hf_logging.set_verbosity_error()
    base = resolve_model(args.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    rng = random.Random(args.seed)
    questions = load_questions(Path(args.data), "train")
    rng.shuffle(questions)
    if args.limit:
        questions = questions[: args.limit]
    print(f"{len(questions)} training questions ({sum(q['id'].startswith('squad') for q in questions)} SQuAD)", flush=True)
    examples = build_examples(questions, tokenizer, args, rng)
    feats = featurize(tokenizer, examples, args.max_len)
    if args.teacher:
        teacher_targets(args.teacher, tokenizer, examples, feats, args.max_len, device)
    mean_len = float(np.mean([len(f["input_ids"]) for f in feats]))
    print(f"{len(feats)} windows, {mean_len:.0f} tokens on average; data ready in {time.time() - started:.0f}s", flush=True)

    torch.manual_seed(args.seed)
    model = AutoModelForQuestionAnswering.from_pretrained(base).to(device)
    ships = shipped_prefixes(model)
    if args.init:
        # Another pass over the data, with a schedule of its own, on top of weights already trained.
        from safetensors.torch import load_file

        start = load_file(str(Path(args.init) / TOP_FILE))
        model.load_state_dict({k: v.float() for k, v in start.items()}, strict=False)
        print(f"starting from {Path(args.init) / TOP_FILE}", flush=True)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = list(model.base_model.encoder.layer)
    groups = [
        {"params": list(layer.parameters()), "lr": args.lr * args.layer_decay ** (len(layers) - 1 - i)} for i, layer in enumerate(layers)
    ]
    groups.append({"params": list(model.qa_outputs.parameters()), "lr": args.lr * args.head_lr})
    params = [p for g in groups for p in g["params"]]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.01)
    per_epoch = len(batches(feats, args.batch, args.seed, 0))
    steps = args.epochs * per_epoch
    sched = linear_schedule(opt, steps)

    ckpt_dir = Path(args.checkpoints) / signature(args, len(feats))
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpoint(ckpt_dir / "last.pt", model, opt, sched, ships)
    step, trained_s = ckpt.resume(device)

    loss_fn = torch.nn.CrossEntropyLoss()
    types = ("token_type_ids",) if "token_type_ids" in feats[0] else ()
    model.train()
    progress = Progress(steps, 50, "windows", trained_s)
    while step < steps:
        epoch, k = divmod(step, per_epoch)
        b = batches(feats, args.batch, args.seed, epoch)[k]
        n = max(len(feats[i]["input_ids"]) for i in b)
        inputs = {name: torch.zeros(len(b), n, dtype=torch.long) for name in ("input_ids", "attention_mask", *types)}
        soft = torch.full((2, len(b), n), -1e4) if args.teacher else None
        for j, i in enumerate(b):
            L = len(feats[i]["input_ids"])
            inputs["input_ids"][j, :L] = torch.tensor(feats[i]["input_ids"])
            inputs["attention_mask"][j, :L] = 1
            if types:
                inputs["token_type_ids"][j, :L] = torch.tensor(feats[i]["token_type_ids"])
            if soft is not None:
                soft[0, j, :L] = torch.from_numpy(feats[i]["t_start"].astype(np.float32))
                soft[1, j, :L] = torch.from_numpy(feats[i]["t_end"].astype(np.float32))
        ys = torch.tensor([feats[i]["start"] for i in b], device=device)
        ye = torch.tensor([feats[i]["end"] for i in b], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(**{name: v.to(device) for name, v in inputs.items()})
        loss = (loss_fn(out.start_logits.float(), ys) + loss_fn(out.end_logits.float(), ye)) / 2
        if soft is not None:  # distillation: the teacher's distributions, softened, beside the gold span
            T = args.temperature
            soft = soft.to(device)
            kl = sum(
                torch.nn.functional.kl_div(
                    torch.log_softmax(logits.float() / T, -1), torch.log_softmax(soft[x] / T, -1), log_target=True, reduction="batchmean"
                )
                for x, logits in enumerate((out.start_logits, out.end_logits))
            )
            loss = (1 - args.distill) * loss + args.distill * kl / 2 * T * T
        step += 1
        progress.update(step, optimizer_step(loss, params, opt, sched), len(b))
        if step % args.checkpoint_every == 0 or step == steps:
            ckpt.save(step, progress.trained_s)
        if getattr(args, "stop_after", 0) and step >= args.stop_after:  # the tests' stand-in for a kill
            print(f"stopped at step {step}", flush=True)
            return
    model.eval()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    if args.base == BUNDLED_MODEL:  # what ships: the trained layers, put on the bundled model at load time
        save_file({k: v.detach().to("cpu").half().contiguous() for k, v in trained_state(model, ships).items()}, str(out_dir / TOP_FILE))
    else:  # another encoder (a teacher): the whole model, which QA_READER_MODEL and --teacher load as it is
        model.to("cpu").save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    meta = {
        "base_model": args.base,
        "architecture": type(model).__name__,
        "frozen_layers": 0,
        "recipe": "training.squad_reader",
        "command": "python -m training.squad_reader train " + " ".join(args.argv),
        "seed": args.seed,
        "epochs": args.epochs,
        "continued_from": _previous_runs(args.init),
        "lr": args.lr,
        "head_lr": args.head_lr,
        "layer_decay": args.layer_decay,
        "batch": args.batch,
        "context_tokens": args.context_tokens,
        "max_len": args.max_len,
        "negatives": {"same_paragraph": args.same_paragraph, "other_paragraph": args.other_paragraph, "hard": args.hard},
        "precision": "bf16" if bf16 else "fp32",
        "device": str(device),
        "train_questions": len(questions),
        "train_windows": len(feats),
        "held_out": "squad11_dev13 (all 13 articles), RealTimeQA md5(id) % 5 == 0, squad11_train md5(title) % 40 == 0 (calibration)",
        "train_s": round(progress.trained_s),
    }
    if args.teacher:
        meta["teacher"] = {"model": args.teacher, "distill": args.distill, "temperature": args.temperature}
    # reader.json marks trained layers on the bundled model; a whole model keeps its record beside it
    (out_dir / (META_FILE if args.base == BUNDLED_MODEL else "training.json")).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"saved {out_dir}; trained {progress.trained_s:.0f}s, wall {time.time() - started:.0f}s", flush=True)


def _previous_runs(init: str) -> list[dict]:
    """The runs the --init weights came from, oldest first: reader.json tells how the weights were made."""
    if not init or not (Path(init) / META_FILE).exists():
        return []
    before = json.loads((Path(init) / META_FILE).read_text())
    earlier = before.pop("continued_from", [])
    keep = ("command", "seed", "epochs", "lr", "train_questions", "train_windows", "device", "train_s")
    return [*earlier, {k: before[k] for k in keep if k in before}]


def cmd_score(args) -> None:
    """EM / F1 of the best span (never abstaining) in each calibration-fold question's answer window.

    Any QA model, on the same windows (cut with the bundled model's tokenizer, as training cuts
    them): a comparison of encoders and recipes, including ones the service's path cannot read yet
    (`training.read_fold` measures how the service reads).
    """
    import torch
    from transformers import AutoTokenizer

    from qa.embedding import resolve_model
    from qa.readers.span import load_qa_model
    from qa.scoring import exact_match, f1_score

    torch.set_num_threads(args.threads)
    questions = load_questions(Path(args.data), "calibration")
    random.Random(SEED).shuffle(questions)
    questions = questions[: args.limit] if args.limit else questions
    if not questions:
        raise SystemExit(f"{args.data}: no questions in the calibration fold")
    answers_only = argparse.Namespace(context_tokens=args.context_tokens, same_paragraph=0.0, other_paragraph=0.0, hard=0.0)
    windows = build_examples(questions, AutoTokenizer.from_pretrained(resolve_model(BUNDLED_MODEL)), answers_only, random.Random(SEED))
    for name in args.models.split(","):
        model, tokenizer = load_qa_model(None if name in ("", "shipped") else name)
        em = f1 = 0.0
        started = time.time()
        for k in range(0, len(windows), 32):
            chunk = windows[k : k + 32]
            enc = encode_windows(tokenizer, chunk, args.max_len, padding=True, return_tensors="pt")
            offsets = enc.pop("offset_mapping").tolist()
            with torch.inference_mode():
                out = model(**enc)
            starts, ends = out.start_logits.float().numpy(), out.end_logits.float().numpy()
            for j, w in enumerate(chunk):
                ctx = [i for i, s in enumerate(enc.sequence_ids(j)) if s == 1]
                _, a, b = max((starts[j, a] + ends[j, b], a, b) for x, a in enumerate(ctx) for b in ctx[x : x + args.max_tokens])
                answer = w["context"][offsets[j][a][0] : offsets[j][b][1]]
                em += exact_match(answer, questions[k + j]["answers"])
                f1 += f1_score(answer, questions[k + j]["answers"])
        n = len(windows)
        figures = {"em": round(em / n, 4), "f1": round(f1 / n, 4), "s": round(time.time() - started)}
        print(json.dumps({"model": name or "shipped", "questions": n, **figures}), flush=True)


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv[1:]
    (cmd_train if args.cmd == "train" else cmd_score)(args)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.squad_reader")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", default=str(DATA))
    t.add_argument("--out", required=True, help="where the weights go (qa/reader_weights replaces the shipped ones)")
    t.add_argument("--checkpoints", default=str(CHECKPOINTS), help="where the resumable state goes")
    t.add_argument("--checkpoint-every", type=int, default=200, help="steps")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--lr", type=float, default=3e-4, help="the top layer's learning rate")
    t.add_argument("--head-lr", type=float, default=5.0, help="the span head's rate, as a multiple of --lr")
    t.add_argument("--layer-decay", type=float, default=0.8)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--context-tokens", type=int, default=96, help="context per window, as the service reads")
    t.add_argument("--max-len", type=int, default=192, help="question and context, tokens")
    t.add_argument("--same-paragraph", type=float, default=0.3, help="share of questions also read without their answer's sentences")
    t.add_argument("--other-paragraph", type=float, default=0.1, help="share also read with another paragraph of the article")
    t.add_argument("--hard", type=float, default=0.3, help="share also asked with a swapped key term (unanswerable)")
    t.add_argument("--limit", type=int, default=0, help="train on the first N (shuffled) questions")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--device", default="auto", help="auto (cuda when torch sees one), cpu, cuda")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    t.add_argument("--seed", type=int, default=SEED)
    t.add_argument("--init", default="", help="start from the reader weights in this folder (another pass, a new schedule)")
    t.add_argument("--base", default=BUNDLED_MODEL, help="the encoder to train: the bundled model, or another (a teacher; saved whole)")
    t.add_argument("--teacher", default="", help="also learn this QA model's span distributions (a folder or name, as QA_READER_MODEL)")
    t.add_argument("--distill", type=float, default=0.5, help="weight of the teacher's distributions against the gold span")
    t.add_argument("--temperature", type=float, default=2.0, help="softening of both distributions when distilling")
    sc = sub.add_parser("score", help="EM / F1 of QA models on the calibration fold's answer windows")
    sc.add_argument("--models", default="shipped", help="comma-separated: shipped, reader folders, QA model folders or names")
    sc.add_argument("--data", default=str(DATA))
    sc.add_argument("--limit", type=int, default=0)
    sc.add_argument("--context-tokens", type=int, default=96)
    sc.add_argument("--max-len", type=int, default=192)
    sc.add_argument("--max-tokens", type=int, default=24, help="longest answer, tokens")
    sc.add_argument("--threads", type=int, default=2)
    return ap


if __name__ == "__main__":
    main()
