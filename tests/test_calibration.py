"""The answer score as a probability: the fit, the reliability measure, and the reader applying it."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from qa.readers.calibration import FITTED_SETTINGS, Calibration, MergedCalibration, fit, reliability
from qa.readers.span import WEIGHTS, SpanReader


def test_fit_recovers_a_known_logistic_relation() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 3)) * [3.0, 1.0, 0.3]
    p = 1 / (1 + np.exp(-(0.8 * x[:, 0] - 1.5 * x[:, 1] + 0.0 * x[:, 2] - 0.5)))
    y = (rng.random(len(p)) < p).astype(float)
    weights, bias = fit(x, y)
    assert np.allclose(weights[:2], [0.8, -1.5], atol=0.1) and abs(bias + 0.5) < 0.1


def test_reliability_bins_and_expected_calibration_error() -> None:
    scores = np.array([0.15] * 10 + [0.85] * 10)
    right = np.array([1] * 1 + [0] * 9 + [1] * 9 + [0] * 1, dtype=float)  # 10% and 90% right
    rows, ece = reliability(scores, right)
    assert [r["n"] for r in rows] == [10, 10]
    assert ece == 0.05  # |0.15 - 0.1| and |0.85 - 0.9|, each half the answers
    overconfident = reliability(np.full(20, 0.99), right)[1]
    assert overconfident > 0.4


def test_the_reader_scores_with_its_calibration_and_withholds_below_the_threshold(sample_index, embedder) -> None:
    from qa.pipeline import Pipeline

    cfg = sample_index.replace(answer_threshold=0.0)
    reader = SpanReader(cfg)
    pipeline = Pipeline(cfg, embedder, reader=reader)
    question = "Which chips would Inspur use in its servers?"
    reader.__dict__["calibration"] = Calibration((1.0, 0.0, 0.0), 0.0)  # the identity: sigmoid(logit)
    raw = pipeline.ask(question).answers
    reader.__dict__["calibration"] = Calibration((1.0, -1.0, 0.0), -2.0)
    shifted = pipeline.ask(question).answers
    assert raw and [a.text for a in raw] == [a.text for a in shifted]
    assert all(b.score < a.score for a, b in zip(raw, shifted) if 0.001 < a.score < 0.999)  # the bias and the gap lower them
    assert any(b.score < a.score for a, b in zip(raw, shifted))
    assert all(x.score >= y.score for x, y in zip(shifted, shifted[1:]))
    strict = SpanReader(sample_index.replace(answer_threshold=0.3), model=reader.model, tokenizer=reader.tokenizer)
    strict.__dict__["calibration"] = Calibration((1.0, 0.0, 0.0), -100.0)  # nothing is likely right
    assert Pipeline(sample_index, embedder, reader=strict).ask(question).no_answer


def test_the_shipped_calibration_is_fitted_and_ranks_second_answers_lower() -> None:
    cal = Calibration.load(WEIGHTS)
    assert cal.fitted_on, "qa/reader_weights/calibration.json is missing: python -m training.calibrate fit"
    assert cal.weights[0] > 0  # a stronger span is more likely right
    assert cal.probability(5.0, 0.0, 0.8) > cal.probability(5.0, 3.0, 0.8)  # behind the best span: less sure


def test_fitting_to_f1_credits_answers_that_overlap_the_one_reference() -> None:
    """The calibration fold has one reference answer a question: fitted to F1, an answer that half
    overlaps it counts half right, so the same logits get higher probabilities than fitted to EM."""
    from training.calibrate import fit_rows

    rng = np.random.default_rng(1)
    rows = []
    for logit in rng.normal(size=4000) * 2:
        right = rng.random() < 1 / (1 + np.exp(-logit))
        em, f1 = (1.0, 1.0) if right else (0.0, 0.5 if rng.random() < 0.5 else 0.0)
        rows.append({"candidates": [{"features": [float(logit), 0.0, 0.0], "em": em, "f1": f1}]})
    by_em, by_f1 = fit_rows(rows, "open", "em"), fit_rows(rows, "open", "f1")
    assert abs(by_em.weights[0] - 1.0) < 0.15 and abs(by_em.bias) < 0.15
    for logit in (-2.0, 0.0):
        assert by_f1.probability(logit, 0.0, 0.0) > by_em.probability(logit, 0.0, 0.0) + 0.03
    scored = [by_f1.probability(*r["candidates"][0]["features"]) for r in rows]
    assert abs(np.mean(scored) - np.mean([r["candidates"][0]["f1"] for r in rows])) < 0.01
    assert by_f1.extra["label"] == "f1"


def test_each_shipped_calibration_holds_at_the_settings_it_was_fitted_at(caplog, tmp_path) -> None:
    """The score is a probability only at the reading budget and margin it was fitted at: every
    shipped fit is found by its settings, the defaults have one (a default changed without a refit
    fails here), other settings get the defaults' fit with a warning, and a fit made at them is
    written under their name and taken there only."""
    from qa.config import Config

    defaults = Config()
    shipped = [Calibration.read(path) for path in sorted(WEIGHTS.glob("calibration*.json"))]
    assert Calibration.load(WEIGHTS, defaults) in shipped
    for cal in shipped:
        assert set(cal.extra.get("settings", {})) == set(FITTED_SETTINGS)
        config = defaults.replace(**cal.extra["settings"])
        assert Calibration.load(WEIGHTS, config) == cal
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="qa.readers.span"):
            assert SpanReader(config).calibration == cal
        assert not caplog.records
    assert Calibration.load(WEIGHTS, defaults).stale_settings(defaults) == {}, "refit: python -m training.calibrate fit"
    other = defaults.replace(span_context_tokens=defaults.span_context_tokens + 32)
    cal = Calibration.load(WEIGHTS, other)
    assert cal == Calibration.load(WEIGHTS, defaults)  # no fit for these: the defaults', with a warning
    assert cal.stale_settings(other) == {"span_context_tokens": (defaults.span_context_tokens, defaults.span_context_tokens + 32)}
    with caplog.at_level(logging.WARNING, logger="qa.readers.span"):
        SpanReader(other).calibration
    assert "span_context_tokens" in caplog.text and "training.calibrate fit" in caplog.text
    fitted = Calibration((0.5, -0.1, 1.0), 0.2, "a fit at other settings", {"settings": {k: getattr(other, k) for k in FITTED_SETTINGS}})
    assert fitted.save(tmp_path, other).name == f"calibration-span_context_tokens={other.span_context_tokens}.json"
    assert Calibration.load(tmp_path, other) == fitted and fitted.stale_settings(other) == {}
    assert Calibration.load(tmp_path, defaults) == Calibration()  # no defaults' fit in that folder


def test_the_merged_calibration_is_the_identity_until_fitted_and_then_credits_independent_articles(tmp_path) -> None:
    assert MergedCalibration().probability(0.42, 0.42, 1) == pytest.approx(0.42, abs=1e-9)
    # Answers in more independent articles are right more often, at the same best score.
    rows = [(s, s, n) for s in np.linspace(0.1, 0.9, 9) for n in (1, 3)]
    x = np.array([MergedCalibration.features(*r) for r in rows for _ in range(20)])
    rng = np.random.default_rng(0)
    y = np.array([float(rng.random() < min(0.99, r[0] * (1.3 if r[2] > 1 else 0.8))) for r in rows for _ in range(20)])
    fitted = MergedCalibration(*fit(x, y))
    assert fitted.probability(0.5, 0.8, 3) > fitted.probability(0.5, 0.5, 1)
    fitted.save(tmp_path)
    assert MergedCalibration.load(tmp_path).probability(0.5, 0.8, 3) == pytest.approx(fitted.probability(0.5, 0.8, 3))
    assert MergedCalibration.load(tmp_path / "elsewhere") == MergedCalibration()
