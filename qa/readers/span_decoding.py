"""Decoding spans: a question and its contexts as model input, and the best spans from the logits.

Whatever model gives the logits (`Logits`: the torch model, its ONNX twin, an ensemble), the
contexts are read as one text after the question, in overlapping windows past `max_len` tokens;
each window's start and end logits give its best non-overlapping spans, scored against the
window's no-answer logit (SQuAD 2's: the [CLS] start plus end logits), and mapped back to the
character offsets of the context each came from.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qa.encoders import TOKENIZING

#: Model inputs in, (start logits, end logits) out: the torch model or its ONNX Runtime twin.
Logits = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]

#: What stands between two contexts packed into one text.
JOINER = " "


@dataclass
class Span:
    context: int  # index of the context it came from
    start: int  # character offsets in that context's text
    end: int
    logit: float  # span logit minus the no-answer logit of its window


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    with TOKENIZING:
        return [len(t) for t in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def encode(tokenizer, question: str, contexts: list[str], max_len: int, stride: int, max_question_tokens: int = 64):
    """Question/context pairs as model input, long contexts split into overlapping windows."""
    with TOKENIZING:
        return _encode(tokenizer, question, contexts, max_len, stride, max_question_tokens)


def _encode(tokenizer, question: str, contexts: list[str], max_len: int, stride: int, max_question_tokens: int):
    q_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    if len(q_ids) > max_question_tokens:
        question = tokenizer.decode(q_ids[:max_question_tokens])
    return tokenizer(
        [question] * len(contexts),
        contexts,
        truncation="only_second",
        max_length=max_len,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="longest",
        return_tensors="np",
    )


def best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    sequence_ids: list[int | None],
    offsets: list[tuple[int, int]],
    max_tokens: int,
    top_n: int = 20,
    per_window: int = 2,
    breaks: list[int] | None = None,
) -> list[tuple[int, int, float]]:
    """Up to `per_window` non-overlapping (char_start, char_end, span - null) in one window; with
    `breaks` (where each packed context starts), no span runs from one context into the next."""
    ctx = [i for i, s in enumerate(sequence_ids) if s == 1]
    if not ctx:
        return []
    null = float(start_logits[0] + end_logits[0])
    lo, hi = ctx[0], ctx[-1]
    s_idx = lo + np.argsort(-start_logits[lo : hi + 1])[:top_n]
    e_idx = lo + np.argsort(-end_logits[lo : hi + 1])[:top_n]
    cands = []
    for s in s_idx:
        for e in e_idx:
            if e < s or e - s + 1 > max_tokens:
                continue
            if breaks and bisect.bisect_right(breaks, offsets[s][0]) != bisect.bisect_right(breaks, offsets[e][1] - 1):
                continue
            cands.append((float(start_logits[s] + end_logits[e]) - null, int(s), int(e)))
    cands.sort(reverse=True)
    out: list[tuple[int, int, float]] = []
    taken: list[tuple[int, int]] = []
    for logit, s, e in cands:
        if any(not (e < a or s > b) for a, b in taken):
            continue
        taken.append((s, e))
        out.append((offsets[s][0], offsets[e][1], logit))
        if len(out) >= per_window:
            break
    return out


def read_spans(logits: Logits, tokenizer, question: str, contexts: list[str], max_len: int, stride: int, max_tokens: int, batch: int = 16):
    """All candidate spans of `contexts`, best first.

    The contexts are read as one text after the question (in overlapping windows only past
    `max_len`), not one window each: the question once and no padding, and the model weighs the
    contexts against each other, which on the calibration fold read both faster and more
    accurately (docs/reader.md). No span crosses from one context into the next; each span's
    offsets are in its own context's text.
    """
    if not contexts:
        return []
    breaks = list(itertools.accumulate((len(t) + len(JOINER) for t in contexts[:-1]), initial=0))
    enc = encode(tokenizer, question, [JOINER.join(contexts)], max_len, stride)
    windows = len(enc.pop("overflow_to_sample_mapping"))
    offsets = enc.pop("offset_mapping").tolist()
    inputs = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if "token_type_ids" not in inputs:
        inputs["token_type_ids"] = np.zeros_like(inputs["input_ids"])
    starts, ends = [], []
    for i in range(0, windows, batch):
        start, end = logits({k: v[i : i + batch] for k, v in inputs.items()})
        starts.append(start)
        ends.append(end)
    start_logits, end_logits = np.concatenate(starts), np.concatenate(ends)
    spans: list[Span] = []
    per_window = 2 * len(contexts)  # as many spans as a window each would give
    for w in range(windows):
        seq_ids = enc.sequence_ids(w)
        found = best_spans(start_logits[w], end_logits[w], seq_ids, offsets[w], max_tokens, per_window=per_window, breaks=breaks)
        for a, b, logit in found:
            c = bisect.bisect_right(breaks, a) - 1
            spans.append(Span(c, a - breaks[c], b - breaks[c], logit))
    spans.sort(key=lambda s: -s.logit)
    return spans


__all__ = ["Logits", "Span", "JOINER", "token_lengths", "encode", "best_spans", "read_spans"]
