"""SQuAD's answer metrics, shared by `qa eval` and the training scripts; no heavy imports, so a
training run on another machine needs only this module of `qa`."""

from __future__ import annotations

import collections
import json
import re
import string
from pathlib import Path


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: list[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in gold))


def f1_score(prediction: str, gold: list[str]) -> float:
    best = 0.0
    pred_tokens = normalize_answer(prediction).split()
    for g in gold:
        gold_tokens = normalize_answer(g).split()
        common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
        same = sum(common.values())
        if not pred_tokens or not gold_tokens:
            best = max(best, float(pred_tokens == gold_tokens))
            continue
        if same == 0:
            continue
        precision, recall = same / len(pred_tokens), same / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
