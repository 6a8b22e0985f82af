"""The span reader: any extractive QA model by name or folder, and the trained one shipped in qa/reader_weights/."""

from __future__ import annotations

import pytest

from qa.config import Config
from qa.index import build_index
from qa.pipeline import Pipeline
from qa.readers.base import echoes
from qa.readers.span import (
    FLOAT_MATMULS,
    WEIGHTS,
    MeanLogits,
    OnnxLogits,
    SpanReader,
    TorchLogits,
    load_qa_model,
    member_names,
)
from qa.readers.span_decoding import best_spans, encode, read_spans
from tests.conftest import HARBOUR_QUESTION, IBM_QUESTION, write_harbour_reports

shipped = pytest.mark.skipif(not (WEIGHTS / "reader.json").exists(), reason="no trained reader in qa/reader_weights")


def make_tiny_model(folder, seed: int = 0, tokenizer=None):
    """A randomly initialised BertForQuestionAnswering (with the bundled tokenizer unless given), saved to `folder`."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    from qa.embedding import resolve_model

    torch.manual_seed(seed)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(resolve_model(Config().model))
    cfg = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertForQuestionAnswering(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-qa"))


def _check_answers(result, index_cfg):
    from qa.index import open_index

    index = open_index(index_cfg)
    try:
        for a in result.answers:
            row = index.store.passages([a.passage_id])[a.passage_id]
            doc = index.store.document(a.document_id)
            assert row.text[a.start : a.end] == a.text and a.text
            assert doc["text"][a.document_start : a.document_end] == a.text
            assert row.text[a.sentence_start : a.sentence_start + len(a.sentence)] == a.sentence
            assert a.sentence_start <= a.start and a.end <= a.sentence_start + len(a.sentence)
            assert 0.0 <= a.score <= 1.0
        scores = [a.score for a in result.answers]
        assert scores == sorted(scores, reverse=True)
    finally:
        index.close()


def test_best_spans_respects_context_and_length():
    import numpy as np

    start = np.array([5.0, 0.0, 9.0, 1.0, 0.0])
    end = np.array([5.0, 0.0, 0.0, 1.0, 8.0])
    seq = [None, 0, 1, 1, 1]  # [CLS], a question token, three context tokens
    offsets = [(0, 0), (0, 3), (0, 4), (5, 9), (10, 14)]
    spans = best_spans(start, end, seq, offsets, max_tokens=3, per_window=1)
    assert spans[0][:2] == (0, 14) and spans[0][2] == pytest.approx(17.0 - 10.0)
    assert best_spans(start, end, seq, offsets, max_tokens=2, per_window=1)[0][:2] != (0, 14)


def test_best_spans_never_run_from_one_packed_context_into_the_next():
    import numpy as np

    start = np.array([0.0, 0.0, 9.0, 1.0, 0.0])
    end = np.array([0.0, 0.0, 0.0, 1.0, 8.0])
    seq = [None, 0, 1, 1, 1]
    offsets = [(0, 0), (0, 3), (0, 4), (5, 9), (10, 14)]  # "aaaa bbbb cccc": contexts "aaaa bbbb" and "cccc"
    assert best_spans(start, end, seq, offsets, max_tokens=3, per_window=1)[0][:2] == (0, 14)
    spans = best_spans(start, end, seq, offsets, max_tokens=3, per_window=4, breaks=[0, 10])
    assert spans and all((a < 10) == (b <= 10) for a, b, _ in spans)


class _CountingLogits:
    """The tiny model's logits, counting the windows it is given."""

    def __init__(self, logits) -> None:
        self.logits, self.shapes = logits, []

    def __call__(self, inputs):
        self.shapes.append(inputs["input_ids"].shape)
        return self.logits(inputs)


@pytest.mark.parametrize("max_len", [256, 24])
def test_a_questions_contexts_are_read_as_one_text_and_spans_map_back(tiny_model, tmp_path, max_len):
    """One window holds the question once and every context (overlapping windows only past
    `max_len`); each span comes back in its own context's offsets, never across two."""
    cfg = Config().replace(reader_model=str(tiny_model), cache=tmp_path)
    reader = SpanReader(cfg)
    logits = _CountingLogits(TorchLogits(reader.model, 1))
    contexts = ["Inspur would use IBM's Power8 chips.", "Bloomberg reported the deal.", "Ginni Rometty is the chief executive of IBM."]
    spans = read_spans(logits, reader.tokenizer, "What chips?", contexts, max_len, 8, max_tokens=30)
    windows = sum(shape[0] for shape in logits.shapes)
    assert windows == 1 if max_len == 256 else windows > 1
    assert {sp.context for sp in spans} == {0, 1, 2}  # random weights: some span in each context
    for sp in spans:
        text = contexts[sp.context][sp.start : sp.end]
        assert text and 0 <= sp.start < sp.end <= len(contexts[sp.context])
        assert text in " ".join(contexts)


def test_any_named_qa_model_reads_through_the_pipeline(tiny_model, sample_index, embedder, tmp_path):
    cfg = sample_index.replace(reader_model=str(tiny_model), answer_threshold=0.0, span_null_margin=-1e9, cache=tmp_path)
    reader = SpanReader(cfg)
    assert type(reader.model).__name__ == "BertForQuestionAnswering"
    assert isinstance(reader.logits, OnnxLogits)  # exported once, under the configured cache
    result = Pipeline(cfg, embedder, reader=reader).ask("What chips would Inspur use?")
    assert result.answers  # random weights, but every span must still be a traceable, verbatim span
    _check_answers(result, sample_index)


def test_spans_pay_for_a_weaker_passage(tiny_model, sample_index, embedder, tmp_path):
    """The ranking adds the passage's retrieval score: with a large weight the best retrieved
    passage's spans come first, whatever a (here random) model thinks of the others."""
    base = sample_index.replace(
        reader_model=str(tiny_model),
        answer_threshold=0.0,
        span_null_margin=-1e9,
        cache=tmp_path,
        max_answers=10,
        span_passage_weight=0.0,
        answer_passage_first=2.0,  # passages in retrieval's order, whatever the answers
    )
    question = "What chips would Inspur use?"
    plain = Pipeline(base, embedder, reader=SpanReader(base)).ask(question)
    best = plain.passages[0].id
    plain_firsts = [a.passage_id == best for a in plain.answers]
    assert plain_firsts != sorted(plain_firsts, reverse=True)  # the random model mixes the passages
    weighted_cfg = base.replace(span_passage_weight=1e3)
    weighted = Pipeline(weighted_cfg, embedder, reader=SpanReader(weighted_cfg)).ask(question)
    firsts = [a.passage_id == best for a in weighted.answers]
    assert firsts[0] and firsts == sorted(firsts, reverse=True)
    _check_answers(weighted, sample_index)


@pytest.mark.parametrize(
    "backend, precision, tolerance", [("onnx", "int8", 1e-3), ("onnx-int8", "int8", 0.35), ("onnx-int8", "float", 1e-3)]
)
def test_onnx_reader_gives_torch_logits(tiny_model, tmp_path, backend, precision, tolerance):
    import numpy as np

    cfg = Config().replace(reader_model=str(tiny_model), backend=backend, reader_precision=precision, cache=tmp_path)
    reader = SpanReader(cfg)
    enc = encode(reader.tokenizer, "What chips?", ["Inspur would use IBM's Power8 chips.", "A second, longer context here."], 64, 16)
    inputs = {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    fast = reader.logits(inputs)
    slow = TorchLogits(reader.model, 1)(inputs)
    assert isinstance(reader.logits, OnnxLogits)
    for a, b in zip(fast, slow):
        assert a.shape == b.shape and np.abs(a - b).max() <= tolerance


def test_the_int8_reader_keeps_its_feed_forward_outputs_in_float(tiny_model, tmp_path):
    """Those projections' outlying inputs are where int8 cost held-out F1; the rest is quantised."""
    import re

    import onnx

    reader = SpanReader(Config().replace(reader_model=str(tiny_model), backend="onnx-int8", cache=tmp_path))
    assert isinstance(reader.logits, OnnxLogits)
    [path] = (tmp_path / "onnx").glob("reader-*/model-int8-*.onnx")
    nodes = onnx.load(str(path)).graph.node
    floats = [n.name for n in nodes if n.op_type == "MatMul" and re.search(FLOAT_MATMULS, n.name)]
    assert len(floats) == reader.model.config.num_hidden_layers
    assert (
        sum(n.op_type == "MatMulInteger" for n in nodes) == 5 * reader.model.config.num_hidden_layers + 1
    )  # q, k, v, attention out, up; the head


def test_an_unknown_reader_precision_is_refused():
    with pytest.raises(ValueError, match="PRECISION: 'fp8' is not one of"):
        SpanReader(Config().replace(reader_precision="fp8"))


def test_an_ensemble_reads_the_mean_of_its_members_logits(tiny_model, sample_index, embedder, tmp_path):
    import numpy as np

    second = make_tiny_model(tmp_path / "second", seed=1)
    assert member_names(f" shipped , {second}") == ["", str(second)] and member_names("") == [""]
    reader = SpanReader(Config().replace(reader_model=f"{tiny_model},{second}", backend="torch", cache=tmp_path))
    assert isinstance(reader.logits, MeanLogits) and len(reader.logits.members) == 2
    enc = encode(reader.tokenizer, "What chips?", ["Inspur would use IBM's Power8 chips.", "A second, longer context here."], 64, 16)
    inputs = {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    each = [TorchLogits(load_qa_model(folder)[0], 1)(inputs) for folder in (tiny_model, second)]
    assert not np.allclose(each[0][0], each[1][0])
    for k, mean in enumerate(reader.logits(inputs)):
        assert np.allclose(mean, (each[0][k] + each[1][k]) / 2, atol=1e-5)
    cfg = sample_index.replace(reader_model=f"{tiny_model},{second}", answer_threshold=0.0, span_null_margin=-1e9, cache=tmp_path)
    served = SpanReader(cfg)  # the service's backend: each member exported to ONNX
    assert [type(m) for m in served.logits.members] == [OnnxLogits, OnnxLogits]
    result = Pipeline(cfg, embedder, reader=served).ask("What chips would Inspur use?")
    assert result.answers
    _check_answers(result, sample_index)


def test_an_ensemble_refuses_members_that_tokenize_differently(tiny_model, tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "chips", "what", "?"]) + "\n")
    other = make_tiny_model(tmp_path / "other", tokenizer=BertTokenizerFast(vocab_file=str(vocab)))
    reader = SpanReader(Config().replace(reader_model=f"{tiny_model},{other}", backend="torch", cache=tmp_path))
    with pytest.raises(ValueError, match="tokenizer"):
        reader.model


def test_config_names_the_reader_model(monkeypatch, tiny_model):
    monkeypatch.setenv("QA_READER_MODEL", str(tiny_model))
    assert Config.load().reader_model == str(tiny_model)


@shipped
def test_shipped_weights_are_small_and_load():
    from safetensors import safe_open

    files = sum(p.stat().st_size for p in WEIGHTS.iterdir())
    assert files < 24e6  # fp16 layers and head; the 11.7M-parameter word embeddings are never shipped
    with safe_open(str(WEIGHTS / "top_layers.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "embeddings" in k]  # noqa: SIM118 - safe_open is not a dict
    model, _ = load_qa_model(None)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384


@shipped
def test_trained_reader_answers_on_the_sample(sample_index, embedder):
    pipeline = Pipeline(sample_index, embedder, reader=SpanReader(sample_index))
    result = pipeline.ask("What chips would Inspur use?")
    assert result.answers and any("Power8" in a.text for a in result.answers), [a.text for a in result.answers]
    _check_answers(result, sample_index)
    why = pipeline.ask(IBM_QUESTION)
    assert not why.no_answer
    _check_answers(why, sample_index)


@shipped
def test_why_questions_go_to_the_reader_that_why_reader_names(sample_index, embedder):
    from qa.readers.sentence import SentenceReader

    def spans(reader) -> list[tuple[str, int]]:
        return [(a.text, a.document_start) for a in Pipeline(sample_index, embedder, reader=reader).ask(IBM_QUESTION).answers]

    sentence = spans(SentenceReader(sample_index))
    assert sentence
    assert spans(SpanReader(sample_index.replace(why_reader="sentence"))) == sentence
    span_head = spans(SpanReader(sample_index.replace(why_reader="span")))
    assert span_head != sentence
    # In turn: the span head's answers, or the reason clauses where it withholds them.
    assert spans(SpanReader(sample_index.replace(why_reader="span,sentence"))) == (span_head or sentence)
    with pytest.raises(ValueError, match="WHY_READER"):
        SpanReader(sample_index.replace(why_reader="both"))


def test_threads_tokenize_at_once_without_mixing_settings():
    """transformers' fast tokenizer sets padding and truncation on the shared Rust tokenizer at
    each call; under load, a question's batch came back unpadded (a 500 in the HTTP benchmark)."""
    from concurrent.futures import ThreadPoolExecutor

    from qa.readers.span_decoding import token_lengths

    _, tokenizer = load_qa_model(None)
    contexts = ["Short context.", "A much longer context about IBM, Inspur and the Power8 chips " * 12]
    expected = encode(tokenizer, IBM_QUESTION, contexts, 96, 32)["input_ids"].shape
    lengths = token_lengths(tokenizer, contexts)

    def work(k: int):
        if k % 2:
            return encode(tokenizer, IBM_QUESTION, contexts, 96, 32)["input_ids"].shape
        return token_lengths(tokenizer, contexts)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(800)))
    assert all(r == (expected if k % 2 else lengths) for k, r in enumerate(results))


def test_the_sentences_read_follow_the_configured_weights(tiny_model, sample_index, embedder, tmp_path):
    """With a one-token budget the reader reads the single best sentence: by cosine, by the question's
    words, or the best passage's first, as `span_weight_*` say."""
    question = "What chips would Inspur use?"
    chosen = {}
    for name, (cosine, overlap, passage) in {"cosine": (1.0, 0.0, 0.0), "overlap": (0.0, 1.0, 0.0), "passage": (0.0, 0.0, 1.0)}.items():
        cfg = sample_index.replace(
            reader_model=str(tiny_model),
            cache=tmp_path,
            span_context_tokens=1,
            span_weight_cosine=cosine,
            span_weight_overlap=overlap,
            span_weight_passage=passage,
        )
        pipeline = Pipeline(cfg, embedder, reader=SpanReader(cfg))
        index = pipeline.index()
        vector = embedder.embed([question])[0]
        hits = pipeline.retriever.retrieve(index, vector, question, cfg.read_passages, None)
        rows = index.store.passages([h.passage_id for h in hits])
        [context] = pipeline.reader.contexts(question, vector, index, hits, rows)
        chosen[name] = (context.row.id, context.row.text[context.start : context.end])
        if name == "passage":  # every sentence of the best passage ties; the first is read
            best = rows[hits[0].passage_id]
            assert context.row.id == best.id and context.start == context.sentences[0][0]
    assert "chips" in chosen["overlap"][1] and "Inspur" in chosen["overlap"][1]
    assert len(set(chosen.values())) > 1


@pytest.mark.parametrize(
    "question, span, echo",
    [
        ("Who is the harbour master of Quenby?", "Harbour master", True),
        ("Who is the harbour master of Quenby?", "the harbour masters", True),  # stems, case, stop words
        ("Who is the harbour master of Quenby?", "Ada Lovelace", False),
        ("What did IBM sell on Power chips?", "Powerservers", False),  # another word, however alike
        ("Who is the harbour master of Quenby?", "harbour master Ada Lovelace", False),
        ("Is the new harbour master Rowe or Vell?", "Vell", False),  # a choice holds its answer
        ("Who is the harbour master of Quenby?", "of the", False),  # no content word: not judged here
    ],
)
def test_a_span_that_only_repeats_the_question_is_an_echo(question, span, echo):
    assert echoes(question, span) is echo


class _EchoingLogits:
    """The tiny model's logits, made sure of every "harbour ... master" span: a model that answers
    "Who is the harbour master of X?" with "harbour master" (as the trained one did on feed pages)."""

    def __init__(self, logits, tokenizer) -> None:
        self.logits = logits
        self.first, self.last = tokenizer.convert_tokens_to_ids(["harbour", "master"])

    def __call__(self, inputs):
        start, end = self.logits(inputs)
        ids = inputs["input_ids"]
        return start + 50.0 * (ids == self.first), end + 50.0 * (ids == self.last)


def test_the_reader_never_answers_with_the_questions_own_words(tiny_model, config, embedder, tmp_path):
    """However sure the model is of "harbour master", the answer to "Who is the harbour master
    of Quillport?" is another span, and its confidence is not measured against the echo's."""
    write_harbour_reports(config.corpus)
    cfg = config.replace(reader_model=str(tiny_model), answer_threshold=0.0, span_null_margin=-1e9, cache=tmp_path)
    build_index(cfg, embedder)
    reader = SpanReader(cfg)
    reader.logits = _EchoingLogits(reader.logits, reader.tokenizer)
    pipeline = Pipeline(cfg, embedder, reader=reader)
    index, vector = pipeline.index(), embedder.embed_questions([HARBOUR_QUESTION])[0]
    hits = pipeline.retriever.retrieve(index, vector, HARBOUR_QUESTION, cfg.read_passages, None)
    scored = reader.scored_spans(HARBOUR_QUESTION, vector, index, hits, index.store.passages([h.passage_id for h in hits]))
    assert scored and not [a.text for a, _ in scored if echoes(HARBOUR_QUESTION, a.text)]
    assert scored[0][1][1] == 0.0  # the gap to the best span kept
    result = pipeline.ask(HARBOUR_QUESTION)
    assert result.answers and not [a.text for a in result.answers if echoes(HARBOUR_QUESTION, a.text)]
    _check_answers(result, cfg)
