"""Hyper-parameter sweep for the span reader, sized for the GPU machine (a benchmark: it reports, asserts nothing).

    .venv/bin/python -m training.reader_sweep prepare --out .gpu     # here: windows + base encoder, about 40 MB
    python3 -m training.reader_sweep run --data .gpu [--only base,head10] [--full]   # there (torch, transformers)

Both run from the repo root. `prepare` tokenises the training questions exactly as
`training.train_reader` does (same split, same synthetic questions, negatives drawn with a stored
uniform draw so that their share can vary) and writes the bundled encoder with its word embeddings
in int8 (the rows the data uses; the device tool carries at most 64 MiB with the repo). `run` needs
torch, transformers and safetensors, and scores with `qa eval`'s SQuAD metrics (qa/metrics.py,
which imports nothing beyond the standard library).

Selection is on a dev fold of the TRAINING articles (Martin_Luther, Genghis_Khan, Teacher: 992
questions): each setting is trained on the rest and scored on the dev fold, whole gold paragraph,
best span (as `reader.json` does). Then the best settings whose training costs at most 1.2x the
default (tokens x epochs) are trained on the whole training split and scored on the held-out
articles, for information. Results: one JSON line a run, in $OUT/results.jsonl (or /tmp/reader_sweep).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pickle
import random
import time
from pathlib import Path

import numpy as np

from qa.metrics import exact_match, f1_score

DEV_TITLES = {"Martin_Luther", "Genghis_Khan", "Teacher"}
LENGTHS = ((192, 64), (384, 128))  # (window tokens, stride)
#: The default recipe of `training.train_reader train`, and one change at a time (ordered: most promising first).
BASE = dict(
    L=192,
    lr=1.5e-4,
    epochs=3,
    batch=32,
    syn=1500,
    neg=0.2,
    warm=0.1,
    all_spans=False,
    lld=1.0,
    head_mult=1.0,
    wd=0.01,
    pre_syn=0,
    pre_lr=1.5e-4,
    dropout=0.1,
    ls=0.0,
)
GRID = {
    "base": {},
    "lr3e-4": {"lr": 3e-4},
    "all_spans": {"all_spans": True},
    "L384": {"L": 384},
    "syn3000_ep2": {"syn": 3000, "epochs": 2},
    "ep4": {"epochs": 4},
    "lld0.8_lr3e-4": {"lld": 0.8, "lr": 3e-4},
    "head10": {"head_mult": 10.0},
    "pre4000": {"pre_syn": 4000, "pre_lr": 3e-4},
    "bs16": {"batch": 16},
    "neg0.5": {"neg": 0.5},
    "ep2": {"epochs": 2},
    "lr5e-4": {"lr": 5e-4},
    "dropout0": {"dropout": 0.0},
    "syn0": {"syn": 0},
    "neg0": {"neg": 0.0},
    "ls0.1": {"ls": 0.1},
    "lr8e-5": {"lr": 8e-5},
    "wd0.1": {"wd": 0.1},
    "warm0": {"warm": 0.0},
    # how the layers see their input: embeddings cached once (as training.train_reader does on the CPU), in fp16 or fp32
    "cache_fp16": {"cache": "fp16"},
    "cache_fp32": {"cache": "fp32"},
    "no_emb_dropout": {"emb_drop": False},
}


# ------------------------------------------------------------------------------------ prepare (CPU, here)


def prepare(out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from training.train_reader import (
        RTQA,
        SEED,
        SQUAD,
        base_model,
        featurize,
        load_examples,
        synthetic_examples,
    )

    out.mkdir(parents=True, exist_ok=True)
    train, held, by_title = load_examples()
    random.Random(SEED).shuffle(train)
    syn = synthetic_examples(6000, random.Random(SEED))  # a prefix of n is what `--synthetic n` uses
    nrng = random.Random(SEED + 1)
    negs = []
    for e in train:
        others = [p for p in by_title.get(e["title"], []) if p["id"] != e["context_id"] and e["text"] not in p["context"]]
        if others:
            p = nrng.choice(others)
            negs.append({**e, "context": p["context"], "context_id": p["id"], "start": None, "u": nrng.random()})
    groups = {
        "real": train,
        "neg": negs,
        "syn": syn,
        "held_squad": [e for e in held if e["set"] == SQUAD],
        "held_rtqa": [e for e in held if e["set"] == RTQA],
    }
    model, tok = base_model()
    paras: dict[str, int] = {}
    data: dict = {"examples": {}, "feats": {}}
    for g, ex in groups.items():
        data["examples"][g] = [
            {
                "answers": e["answers"],
                "p": paras.setdefault(e["context"], len(paras)) if g != "neg" else -1,
                "set": e["set"],
                "u": e.get("u", 0.0),
                "dev": e["title"] in DEV_TITLES,
            }
            for e in ex
        ]
    for max_len, stride in LENGTHS:
        for g, ex in groups.items():
            fs = featurize(tok, ex, max_len, stride)
            data["feats"][(max_len, g)] = {
                "ids": np.concatenate([np.array(f["input_ids"], dtype=np.int16) for f in fs]),
                "types": np.concatenate([np.array(f["token_type_ids"], dtype=np.int8) for f in fs]),
                "ctx": np.concatenate([np.array([s == 1 for s in f["seq"]], dtype=np.int8) for f in fs]),
                "offs": np.concatenate([np.array([o or (0, 0) for o in f["offsets"]], dtype=np.int32).reshape(-1, 2) for f in fs])
                if g.startswith("held") or g == "real"
                else None,
                "lens": np.array([len(f["input_ids"]) for f in fs]),
                "ex": np.array([f["example"] for f in fs]),
                "start": np.array([f["start"] for f in fs]),
                "end": np.array([f["end"] for f in fs]),
                "starts": [f["starts"] for f in fs],
                "ends": [f["ends"] for f in fs],
            }
            print(max_len, g, len(fs), "windows", flush=True)
    data["paras"] = [c for c, _ in sorted(paras.items(), key=lambda x: x[1])]
    with gzip.open(out / "data.pkl.gz", "wb") as fh:
        pickle.dump(data, fh)
    used = torch.from_numpy(np.unique(np.concatenate([f["ids"] for f in data["feats"].values()])).astype(np.int64))
    sd = {k: v.half() for k, v in model.bert.state_dict().items()}
    words = sd.pop("embeddings.word_embeddings.weight").float()
    rows = words[used]
    scale = rows.abs().amax(1, keepdim=True) / 127
    sd.update(emb_ids=used, emb_q=torch.round(rows / scale).to(torch.int8), emb_scale=scale.half(), emb_shape=torch.tensor(words.shape))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "bert_small.safetensors"))
    model.config.to_json_file(str(out / "config.json"))


# ------------------------------------------------------------------------------------ run (GPU, there)


class Sweep:
    def __init__(self, data_dir: Path, out: Path, device: str, limit: int = 0):
        import torch
        from safetensors.torch import load_file
        from transformers import BertConfig

        self.torch, self.dev, self.out, self.t0 = torch, device, out, time.time()
        torch.backends.cuda.matmul.allow_tf32 = True
        self.data = pickle.load(gzip.open(data_dir / "data.pkl.gz"))
        self.ex = self.data["examples"]
        self.config = BertConfig.from_json_file(str(data_dir / "config.json"))
        sd = load_file(str(data_dir / "bert_small.safetensors"))
        words = torch.zeros(*sd.pop("emb_shape").tolist())
        words[sd.pop("emb_ids")] = sd.pop("emb_q").float() * sd.pop("emb_scale").float()
        self.bert = {k: v.float() for k, v in sd.items()} | {"embeddings.word_embeddings.weight": words}
        self.evals: dict = {}
        self.limit = limit  # a smoke test: this many training and scored windows

    def windows(self, L: int, group: str, keep=None) -> list[dict]:
        f = self.data["feats"][(L, group)]
        ends = np.cumsum(f["lens"])
        out = []
        for w, (a, b) in enumerate(zip(ends - f["lens"], ends)):
            ex = int(f["ex"][w])
            if keep is None or keep(ex):
                out.append(
                    {
                        "ids": f["ids"][a:b].astype(np.int64),
                        "types": f["types"][a:b].astype(np.int64),
                        "ctx": f["ctx"][a:b],
                        "offs": None if f["offs"] is None else f["offs"][a:b],
                        "ex": ex,
                        "start": int(f["start"][w]),
                        "end": int(f["end"][w]),
                        "starts": f["starts"][w],
                        "ends": f["ends"][w],
                    }
                )
        return out

    def batch(self, ws: list[dict]):
        torch = self.torch
        n = max(len(w["ids"]) for w in ws)
        ids, types, ctx, mask = (torch.zeros(len(ws), n, dtype=torch.long) for _ in range(4))
        for i, w in enumerate(ws):
            k = len(w["ids"])
            ids[i, :k], types[i, :k], ctx[i, :k], mask[i, :k] = (
                torch.as_tensor(w["ids"]),
                torch.as_tensor(w["types"]),
                torch.as_tensor(w["ctx"]),
                1,
            )
        return ids.to(self.dev), types.to(self.dev), ctx.to(self.dev).bool(), mask.to(self.dev)

    @staticmethod
    def order(ws: list[dict], size: int) -> list[list[int]]:
        """Batches of similar length, as training.train_reader makes them."""
        idx = sorted(range(len(ws)), key=lambda i: len(ws[i]["ids"]))
        return [idx[i : i + size] for i in range(0, len(idx), size)]

    def model(self, seed: int, c: dict):
        from transformers import BertConfig, BertForQuestionAnswering

        self.torch.manual_seed(seed)
        cfg = BertConfig.from_dict(self.config.to_dict())
        cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = c["dropout"]
        m = BertForQuestionAnswering(cfg)
        missing, _ = m.bert.load_state_dict(self.bert, strict=False)
        assert all("pooler" in k for k in missing), missing
        if not c.get("emb_drop", True):
            m.bert.embeddings.dropout.p = 0.0
        return m.to(self.dev)

    def train(self, m, ws: list[dict], c: dict, epochs: int, seed: int, lr: float) -> None:
        torch = self.torch
        for p in m.parameters():
            p.requires_grad_(False)
        groups = [
            {"params": list(layer.parameters()), "lr": lr * c["lld"] ** (len(m.bert.encoder.layer) - 1 - i)}
            for i, layer in enumerate(m.bert.encoder.layer)
        ] + [{"params": list(m.qa_outputs.parameters()), "lr": lr * c["head_mult"]}]
        params = [p for g in groups for p in g["params"]]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=c["wd"])
        batches = []
        for b in self.order(ws, c["batch"]):
            sub = [ws[i] for i in b]
            ids, types, _, mask = self.batch(sub)
            y = [torch.tensor([w[k] for w in sub], device=self.dev) for k in ("start", "end")]
            batches.append((ids, types, mask, y, [w["starts"] for w in sub], [w["ends"] for w in sub]))
        if c.get("cache"):  # the embedding outputs computed once, in eval mode, as training.train_reader does
            m.eval()
            with torch.no_grad():
                batches = [
                    (
                        m.bert.embeddings(input_ids=b[0], token_type_ids=b[1]).to(
                            getattr(torch, {"fp16": "float16", "fp32": "float32"}[c["cache"]])
                        ),
                    )
                    + b[1:]
                    for b in batches
                ]
        steps = epochs * len(batches)
        warm = max(1, int(steps * c["warm"]))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
        ce = torch.nn.CrossEntropyLoss(label_smoothing=c["ls"])
        rng = random.Random(seed)
        m.train()
        for _ in range(epochs):
            rng.shuffle(batches)
            for x, types, mask, (ys, ye), S, E in batches:
                s, e = self.logits(m, x, types, mask, cached=bool(c.get("cache")))
                if c["all_spans"]:
                    loss = (self.marginal(s, S) + self.marginal(e, E)) / 2
                else:
                    loss = (ce(s, ys) + ce(e, ye)) / 2
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
        m.eval()

    def logits(self, m, x, types, mask, cached: bool = False):
        if cached:
            h = x.float()
            ext = (1.0 - mask[:, None, None, :].float()) * self.torch.finfo(self.torch.float32).min
            for layer in m.bert.encoder.layer:
                o = layer(h, attention_mask=ext)
                h = o[0] if isinstance(o, tuple) else o
            s, e = (t.squeeze(-1) for t in m.qa_outputs(h).split(1, dim=-1))
        else:
            out = m(input_ids=x, token_type_ids=types, attention_mask=mask)
            s, e = out.start_logits, out.end_logits
        return s.masked_fill(mask == 0, -1e9), e.masked_fill(mask == 0, -1e9)

    def marginal(self, logits, targets):
        allowed = self.torch.zeros_like(logits, dtype=self.torch.bool)
        for j, ts in enumerate(targets):
            allowed[j, ts] = True
        return (logits.logsumexp(-1) - logits.masked_fill(~allowed, -1e9).logsumexp(-1)).mean()

    def evaluate(self, m, ws: list[dict], exs: list[dict], max_tokens: int = 24) -> tuple[float, float]:
        """Best span of the whole gold paragraph (exact argmax over start <= end < start + max_tokens)."""
        torch = self.torch
        best: dict[int, tuple[float, int, int]] = {}
        with torch.inference_mode():
            for b in self.order(ws, 128):
                sub = [ws[i] for i in b]
                ids, types, ctx, mask = self.batch(sub)
                out = m(input_ids=ids, token_type_ids=types, attention_mask=mask)
                n = ids.shape[1]
                k = torch.arange(n, device=self.dev)
                ok = (
                    (k[None, :, None] <= k[None, None, :])
                    & (k[None, None, :] - k[None, :, None] < max_tokens)
                    & ctx[:, :, None]
                    & ctx[:, None, :]
                )
                score = (
                    (out.start_logits.float()[:, :, None] + out.end_logits.float()[:, None, :]).masked_fill(~ok, -1e9).view(len(sub), -1)
                )
                val, arg = score.max(-1)
                for j, w in enumerate(sub):
                    a, z = divmod(int(arg[j]), n)
                    if w["ex"] not in best or float(val[j]) > best[w["ex"]][0]:
                        best[w["ex"]] = (float(val[j]), int(w["offs"][a][0]), int(w["offs"][z][1]))
        em = f1 = 0.0
        for i, ex in enumerate(exs):
            pred = self.data["paras"][ex["p"]][best[i][1] : best[i][2]] if i in best else ""
            em += exact_match(pred, ex["answers"])
            f1 += f1_score(pred, ex["answers"])
        return round(em / max(1, len(exs)), 4), round(f1 / max(1, len(exs)), 4)

    def eval_sets(self, L: int, dev_fold: bool) -> dict:
        if (L, dev_fold) not in self.evals:
            real = self.ex["real"]
            if dev_fold:
                idx = [i for i, e in enumerate(real) if e["dev"]]
                renumber = {old: new for new, old in enumerate(idx)}
                ws = self.windows(L, "real", lambda i: real[i]["dev"])
                for w in ws:
                    w["ex"] = renumber[w["ex"]]
                self.evals[L, dev_fold] = {"dev": (ws, [real[i] for i in idx])}
            else:
                self.evals[L, dev_fold] = {g: (self.windows(L, g), self.ex[g]) for g in ("held_squad", "held_rtqa")}
        return self.evals[L, dev_fold]

    def trial(self, name: str, seed: int, dev_fold: bool, save: Path | None = None) -> dict:
        c = {**BASE, **GRID[name]}
        real, neg = self.ex["real"], self.ex["neg"]
        started = time.time()
        ws = self.windows(c["L"], "real", (lambda i: not real[i]["dev"]) if dev_fold else None)
        ws += self.windows(c["L"], "neg", lambda i: neg[i]["u"] < c["neg"] and not (dev_fold and neg[i]["dev"]))
        ws += self.windows(c["L"], "syn", lambda i: i < c["syn"])
        pre = self.windows(c["L"], "syn", lambda i: c["syn"] <= i < c["syn"] + c["pre_syn"]) if c["pre_syn"] else []
        if self.limit:
            ws, pre = ws[: self.limit], pre[: self.limit]
        m = self.model(seed, c)
        if pre:  # a first pass over other synthetic questions, then the recipe
            self.train(m, pre, c, 1, seed, c["pre_lr"])
        self.train(m, ws, c, c["epochs"], seed, c["lr"])
        res = {
            "name": name,
            "seed": seed,
            "dev_fold": dev_fold,
            "windows": len(ws),
            "cost_tokens": sum(len(w["ids"]) for w in ws) * c["epochs"] + sum(len(w["ids"]) for w in pre),
        }
        for key, (ews, exs) in self.eval_sets(c["L"], dev_fold).items():
            res[key] = self.evaluate(m, ews[: self.limit or None], exs)
        res.update(s=round(time.time() - started, 1), elapsed=round(time.time() - self.t0))
        if save:  # in qa/reader_weights' format: QA_READER_MODEL=DIR reads it through the service
            from safetensors.torch import save_file

            save.mkdir(parents=True, exist_ok=True)
            save_file(
                {
                    k: v.detach().cpu().half().contiguous()
                    for k, v in m.state_dict().items()
                    if k.startswith(("qa_outputs.", "bert.encoder.layer."))
                },
                str(save / "top_layers.safetensors"),
            )
            (save / "reader.json").write_text(
                json.dumps(
                    {
                        "base_model": "all-MiniLM-L6-v2",
                        "architecture": "BertForQuestionAnswering",
                        "recipe": {**c, "seed": seed},
                        "made_by": "training/reader_sweep.py",
                        **res,
                    },
                    indent=1,
                )
                + "\n"
            )
        print(json.dumps(res), flush=True)
        with open(self.out / "results.jsonl", "a") as fh:
            fh.write(json.dumps(res) + "\n")
        return res


def run(args) -> None:
    import torch

    out = Path(os.environ.get("OUT") or "/tmp/reader_sweep")
    out.mkdir(parents=True, exist_ok=True)
    sw = Sweep(Path(args.data), out, "cuda" if torch.cuda.is_available() else "cpu", args.limit)
    if args.only:
        for seed in args.seeds:
            for name in args.only.split(","):
                sw.trial(name, seed, dev_fold=not args.full, save=Path(args.save) / f"{name}-{seed}" if args.save else None)
        return
    first = [n for n in GRID if "cache" not in GRID[n] and "emb_drop" not in GRID[n]]
    runs = collections.defaultdict(list)
    for name in first:  # one seed each, then a second seed for the best eight
        if time.time() - sw.t0 > args.phase1_s * 0.7:
            break
        runs[name].append(sw.trial(name, args.seeds[0], True))
    for name in (["base"] + sorted((n for n in runs if n != "base"), key=lambda n: -runs[n][0]["dev"][1]))[:8]:
        if time.time() - sw.t0 > args.phase1_s or len(args.seeds) < 2:
            break
        runs[name].append(sw.trial(name, args.seeds[1], True))
    base_cost = runs["base"][0]["cost_tokens"]
    summary = sorted(
        (
            {
                "name": n,
                "dev_f1_mean": round(float(np.mean([r["dev"][1] for r in rs])), 4),
                "dev_f1": [r["dev"][1] for r in rs],
                "cost_rel": round(rs[0]["cost_tokens"] / base_cost, 2),
            }
            for n, rs in runs.items()
        ),
        key=lambda s: -s["dev_f1_mean"],
    )
    print(json.dumps({"dev_fold_ranking": summary}), flush=True)
    (out / "ranking.json").write_text(json.dumps(summary, indent=1))
    top = [s["name"] for s in summary if s["name"] != "base" and s["cost_rel"] <= 1.2][:3]
    for seed in args.seeds:
        for name in ["base", *top]:
            if time.time() - sw.t0 < args.total_s:
                sw.trial(name, seed, dev_fold=False)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m training.reader_sweep")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", default=".gpu")
    r = sub.add_parser("run")
    r.add_argument("--data", default=".gpu")
    r.add_argument("--only", default="", help="these settings only (comma-separated names of GRID)")
    r.add_argument("--full", action="store_true", help="with --only: train on the whole split, score the held-out articles")
    r.add_argument("--save", default="", help="with --only: keep each run's weights under this folder (NAME-SEED/)")
    r.add_argument("--limit", type=int, default=0, help="a smoke test: train and score this many windows")
    r.add_argument(
        "--seeds", type=int, nargs="+", default=[13, 7], help="with --only: each; else the first, and the second for the best eight"
    )
    r.add_argument("--phase1-s", type=float, default=300, help="stop starting dev-fold runs after this many seconds")
    r.add_argument("--total-s", type=float, default=490, help="stop starting held-out runs after this many seconds")
    args = ap.parse_args()
    prepare(Path(args.out)) if args.cmd == "prepare" else run(args)


if __name__ == "__main__":
    main()
