"""A trained span reader: start/end logits over the question's best sentences, with a no-answer score.

The model is a transformers question-answering model (`BertForQuestionAnswering` or anything
`AutoModelForQuestionAnswering` loads). By default it is the bundled all-MiniLM-L6-v2 encoder with
its six layers and the span head trained by `make train-reader`: only those ship, in
`qa/reader_weights/` (fp16 safetensors plus `reader.json`), and are put on the bundled encoder's
word embeddings at load time. `Config.reader_model` names another model (hub name or folder) instead,
or several, comma-separated ("" or "shipped" for the shipped one): an ensemble, read as one model
whose start and end logits are the members' mean (more accurate, one forward pass per member).

Reading is one forward pass per question: the sentences of the retrieved passages are ranked by
their index-time embeddings, the best ones (up to `span_context_tokens` tokens) are grouped back
into contiguous stretches of their passages, and the stretches are read as one text after the
question (`qa.readers.span_decoding`): one window, the question once, no span across two stretches.
The no-answer score is SQuAD 2's: the [CLS] start plus end logits. When the no-answer logit wins,
the span is withheld. Spans are ranked, and scored, by sigmoid(span logit - no-answer logit -
`span_passage_weight` x how far their passage's retrieval score is below the best passage's); a
span whose score is below `answer_threshold` is withheld.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from qa.config import Config
from qa.embedding import resolve_model
from qa.encoders import cached_onnx, export_onnx, files_key, onnx_session, quiet_transformers, trained_model
from qa.index import Index
from qa.index.base import PassageRow
from qa.models import Answer
from qa.readers.aggregate import aggregate
from qa.readers.base import (
    echoes,
    is_why,
    make_answer,
    question_stems,
    sentence_cosines,
    stem,
    trim,
)
from qa.readers.calibration import Calibration, MergedCalibration
from qa.readers.sentence import SentenceReader
from qa.readers.span_decoding import Logits, read_spans, token_lengths
from qa.retriever import Hit

WEIGHTS = Path(__file__).resolve().parent.parent / "reader_weights"
META_FILE = "reader.json"
TOP_FILE = "top_layers.safetensors"
#: The MatMuls the int8 reader keeps in fp32: each layer's feed-forward output projection, whose
#: inputs (after GELU) have the outliers that int8 rounds away (docs/reader.md has the figures).
FLOAT_MATMULS = r"/layer\.\d+/output/dense/"

_torch_lock = threading.Lock()
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- loading


def load_qa_model(name_or_path: str | Path | None = None):
    """(model, tokenizer) in eval mode. None or "" is the shipped reader; a folder with `reader.json`
    is a trained top on top of its base encoder; anything else goes to AutoModelForQuestionAnswering."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, BertForQuestionAnswering

    path = Path(name_or_path) if name_or_path else WEIGHTS
    with quiet_transformers():
        if (path / META_FILE).exists():
            base = resolve_model(json.loads((path / META_FILE).read_text())["base_model"])
            model = trained_model(base, path / TOP_FILE, BertForQuestionAnswering)
            tokenizer = AutoTokenizer.from_pretrained(base)
        else:
            name = resolve_model(str(name_or_path))
            model = AutoModelForQuestionAnswering.from_pretrained(name)
            tokenizer = AutoTokenizer.from_pretrained(name)
    model.eval()
    return model, tokenizer


def member_names(reader_model: str) -> list[str]:
    """`Config.reader_model` as the models it names; "" stands for the shipped reader."""
    names = [n.strip() for n in reader_model.split(",")] if reader_model else [""]
    return ["" if n == "shipped" else n for n in names]


def _sources(name: str) -> list[Path]:
    """The local files a model is made of (what its exported ONNX file is keyed on); "" is the shipped reader."""
    if not name:
        meta = json.loads((WEIGHTS / META_FILE).read_text())
        return [WEIGHTS, Path(resolve_model(meta["base_model"]))]
    folder = Path(resolve_model(name))
    return [folder] if folder.is_dir() else []


# --------------------------------------------------------------------------------------- logits


class TorchLogits:
    """The torch model as `Logits`, on `threads` torch threads (0: torch's own number).

    One call at a time in the process (`_torch_lock`, shared by every TorchLogits): torch's thread
    count is process-wide, and each call sets it for itself and restores it.
    """

    def __init__(self, model, threads: int) -> None:
        self.model = model
        self.threads = threads

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with _torch_lock, torch.inference_mode():
            threads = torch.get_num_threads()
            if self.threads > 0:
                torch.set_num_threads(self.threads)
            try:
                out = self.model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
            finally:
                torch.set_num_threads(threads)
        return out.start_logits.float().numpy(), out.end_logits.float().numpy()


class OnnxLogits:
    """The exported model as `Logits`: an ONNX Runtime session over the file at `path`.

    No lock: a session runs calls from several threads at once. It is fed only the inputs the
    exported graph has (a model without token types takes none).
    """

    def __init__(self, path: Path) -> None:
        self.session = onnx_session(path)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.session.run(None, {k: inputs[k] for k in self.inputs})
        return start, end


class MeanLogits:
    """An ensemble as one `Logits`: the members' start and end logits, averaged.

    The members read the same inputs, so they must share one tokenization (`SpanReader` refuses
    an ensemble whose tokenizers differ); it is as safe across threads as its members are.
    """

    def __init__(self, members: list[Logits]) -> None:
        self.members = members

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        outs = [member(inputs) for member in self.members]
        return np.mean([s for s, _ in outs], axis=0), np.mean([e for _, e in outs], axis=0)


def onnx_logits(model, sources: list[Path], cache: Path, quantize: bool) -> OnnxLogits:
    """The QA model exported to ONNX (int8 with `quantize`) once, under `cache`, keyed by its files."""
    import torch

    class QA(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.start_logits, out.end_logits

    target = cache / "onnx" / f"reader-{sources[0].name}-{files_key(*sources)}"
    path = cached_onnx(target, quantize, lambda out: export_onnx(QA(model), out, ["start_logits", "end_logits"]), keep_float=FLOAT_MATMULS)
    return OnnxLogits(path)


# --------------------------------------------------------------------------------------- reader


@dataclass
class _Context:
    row: PassageRow
    start: int  # offsets in the passage text
    end: int
    sentences: list[tuple[int, int]]  # the passage's sentence spans


class SpanReader:
    """Answers as spans of the retrieved passages' text, read by an extractive QA model (or an ensemble).

    In the order below: `contexts` picks the retrieved passages' best sentences within
    `span_context_tokens`; `logits` is the model on the configured backend; `candidates` decodes
    its spans (`read_spans`) and weighs them by their passage's retrieval; `read` keeps those whose
    calibrated probability reaches `answer_threshold` (a why-question may go to the sentence
    reader instead, as `why_reader` says).

    One reader serves all the service's threads and keeps no state of a question. The models, and
    their ONNX export the first time, load on first use: `warm` pays for that before questions do.
    """

    def __init__(self, config: Config, model=None, tokenizer=None) -> None:
        self.config = config  # its reader_precision and why_reader were checked by Config
        self.why_reader = SentenceReader(config)
        if model is not None:
            self.__dict__["_members"] = [(model, tokenizer)]

    @cached_property
    def _members(self) -> list[tuple]:
        """(model, tokenizer) of each model `reader_model` names; an ensemble must share one tokenizer."""
        names = member_names(self.config.reader_model)
        loaded = [load_qa_model(name or None) for name in names]
        vocab = loaded[0][1].get_vocab()
        for name, (_, tokenizer) in zip(names[1:], loaded[1:]):
            if tokenizer.get_vocab() != vocab:
                raise ValueError(
                    f"reader model {name or 'shipped'}: its tokenizer is not {names[0] or 'shipped'}'s, "
                    "and an ensemble reads one tokenization"
                )
        return loaded

    @property
    def model(self):
        return self._members[0][0]

    @property
    def tokenizer(self):
        return self._members[0][1]

    @property
    def max_len(self) -> int:
        limit = min(getattr(model.config, "max_position_embeddings", 512) for model, _ in self._members)
        return min(self.config.span_max_len, limit)

    def warm(self) -> None:
        self.logits  # the model, and its ONNX export the first time: seconds, not for a question to pay

    def contexts(
        self, question: str, question_vector: np.ndarray, index: Index, hits: list[Hit], rows: dict[int, PassageRow]
    ) -> list[_Context]:
        """The best sentences of the retrieved passages, up to the token budget, as contiguous stretches."""
        hits = [h for h in hits if h.passage_id in rows][: self.config.read_passages]
        if not hits:
            return []
        found = sentence_cosines(index, hits, question_vector)
        if found is None:
            return []
        sentences, cosines = found
        q_stems = question_stems(question)
        cfg = self.config
        texts, cands = [], []  # (score, passage id, sentence index)
        k = 0
        for h in hits:
            row = rows[h.passage_id]
            for j, s in enumerate(sentences[h.passage_id]):
                text = row.text[s.start : s.end]
                words = {stem(w) for w in re.findall(r"\w+", text)}
                overlap = len(q_stems & words) / len(q_stems) if q_stems else 0.0
                score = cfg.span_weight_cosine * float(cosines[k]) + cfg.span_weight_overlap * overlap + cfg.span_weight_passage * h.prior
                cands.append((score, h.passage_id, j))
                texts.append(text)
                k += 1
        lengths = token_lengths(self.tokenizer, texts)
        order = sorted(range(len(cands)), key=lambda i: -cands[i][0])
        budget = self.config.span_context_tokens
        chosen: dict[int, set[int]] = {}
        seen: set[tuple[str, int]] = set()  # the same sentence reached through overlapping windows
        used = 0
        for i in order:
            _, pid, j = cands[i]
            row, s = rows[pid], sentences[pid][j]
            key = (row.document_id, row.start + s.start)
            if key in seen:
                continue
            if used and used + lengths[i] > budget:
                continue
            seen.add(key)
            chosen.setdefault(pid, set()).add(j)
            used += lengths[i]
            if used >= budget:
                break
        out: list[_Context] = []
        for pid, js in chosen.items():
            spans = [(s.start, s.end) for s in sentences[pid]]
            run: list[int] = []
            for j in sorted(js) + [None]:
                if run and (j is None or j != run[-1] + 1):
                    out.append(_Context(rows[pid], spans[run[0]][0], spans[run[-1]][1], spans))
                    run = []
                if j is not None:
                    run.append(j)
        return out

    @cached_property
    def logits(self) -> Logits:
        members = [self._logits(name, model) for name, (model, _) in zip(member_names(self.config.reader_model), self._members)]
        return members[0] if len(members) == 1 else MeanLogits(members)

    def _logits(self, name: str, model) -> Logits:
        """ONNX Runtime for the ONNX backends (the shipped reader, or a model in a local folder),
        else torch; a model the exporter cannot trace also runs on torch."""
        sources = _sources(name)
        if self.config.backend.startswith("onnx") and sources:
            try:
                return onnx_logits(
                    model,
                    sources,
                    self.config.cache,
                    quantize=self.config.backend == "onnx-int8" and self.config.reader_precision == "int8",
                )
            except Exception as exc:  # noqa: BLE001 - any exporter failure: the torch model still reads
                log.warning("span reader stays on torch: ONNX export failed (%s)", exc)
        return TorchLogits(model, self.config.reader_threads)

    def scored_spans(
        self, question: str, question_vector: np.ndarray, index: Index, hits: list[Hit], rows: dict[int, PassageRow]
    ) -> list[tuple[Answer, tuple[float, float, float]]]:
        """Distinct spans, best first, each with its calibration features (logit, gap, retrieval)."""
        contexts = self.contexts(question, question_vector, index, hits, rows)
        if not contexts:
            return []
        texts = [c.row.text[c.start : c.end] for c in contexts]
        spans = read_spans(self.logits, self.tokenizer, question, texts, self.max_len, self.config.span_stride, self.config.span_max_tokens)
        # The reader alone is too sure of a span in a distracting passage: a passage retrieved
        # below the best one costs its spans `span_passage_weight` logits per unit of its prior
        # (the fused score, or the reranker's relevance when it re-read the passages).
        retrieved = {h.passage_id: h.prior for h in hits}
        fused = {h.passage_id: h.score for h in hits}
        best = max(retrieved.values())
        ranked = sorted(
            (
                (sp.logit + self.config.span_passage_weight * (retrieved.get(contexts[sp.context].row.id, 0.0) - best), sp)
                for sp in spans
                if sp.logit > self.config.span_null_margin
            ),
            key=lambda pair: -pair[0],
        )
        out: list[tuple[Answer, tuple[float, float, float]]] = []
        taken: list[tuple[str, int, int]] = []
        top: float | None = None  # the best kept span's logit: confidence is the gap to it
        for logit, sp in ranked[: 4 * self.config.max_answers]:
            c = contexts[sp.context]
            row = c.row
            start, end = trim(row.text, c.start + sp.start, c.start + sp.end)
            # A span that only repeats the question ("Harbour master" from a headline) names what
            # is asked about, not the answer: it is passed over, not counted as the best.
            if end <= start or echoes(question, row.text[start:end]):
                continue
            doc_start, doc_end = row.start + start, row.start + end
            if any(d == row.document_id and not (doc_end <= a or doc_start >= b) for d, a, b in taken):
                continue  # the same words through an overlapping window or a second span
            taken.append((row.document_id, doc_start, doc_end))
            s_start = max((a for a, _ in c.sentences if a <= start), default=c.start)
            s_end = min((b for _, b in c.sentences if b >= end), default=c.end)
            score = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, logit))))
            top = logit if top is None else top
            features = (logit, top - logit, fused.get(row.id, 0.0))
            out.append((make_answer(row, start, end, s_start, s_end, score), features))
        return out

    @cached_property
    def calibration(self) -> Calibration:
        """The shipped reader's calibration fitted at this reader's settings (the defaults' when there
        is none for them, with a warning); another model's scores stay sigmoid(logit)."""
        calibration = Calibration.load(WEIGHTS if member_names(self.config.reader_model) == [""] else None, self.config)
        for name, (fitted, now) in calibration.stale_settings(self.config).items():
            log.warning(
                "answer scores were fitted with %s=%s, not %s: they are not probabilities now "
                "(refit: python -m training.calibrate fit --out DIR)",
                name,
                fitted,
                now,
            )
        return calibration

    @cached_property
    def merged_calibration(self) -> MergedCalibration:
        """The shipped reader's calibration of merged answers (the identity for another model)."""
        return MergedCalibration.load(WEIGHTS if member_names(self.config.reader_model) == [""] else None)

    def _rescored(self, merged: list[Answer]) -> list[Answer]:
        """Merged answers scored by their merged calibration: best first, or in the order of their
        support (QA_AGGREGATE=support)."""
        cal = self.merged_calibration
        if cal == MergedCalibration():  # none shipped (the default): the scores stand, no copy per answer
            return merged
        rescored = [a.model_copy(update={"score": round(cal.probability(a.score, a.support, a.articles), 4)}) for a in merged]
        return rescored if self.config.aggregate == "support" else sorted(rescored, key=lambda a: -a.score)

    def read(
        self, question: str, question_vector: np.ndarray, index: Index, hits: list[Hit], rows: dict[int, PassageRow]
    ) -> list[Answer]:
        if is_why(question):
            # Why-questions go to the readers `why_reader` names, in turn, until one answers: the
            # span head answers most of them better, the sentence reader's reason clauses cover
            # what it withholds (docs/reader.md).
            for name in self.config.why_reader.split(","):
                read = self.why_reader.read if name.strip() == "sentence" else self._read_spans
                if answers := read(question, question_vector, index, hits, rows):
                    return answers
            return []
        return self._read_spans(question, question_vector, index, hits, rows)

    def _read_spans(
        self, question: str, question_vector: np.ndarray, index: Index, hits: list[Hit], rows: dict[int, PassageRow]
    ) -> list[Answer]:
        scored = [
            answer.model_copy(update={"score": round(self.calibration.probability(*features), 4)})
            for answer, features in self.scored_spans(question, question_vector, index, hits, rows)
        ]
        if self.config.aggregate != "off" and scored:
            # Copies of one story (the index's near-duplicate clusters) count as one article.
            clusters = index.store.clusters(sorted({a.document_id for a in scored}))
            scored = aggregate(scored, lambda doc_id: clusters.get(doc_id, doc_id), by_support=self.config.aggregate == "support")
            scored = self._rescored(scored)
        return [a for a in scored if a.score >= self.config.answer_threshold][: self.config.max_answers]


__all__ = ["SpanReader", "TorchLogits", "OnnxLogits", "MeanLogits", "load_qa_model", "member_names", "WEIGHTS"]
