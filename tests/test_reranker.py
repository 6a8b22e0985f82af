"""The cross-encoder reranker: its mined training data, a run that resumes to the same weights as an
unbroken one, and the shipped model re-ordering the service's passages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qa.config import Config
from qa.pipeline import Pipeline
from qa.reranker import META_FILE, WEIGHTS, WEIGHTS_FILE, Reranker
from tests.test_retrieval_training import NEWS, data  # noqa: F401 - the fixture, shared
from tests.test_squad_reader import ARTICLES, QUESTIONS
from training.reranker import main
from training.retrieval import load_fold


def test_mined_examples_resume_and_shipping(data: Path, tmp_path: Path) -> None:  # noqa: F811
    import torch
    from safetensors.torch import load_file

    work, targets = tmp_path / "work", tmp_path / "targets"
    main(["--data", str(data), "--work", str(work), "--targets", str(targets), "prepare", "--limit", "0", "--pool", "3"])
    mined = json.loads((work / "examples.json").read_text())
    texts, examples = mined["texts"], mined["examples"]
    paragraphs, _ = load_fold(data, "train")
    assert sorted(texts) == sorted(p["context"] for p in paragraphs)  # one passage per short paragraph
    answers = {q: a for *_, q, a in QUESTIONS} | {q: a for _, _, q, a in NEWS}
    assert len(examples) == len(QUESTIONS) + 1  # the SQuAD questions and the oldest news question
    for ex in examples:
        assert answers[ex["question"]] in texts[ex["positive"]]
        assert len(ex["negatives"]) == 3 and ex["positive"] not in ex["negatives"]
        assert all(answers[ex["question"]] not in texts[n] for n in ex["negatives"])

    def train(out: Path, *extra: str) -> None:
        args = ["--epochs", "2", "--batch", "2", "--negatives", "2", "--pool", "3", "--max-len", "64"]
        args += ["--threads", "1", "--precision", "fp32", "--checkpoint-every", "1", *extra]
        main(["--data", str(data), "--work", str(work), "train", "--out", str(out), *args])

    train(tmp_path / "w1")  # unbroken: 2 epochs of 4 steps
    for ckpt in work.glob("checkpoint-*.pt"):
        ckpt.unlink()
    train(tmp_path / "w2", "--stop-after", "3")
    assert not (tmp_path / "w2" / WEIGHTS_FILE).exists()
    train(tmp_path / "w2")  # resumed from step 3
    one, two = load_file(str(tmp_path / "w1" / WEIGHTS_FILE)), load_file(str(tmp_path / "w2" / WEIGHTS_FILE))
    assert one.keys() == two.keys() and "classifier.weight" in one
    assert not any(k.startswith("bert.embeddings.") for k in one)  # the bundled model's, not shipped
    assert all(torch.equal(one[k], two[k]) for k in one)
    meta = json.loads((tmp_path / "w1" / META_FILE).read_text())
    assert meta["train_questions"] == len(examples) and meta["max_len"] == 64

    # Continuing a reranker on the questions after the first two starts from all its weights, head too.
    train(tmp_path / "w3", "--init", str(tmp_path / "w1"), "--skip", "2", "--epochs", "1", "--lr", "0")
    three = load_file(str(tmp_path / "w3" / WEIGHTS_FILE))
    assert all(torch.equal(one[k], three[k]) for k in one)  # learning rate 0: nothing moved from w1
    continued = json.loads((tmp_path / "w3" / META_FILE).read_text())
    assert continued["train_questions"] == len(examples) - 2 and continued["init_recipe"] == meta

    # Distillation: a teacher that ranks the first negative above the passage that answers pulls the
    # student its way; questions the teacher did not score are left out.
    teacher = work / "teacher.jsonl"
    teacher.write_text("".join(json.dumps({"i": i, "logits": [0.0, 8.0, -8.0, -8.0]}) + "\n" for i in range(len(examples) - 1)))

    def margins(weights: Path) -> float:
        """The mean logit of each question's first negative over its passage's."""
        reranker = Reranker(Config.load(backend="torch"), weights)
        pairs = [(ex["question"], [texts[ex["negatives"][0]], texts[ex["positive"]]]) for ex in examples]
        return float(np.mean([np.subtract(*reranker.scores(q, read)) for q, read in pairs]))

    train(tmp_path / "w4", "--init", str(tmp_path / "w1"), "--teacher", str(teacher), "--distill", "1", "--negatives", "3", "--lr", "2e-4")
    assert json.loads((tmp_path / "w4" / META_FILE).read_text())["train_questions"] == len(examples) - 1
    assert margins(tmp_path / "w4") > margins(tmp_path / "w1") + 1.0

    # The trained layers load onto the bundled model and score a pair on either backend.
    for backend in ("torch", "onnx"):
        config = Config.load(backend=backend, cache=tmp_path / "cache")
        scores = Reranker(config, tmp_path / "w1").scores("Who leads the survey in Harlow?", [ARTICLES["Kites_of_Harlow"][0], NEWS[2][1]])
        assert scores.shape == (2,) and np.isfinite(scores).all()


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
    from qa.store import PassageRow, SentenceRow
    from training.squad_reader import sentence_spans

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
def lookalike_index(tmp_path_factory, embedder) -> Config:  # noqa: F811
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
