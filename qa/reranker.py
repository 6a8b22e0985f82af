"""An optional cross-encoder that re-orders the fused candidates (`QA_RERANK_PASSAGES`, off by default).

Fusion ranks passages by vectors computed apart from the question; the cross-encoder reads the
question and each of the top `rerank_passages` passages together, which is what tells apart the
paragraphs of one article (the misses at rank 1 on SQuAD). It costs a model run per passage, so it
is off unless asked for (figures in docs/evaluation.md).

The shipped model (`qa/reranker_weights/`, made by `make train-reranker`) is the bundled
all-MiniLM-L6-v2 with trained layers and a score head: only those ship (fp16), put on the bundled
model's embeddings at load time and run on the embedder's backend (ONNX int8 by default).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np

from qa.config import Config
from qa.embedding import resolve_model
from qa.encoders import TOKENIZING, cached_onnx, export_onnx, files_key, onnx_session, trained_model
from qa.index.base import PassageRow, SentenceRow
from qa.readers.base import question_stems, stem
from qa.retriever import Hit

WEIGHTS = Path(__file__).resolve().parent / "reranker_weights"
META_FILE = "reranker.json"
WEIGHTS_FILE = "reranker.safetensors"
log = logging.getLogger(__name__)


def load_reranker(path: Path = WEIGHTS):
    """(model, tokenizer, max_len): the shipped layers on the bundled model, in eval mode."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    meta = json.loads((path / META_FILE).read_text())
    base = resolve_model(meta["base_model"])
    model = trained_model(base, path / WEIGHTS_FILE, BertForSequenceClassification, num_labels=1)
    return model, AutoTokenizer.from_pretrained(base), int(meta["max_len"])


class Reranker:
    """Re-orders the fused candidates by a cross-encoder that reads the question with each passage.

    One reranker serves all the service's threads and keeps no state of a question. The model, and
    its ONNX export the first time, load on first use (`warm` pays for that before questions do);
    the torch fallback runs one batch at a time, ONNX Runtime runs threads at once, and the
    tokenizer is called under `qa.encoders.TOKENIZING`.
    """

    def __init__(self, config: Config, weights: Path = WEIGHTS) -> None:
        self.config = config
        self.weights = weights

    @cached_property
    def _loaded(self):
        return load_reranker(self.weights)

    @cached_property
    def _run(self):
        """Model inputs in, one logit per pair out: ONNX Runtime on the ONNX backends, else torch."""
        model, _, _ = self._loaded
        if self.config.backend.startswith("onnx"):
            try:
                return self._onnx(model)
            except Exception as exc:  # noqa: BLE001 - any exporter failure: the torch model still reads
                log.warning("reranker stays on torch: ONNX export failed (%s)", exc)
        import torch

        lock = threading.Lock()

        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            with lock, torch.inference_mode():
                return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits[:, 0].float().numpy()

        return run

    def _onnx(self, model):
        import torch

        class Scores(torch.nn.Module):
            def __init__(self, model) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

        base = Path(resolve_model(json.loads((self.weights / META_FILE).read_text())["base_model"]))
        target = self.config.cache / "onnx" / f"reranker-{files_key(self.weights, base)}"
        path = cached_onnx(target, self.config.backend == "onnx-int8", lambda out: export_onnx(Scores(model), out, ["logits"]))
        session = onnx_session(path)
        names = [i.name for i in session.get_inputs()]
        return lambda inputs: session.run(None, {k: inputs[k] for k in names})[0][:, 0]

    def warm(self) -> None:
        self._run  # the model, and its ONNX export the first time: seconds, not for a question to pay

    def scores(self, question: str, texts: list[str]) -> np.ndarray:
        """One logit per passage: how likely it answers the question."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        _, tokenizer, max_len = self._loaded
        with TOKENIZING:
            enc = tokenizer(
                [question] * len(texts), texts, truncation="only_second", max_length=max_len, padding="longest", return_tensors="np"
            )
        inputs = {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        return np.asarray(self._run(inputs), dtype=np.float32)

    def texts(self, question: str, rows: list[PassageRow], sentences: dict[int, list[SentenceRow]]) -> list[str]:
        """What the cross-encoder reads of each passage: its sentences that share the most words with
        the question, in their order, up to `rerank_context_tokens` (the whole passage at 0, or where
        it has no sentences). Less to read, and less to distract it (docs/evaluation.md)."""
        budget = self.config.rerank_context_tokens
        if budget <= 0:
            return [r.text for r in rows]
        _, tokenizer, _ = self._loaded
        parts = [[r.text[s.start : s.end] for s in sentences.get(r.id, [])] for r in rows]
        flat = [t for p in parts for t in p]
        with TOKENIZING:
            lengths = iter([len(ids) for ids in tokenizer(flat, add_special_tokens=False)["input_ids"]] if flat else [])
        q = question_stems(question)
        out = []
        for row, sents in zip(rows, parts):
            lens = [next(lengths) for _ in sents]
            if not sents:
                out.append(row.text)
                continue
            overlap = [len(q & {stem(w) for w in re.findall(r"\w+", t)}) for t in sents]
            keep, used = [], 0
            for i in sorted(range(len(sents)), key=lambda i: (-overlap[i], i)):
                if used and used + lens[i] > budget:
                    continue
                keep.append(i)
                used += lens[i]
            out.append(" ".join(sents[i] for i in sorted(keep)))
        return out

    def rerank(
        self, question: str, hits: list[Hit], rows: dict[int, PassageRow], sentences: dict[int, list[SentenceRow]] | None = None
    ) -> list[Hit]:
        """The top `rerank_passages` hits re-ordered by the cross-encoder's logit plus `rerank_weight`
        times their fused score; the rest keep their order below them. Each re-read hit carries its
        probability of answering the question (`Hit.rerank`) and the score it is ordered by
        (`Hit.relevance`), which the readers then trust instead of the fused score. With
        `rerank_margin`, a question whose first hit leads the second by at least that keeps its
        fused order, unread. `sentences`
        (the store's, by passage) let it read each passage's best sentences only."""
        n = self.config.rerank_passages
        head = [h for h in hits[:n] if h.passage_id in rows]
        if n <= 0 or len(head) < 2:
            return hits
        if 0 < self.config.rerank_margin <= head[0].score - head[1].score:  # retrieval is sure enough: not worth the time
            return hits
        logits = self.scores(question, self.texts(question, [rows[h.passage_id] for h in head], sentences or {}))
        w = self.config.rerank_weight
        # The order, in the fused score's units (what the readers weigh passages by): weight 0 leaves
        # it to the cross-encoder alone.
        relevance = [h.score + float(x) / w if w > 0 else float(x) for h, x in zip(head, logits)]
        order = sorted(range(len(head)), key=lambda i: -relevance[i])
        reread = [replace(head[i], rerank=1.0 / (1.0 + math.exp(-float(logits[i]))), relevance=relevance[i]) for i in order]
        return reread + [h for h in hits if h not in head]


__all__ = ["Reranker", "load_reranker", "WEIGHTS"]
