"""How well and how fast the span reader reads the calibration fold, never abstaining.

    python -m training.read_fold [--limit N] [--modes gold,open]
    QA_SPAN_CONTEXT_TOKENS=128 python -m training.read_fold

For each mode, the top answer's EM and F1 over the fold's questions (why-questions left out, as in
`training.calibrate`), with the no-answer margin and threshold off so that only the reading is
compared, and the time `read_spans` takes a question (tokenizing, the model, the span search).
The fold (`squad11_train` articles with md5(title) % 40 == 0) was never trained on: a change to how
the reader reads is chosen here, before the held-out sets are run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import qa.readers.span as span
from qa.config import Config
from training.calibrate import collect, fold_questions, write_set
from training.common import DATA


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.read_fold")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--modes", default="gold,open")
    args = ap.parse_args(argv)
    seconds: list[float] = []
    read = span.read_spans

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return read(*a, **k)
        finally:
            seconds.append(time.perf_counter() - t)

    span.read_spans = timed  # SpanReader.candidates looks the name up at each call
    questions = fold_questions(Path(args.data), args.limit)
    config = Config.load().replace(span_null_margin=-100.0, answer_threshold=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "calibration_fold"
        folder.mkdir()
        paragraphs = write_set(questions, folder)
        for mode in args.modes.split(","):
            seconds.clear()
            rows = collect(config, paragraphs, questions, mode)
            top = [r["candidates"][0] if r["candidates"] else {"em": 0.0, "f1": 0.0} for r in rows]
            report = {
                "mode": mode,
                "span_context_tokens": config.span_context_tokens,
                "questions": len(rows),
                "em": round(float(np.mean([c["em"] for c in top])), 4),
                "f1": round(float(np.mean([c["f1"] for c in top])), 4),
                "read_ms_p50": round(1000 * float(np.median(seconds)), 1),
                "read_ms_mean": round(1000 * float(np.mean(seconds)), 1),
            }
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
