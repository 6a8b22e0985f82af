"""`qa eval`: retrieval recall, MRR and SQuAD EM/F1 on a JSONL question set (format: ../shared/data/README.md)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from qa.config import Config
from qa.embedding import Embedder, resolve_model, vector_backend
from qa.encoders import files_key
from qa.index import IndexMismatch, build_index
from qa.models import Document, Filters
from qa.pipeline import Pipeline
from qa.progress import Progress
from qa.readers.base import Reader, is_why
from qa.scoring import exact_match, f1_score, normalize_answer, read_jsonl

RECALL_AT = (1, 5, 20)


def paragraphs_as_documents(paragraphs: list[dict]) -> list[Document]:
    return [
        Document(
            id=str(p["id"]),
            title=str(p.get("title") or p["id"]).replace("_", " "),
            text=p["context"],
            date=p.get("date"),
            url=p.get("url"),
            source=p.get("source"),
        )
        for p in paragraphs
    ]


def eval_config(config: Config, paragraphs_path: Path) -> Config:
    """A private index per paragraph file, model and kind of vectors, reused across runs (rebuilt when
    they change): a folder under the index folder, or its own collections on Milvus."""
    from qa.index import FORMAT_VERSION

    # A model folder retrained in place gets a new index: its files are part of the key.
    folder = Path(resolve_model(config.model))
    model = f"{config.model}|{files_key(folder)}" if folder.is_dir() else config.model
    key = f"{model}|{vector_backend(config.backend)}|{FORMAT_VERSION}".encode()
    digest = hashlib.sha256(paragraphs_path.read_bytes() + key).hexdigest()[:12]
    return config.replace(
        index=config.index / "eval" / f"{paragraphs_path.parent.name}-{digest}", milvus_prefix=f"{config.milvus_prefix}_eval_{digest}"
    )


def build_eval_index(config: Config, embedder: Embedder, paragraphs: list[dict]) -> None:
    """Brings `eval_config`'s private index up to these paragraphs. One left by another index format
    or other model weights is started afresh: it holds nothing but them."""
    docs = paragraphs_as_documents(paragraphs)
    try:
        build_index(config, embedder, upserts=docs, deletes=[], wait=600)
    except IndexMismatch:
        build_index(config, embedder, rebuild=True, upserts=docs, deletes=[], wait=600)


def evaluate(
    config: Config,
    paragraphs_path: Path,
    questions_path: Path,
    mode: str = "open",
    limit: int | None = None,
    extractive_only: bool = False,
    show_progress: bool = True,
) -> dict:
    """`qa eval`: the metrics of a JSONL question set asked of its own paragraphs file."""
    questions = read_jsonl(questions_path)
    if extractive_only:
        questions = [q for q in questions if q.get("answer_in_context", bool(q.get("answers")))]
    if limit:
        questions = questions[:limit]
    return evaluate_questions(config, paragraphs_path, questions, mode, show_progress=show_progress)


def evaluate_questions(
    config: Config,
    paragraphs_path: Path,
    questions: list[dict],
    mode: str = "open",
    reader: Reader | None = None,
    show_progress: bool = True,
) -> dict:
    """Retrieval recall and MRR, EM/F1 of the top answer, the no-answer rate and latency, over
    `questions` asked of an index of `paragraphs_path` (built once, reused). Questions marked
    `is_impossible` count apart: the share that got no answer (SQuAD 2's no-answer accuracy).
    `reader`: another reader than the configured one (training/reader_eval.py compares them)."""
    paragraphs = read_jsonl(paragraphs_path)
    cfg = eval_config(config, paragraphs_path)
    embedder = Embedder.from_config(cfg)
    build_eval_index(cfg, embedder, paragraphs)
    pipeline = Pipeline(cfg, embedder, reader=reader)
    pipeline.ask("warm up")

    hits = {k: 0 for k in RECALL_AT}
    rr = em = f1 = sentence_ok = 0.0
    answerable = unanswerable = no_answer_ok = empty = 0
    by_kind: dict[str, list[float]] = {}
    latencies: list[float] = []
    progress = Progress(len(questions), "questions", "question", enabled=show_progress)
    for q in questions:
        progress.update(1)
        gold = [a["text"] for a in q.get("answers", [])]
        filters = Filters(document_id=q["context_id"]) if mode == "gold" else None
        started = time.perf_counter()
        result = pipeline.ask(q["question"], top_k=max(RECALL_AT), filters=filters)
        latencies.append((time.perf_counter() - started) * 1000)
        ranked = [p.document_id for p in result.passages]
        if q["context_id"] in ranked:
            rank = ranked.index(q["context_id"]) + 1
            rr += 1 / rank
            for k in RECALL_AT:
                hits[k] += rank <= k
        if q.get("is_impossible"):
            unanswerable += 1
            no_answer_ok += result.no_answer
            continue
        if not gold:
            continue
        answerable += 1
        top = result.answers[0] if result.answers else None
        prediction = top.text if top else ""
        empty += top is None
        em += exact_match(prediction, gold)
        f = f1_score(prediction, gold)
        f1 += f
        kind = by_kind.setdefault("why" if is_why(q["question"]) else "other", [0, 0.0])
        kind[0] += 1
        kind[1] += f
        if top is not None:
            sentence = normalize_answer(top.sentence)
            sentence_ok += any(normalize_answer(g) in sentence for g in gold)
    progress.close()

    n = len(questions)
    metrics: dict = {"questions": n, "mode": mode}
    for k in RECALL_AT:
        metrics[f"recall@{k}"] = round(hits[k] / n, 4) if n else 0.0
    metrics["mrr"] = round(rr / n, 4) if n else 0.0
    metrics["em"] = round(em / answerable, 4) if answerable else 0.0
    metrics["f1"] = round(f1 / answerable, 4) if answerable else 0.0
    metrics["no_answer_rate"] = round(empty / answerable, 4) if answerable else 0.0
    metrics["sentence_accuracy"] = round(sentence_ok / answerable, 4) if answerable else 0.0
    metrics["f1_by_kind"] = {k: {"n": v[0], "f1": round(v[1] / v[0], 4)} for k, v in by_kind.items()}
    if unanswerable:
        metrics["no_answer_accuracy"] = round(no_answer_ok / unanswerable, 4)
        metrics["squad2_f1"] = round((f1 + no_answer_ok) / (answerable + unanswerable), 4)
    metrics["latency_ms_p50"] = round(float(np.percentile(latencies, 50)), 2) if latencies else 0.0
    metrics["latency_ms_p95"] = round(float(np.percentile(latencies, 95)), 2) if latencies else 0.0
    return metrics
