"""The one configuration object: flags over `QA_*` variables over defaults, allowed values checked in
one place, fitted values read beside the shipped weights (and overridden loudly), and the settings
that change what is indexed recorded by every index."""

from __future__ import annotations

import json
import logging

import pytest

from qa.config import FITTED_FILE, Config, fitted_values
from qa.index import IndexMismatch, build_index, open_index
from tests.conftest import ROOT


def test_flags_override_variables_which_override_defaults(monkeypatch):
    monkeypatch.setenv("QA_TOP_K", "7")
    monkeypatch.setenv("QA_MAX_ANSWERS", "2")
    config = Config.load(top_k=3)
    assert (config.top_k, config.max_answers, config.read_passages) == (3, 2, Config().read_passages)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("QA_FUSION", "scre", "QA_FUSION: 'scre' is not one of score, rrf"),
        ("QA_BACKEND", "gpu", "QA_BACKEND: 'gpu' is not one of torch, onnx, onnx-int8"),
        ("QA_READER", "spam", "QA_READER: 'spam' is not one of span, sentence"),
        ("QA_WHY_READER", "span,span", "QA_WHY_READER"),
        ("QA_MILVUS_INDEX", "IVF", "QA_MILVUS_INDEX: 'IVF' is not one of IVF_FLAT, FLAT, HNSW"),
        ("QA_MAX_REMOVE_FRACTION", "2", "QA_MAX_REMOVE_FRACTION"),
        ("QA_TOP_K", "many", "QA_TOP_K: cannot read 'many' as int"),
    ],
)
def test_a_value_a_setting_does_not_allow_is_refused_with_the_allowed_ones(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Config.load()


def test_fitted_values_come_from_the_settings_beside_the_shipped_weights():
    shipped = {}
    for folder in ("reader_weights", "retriever_weights", "reranker_weights"):
        shipped |= json.loads((ROOT / "qa" / folder / FITTED_FILE).read_text())["settings"]
    assert fitted_values() == shipped and len(shipped) >= 12
    config = Config()
    assert all(getattr(config, name) == value for name, value in shipped.items())


def test_overriding_a_fitted_value_is_loud_and_a_user_setting_is_not(monkeypatch, caplog):
    monkeypatch.setenv("QA_SPAN_PASSAGE_WEIGHT", "30")
    monkeypatch.setenv("QA_TOP_K", "9")
    with caplog.at_level(logging.WARNING, logger="qa.config"):
        config = Config.load()
    assert config.span_passage_weight == 30.0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "QA_SPAN_PASSAGE_WEIGHT=30.0 overrides 40.0, fitted to the shipped weights" in warnings[0]
    assert "calibrated" in warnings[0]


def test_a_changed_passage_splitting_setting_asks_for_a_rebuild(config, embedder):
    from tests.conftest import write_article

    write_article(config.corpus, "a.txt", "Alpha", "The alpha plant produced forty tonnes of steel in March last year.")
    build_index(config, embedder)
    assert open_index(config).manifest.indexed_with == {"min_passage_words": 6, "window_overlap_sentences": 1, "dedup_threshold": 0.8}
    changed = config.replace(min_passage_words=9)
    with pytest.raises(IndexMismatch, match=r"QA_MIN_PASSAGE_WORDS=6 \(now 9\).*qa index --rebuild"):
        open_index(changed)
    with pytest.raises(IndexMismatch):
        build_index(changed, embedder, upserts=[], deletes=[])
    summary = build_index(changed, embedder, rebuild=True)
    assert summary.documents == 1 and open_index(changed).manifest.indexed_with["min_passage_words"] == 9
