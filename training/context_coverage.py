"""How often the span reader's chosen sentences hold a gold answer, on the calibration fold.

    python -m training.context_coverage [--tokens 96,128] [--limit N]

The reader can only answer from the sentences it reads (`QA_SPAN_CONTEXT_TOKENS` of them, chosen
by the `QA_SPAN_WEIGHT_*` weights). This measures, without running the model, the share of the
fold's questions (never trained on; why-questions aside) whose gold answer lies inside the chosen
sentences, in gold mode (the question's own paragraph) and open mode (retrieval over the fold),
for each budget and a grid of the three sentence-choice weights. One JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from qa.config import Config
from training.calibrate import fold_questions, write_set
from training.common import DATA

GRID = [(c, o, p) for c in (0.35, 0.55, 0.75) for o in (0.1, 0.3, 0.5) for p in (0.0, 0.15, 0.3)]


def main(argv: list[str] | None = None) -> None:
    from qa.embedding import Embedder
    from qa.evaluate import build_eval_index, eval_config
    from qa.models import Filters
    from qa.pipeline import Pipeline
    from qa.readers.base import is_why
    from qa.readers.span import SpanReader
    from qa.scoring import read_jsonl

    ap = argparse.ArgumentParser(prog="python -m training.context_coverage")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--tokens", default="96,128", help="budgets to measure (QA_SPAN_CONTEXT_TOKENS)")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args(argv)

    questions = [q for q in fold_questions(Path(args.data), args.limit) if not is_why(q["question"])]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "calibration_fold"
        folder.mkdir()
        paragraphs = write_set(questions, folder)
        cfg = eval_config(Config.load(), paragraphs)
        embedder = Embedder.from_config(cfg)
        build_eval_index(cfg, embedder, read_jsonl(paragraphs))
        base = SpanReader(cfg)
        pipeline = Pipeline(cfg, embedder, reader=base)
        index = pipeline.index()
        cases: dict[str, list] = {"gold": [], "open": []}
        for q in questions:
            vector = embedder.embed([q["question"]])[0]
            for mode, found in cases.items():
                filters = Filters(document_id=q["context_id"]) if mode == "gold" else None
                hits = pipeline.retriever.retrieve(index, vector, q["question"], max(20, cfg.read_passages), filters)
                found.append((q, vector, hits, index.store.passages([h.passage_id for h in hits])))

        def covered(reader: SpanReader, mode: str) -> float:
            inside = 0
            for q, vector, hits, rows in cases[mode]:
                texts = [c.row.text[c.start : c.end] for c in reader.contexts(q["question"], vector, index, hits, rows)]
                inside += any(a["text"] in t for a in q["answers"] for t in texts)
            return round(inside / len(cases[mode]), 4)

        for tokens in (int(t) for t in args.tokens.split(",")):
            for cosine, overlap, passage in GRID:
                setting = cfg.replace(
                    span_context_tokens=tokens, span_weight_cosine=cosine, span_weight_overlap=overlap, span_weight_passage=passage
                )
                reader = SpanReader(setting, model=base.model, tokenizer=base.tokenizer)
                row = {"tokens": tokens, "cosine": cosine, "overlap": overlap, "passage": passage}
                print(json.dumps(row | {"gold": covered(reader, "gold"), "open": covered(reader, "open")}), flush=True)


if __name__ == "__main__":
    main()
