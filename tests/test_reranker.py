"""The cross-encoder reranker (qa/reranker.py): the shipped model preferring the passage that answers,
reading each passage's best sentences, and re-ordering the service's passages (its training:
tests/training/test_reranker_training.py)."""

from __future__ import annotations

import numpy as np
import pytest

from qa.config import Config
from qa.passages import sentence_spans
from qa.pipeline import Pipeline
from qa.reranker import META_FILE, WEIGHTS, WEIGHTS_FILE, Reranker
from tests.training.fixtures import ARTICLES, QUESTIONS


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Reranker:
    assert (WEIGHTS / WEIGHTS_FILE).exists() and (WEIGHTS / META_FILE).exists()
    return Reranker(Config.load())


def test_the_shipped_reranker_prefers_the_passage_that_answers(shipped: Reranker) -> None:
    passages = [text for texts in ARTICLES.values() for text in texts]
    for title, p, question, _ in QUESTIONS:
        scores = shipped.scores(question, passages)
        assert passages[int(np.argmax(scores))] == ARTICLES[title][p], question


def test_the_onnx_reranker_scores_as_torch_does(shipped: Reranker) -> None:
    torch_scores = Reranker(Config.load(backend="torch"))
    passages = [text for texts in ARTICLES.values() for text in texts]
    for _, _, question, _ in QUESTIONS[:4]:
        a, b = shipped.scores(question, passages), torch_scores.scores(question, passages)
        assert np.argmax(a) == np.argmax(b)
        # int8 weights: close, not equal, and how close depends on the CPU's int8 arithmetic (up to
        # 0.59 logits on a scores' range of 19 on an AVX2 machine without VNNI; under 0.5 with it).
        assert np.abs(a - b).max() < 0.05 * np.ptp(b)


def test_the_reranker_reads_each_passages_sentences_that_match_the_question(shipped: Reranker) -> None:
    from qa.index.base import PassageRow, SentenceRow

    rows, sentences = [], {}
    for k, text in enumerate(t for texts in ARTICLES.values() for t in texts):
        rows.append(PassageRow(k, f"d{k}", 0, 0, len(text), text, "t", None, None, None))
        sentences[k] = [SentenceRow(10 * k + j, k, a, b) for j, (a, b) in enumerate(sentence_spans(text))]
    question = "Who was the first master of the harbour?"
    short = Reranker(shipped.config.replace(rerank_context_tokens=12))
    short._loaded = shipped._loaded  # the same model, a smaller budget
    texts = short.texts(question, rows, sentences)
    assert texts[0] == "Its first master was Edith Varley."  # the sentence with most of the question's words
    assert all(t and t in rows[k].text for k, t in enumerate(texts))  # each passage keeps at least a sentence
    assert texts[1] != rows[1].text  # a passage over the budget is cut to its best sentences
    assert shipped.texts(question, rows, {}) == [r.text for r in rows]  # no sentences: the whole passage
    whole = Reranker(shipped.config.replace(rerank_context_tokens=0))
    assert whole.texts(question, rows, sentences) == [r.text for r in rows]


def test_reranking_reorders_the_passages_the_service_returns(sample_index: Config, embedder) -> None:
    question = "Who is IBM's chief executive?"
    sample_index = sample_index.replace(answer_passage_first=2.0)  # the order retrieval and reranking make, not the reader's
    plain = Pipeline(sample_index, embedder).ask(question, top_k=8)
    assert all(p.rerank is None for p in plain.passages)
    assert "CEO Ginni Rometty" not in plain.passages[0].text  # fusion alone does not put it first
    reranked = Pipeline(sample_index.replace(rerank_passages=8, rerank_weight=0.0), embedder).ask(question, top_k=8)
    assert sorted(p.id for p in reranked.passages) == sorted(p.id for p in plain.passages)  # the same eight, re-ordered
    probabilities = [p.rerank for p in reranked.passages]
    assert all(0.0 <= r <= 1.0 for r in probabilities)
    assert probabilities == sorted(probabilities, reverse=True)  # rerank_weight 0: the cross-encoder's order
    assert "CEO Ginni Rometty" in reranked.passages[0].text
    # A weight large enough for fused scores 0.0004 apart (this sample's closest pair) to outweigh any logit.
    weighted = Pipeline(sample_index.replace(rerank_passages=8, rerank_weight=1e6), embedder).ask(question, top_k=8)
    assert [p.id for p in weighted.passages] == [p.id for p in plain.passages]  # the fused score dominates
    # Gated by the margin of the first two fused scores: a lead above it keeps the fused order, unread.
    lead = plain.passages[0].score - plain.passages[1].score
    assert lead > 0.001
    sure = Pipeline(sample_index.replace(rerank_passages=8, rerank_weight=0.0, rerank_margin=lead / 2), embedder).ask(question, top_k=8)
    assert [(p.id, p.rerank) for p in sure.passages] == [(p.id, None) for p in plain.passages]
    unsure = Pipeline(sample_index.replace(rerank_passages=8, rerank_weight=0.0, rerank_margin=lead * 2), embedder).ask(question, top_k=8)
    assert [p.id for p in unsure.passages] == [p.id for p in reranked.passages]


@pytest.fixture(scope="module")
def lookalike_index(tmp_path_factory, embedder) -> Config:
    """The look-alike paragraphs of two articles, one passage each."""
    from qa.index import build_index
    from tests.conftest import write_article

    root = tmp_path_factory.mktemp("lookalike")
    (root / "corpus").mkdir()
    for k, (title, texts) in enumerate(ARTICLES.items()):
        write_article(root / "corpus", f"{k}.txt", title.replace("_", " "), *texts)
    cfg = Config.load(corpus=root / "corpus", index=root / "index")
    build_index(cfg, embedder)
    return cfg


def test_the_reader_trusts_the_passages_as_the_reranker_orders_them(lookalike_index: Config, embedder) -> None:
    from dataclasses import replace

    pipeline = Pipeline(lookalike_index.replace(rerank_passages=4), embedder)
    question = "When did the harbour of Quillport open?"
    index = pipeline.index()
    vector = embedder.embed_questions([question])[0]
    hits = pipeline.retriever.retrieve(index, vector, question, 4, None)
    rows = index.store.passages([h.passage_id for h in hits])
    reranked = pipeline.reranker.rerank(question, hits, rows)
    relevance = [h.relevance for h in reranked]
    assert all(r is not None for r in relevance) and relevance == sorted(relevance, reverse=True)
    assert [h.prior for h in reranked] == relevance and all(h.prior == h.score for h in hits)

    assert pipeline.reader.read(question, vector, index, reranked, rows)[0].text == "1887"
    # The same passages, the answering one put last by the reranker: the reader follows it there.
    gold = next(h for h in reranked if "opened in 1887" in rows[h.passage_id].text)
    demoted = [h for h in reranked if h is not gold] + [replace(gold, relevance=min(relevance) - 1.0)]
    answers = pipeline.reader.read(question, vector, index, demoted, rows)
    assert not answers or answers[0].passage_id != gold.passage_id
