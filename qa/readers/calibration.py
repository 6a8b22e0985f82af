"""The answer score as a probability: Platt scaling of the span reader's evidence.

The span reader ranks spans by a logit (span minus no-answer, less a penalty for a weaker passage).
A sigmoid of that logit is not the chance the span is right: it is over-confident, and every answer
of a clear question scores near 1. A logistic regression over three features, fitted on questions
the reader never trained on (`python -m training.calibrate fit`), turns them into the estimated
probability that the answer matches a gold answer (SQuAD exact match):
- `logit`: the span's ranking logit;
- `gap`: how far it is below the question's best span (0 for the best), so that the second answer
  of a question is not as sure as the first;
- `retrieval`: its passage's fused retrieval score.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FEATURES = ("logit", "gap", "retrieval")
CALIBRATION_FILE = "calibration.json"
# Everything the features depend on: the embedding model and fusion (the retrieval feature, and
# which passages are read), the reader's budget and the values fitted to its weights (the logit,
# the gap). A fit records them, and holds only at them: any other value is a stale fit.
FITTED_SETTINGS = (
    "model",
    "fusion",
    "weight_dense",
    "weight_sentence",
    "weight_lexical",
    "read_passages",
    "span_context_tokens",
    "span_max_tokens",
    "span_null_margin",
    "span_passage_weight",
    "span_weight_cosine",
    "span_weight_overlap",
    "span_weight_passage",
)


@dataclass(frozen=True)
class Calibration:
    weights: tuple[float, ...] = (1.0, 0.0, 0.0)  # the identity: sigmoid(logit)
    bias: float = 0.0
    fitted_on: str = ""
    extra: dict = field(default_factory=dict)

    def probability(self, logit: float, gap: float, retrieval: float) -> float:
        z = self.bias + self.weights[0] * logit + self.weights[1] * gap + self.weights[2] * retrieval
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    @classmethod
    def read(cls, path: Path) -> Calibration:
        data = json.loads(path.read_text())
        return cls(tuple(data["weights"]), float(data["bias"]), data.get("fitted_on", ""), data.get("extra", {}))

    @classmethod
    def load(cls, folder: Path | None, config: object | None = None) -> Calibration:
        """The calibration shipped beside a reader's weights: the one fitted at `config`'s reading
        settings when the folder has it (`file_name`), else the defaults' (`calibration.json`); the
        identity when there is none."""
        if folder is None:
            return cls()
        if config is not None and (path := folder / file_name(config)).exists():
            return cls.read(path)
        path = folder / CALIBRATION_FILE
        return cls.read(path) if path.exists() else cls()

    def stale_settings(self, config: object) -> dict[str, tuple]:
        """The recorded settings that `config` no longer has, {name: (fitted at, now)}: under them
        the score is no longer a fitted probability, and a refit is due."""
        fitted = self.extra.get("settings", {})
        return {k: (v, getattr(config, k)) for k, v in fitted.items() if hasattr(config, k) and getattr(config, k) != v}

    def save(self, folder: Path, config: object | None = None) -> Path:
        """Written as `file_name(config)`: `calibration.json` for the default settings."""
        folder.mkdir(parents=True, exist_ok=True)
        data = {"features": list(FEATURES), **asdict(self)}
        path = folder / (file_name(config) if config is not None else CALIBRATION_FILE)
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path


MERGED_FILE = "merged-calibration.json"  # (not calibration*.json: those are the occurrences' fits)
MERGED_FEATURES = ("score", "support", "articles")


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class MergedCalibration:
    """The score of an answer merged from several passages (qa/readers/aggregate.py): a logistic
    regression over its best occurrence's calibrated score, the noisy-OR `support` of its
    independent articles and how many there are, fitted on merged answers of questions the reader
    never trained on (`python -m training.news_eval --fit-merged DIR`). The identity until fitted."""

    weights: tuple[float, ...] = (1.0, 0.0, 0.0)
    bias: float = 0.0
    fitted_on: str = ""
    extra: dict = field(default_factory=dict)

    @staticmethod
    def features(score: float, support: float, articles: int) -> tuple[float, float, float]:
        return _logit(score), _logit(max(support, score)), math.log(max(articles, 1))

    def probability(self, score: float, support: float, articles: int) -> float:
        z = self.bias + sum(w * f for w, f in zip(self.weights, self.features(score, support, articles)))
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    @classmethod
    def load(cls, folder: Path | None) -> MergedCalibration:
        path = None if folder is None else folder / MERGED_FILE
        if path is None or not path.exists():
            return cls()
        data = json.loads(path.read_text())
        return cls(tuple(data["weights"]), float(data["bias"]), data.get("fitted_on", ""), data.get("extra", {}))

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MERGED_FILE
        path.write_text(json.dumps({"features": list(MERGED_FEATURES), **asdict(self)}, indent=2) + "\n")
        return path


def file_name(config: object) -> str:
    """`calibration.json` at the default reading settings; at others, a file named by them (e.g.
    `calibration-span_context_tokens=128.json`), so that a reader run with
    those settings still scores with a fitted probability."""
    defaults = type(config)()
    changed = [f"{k}={getattr(config, k)}" for k in FITTED_SETTINGS if getattr(config, k) != getattr(defaults, k)]
    if not changed:
        return CALIBRATION_FILE
    name = re.sub(r"[^A-Za-z0-9._=+-]", "_", "+".join(changed))  # a model may be a folder's path
    if len(name) > 100:
        name = name[:80] + "-" + hashlib.sha256("+".join(changed).encode()).hexdigest()[:12]
    return f"calibration-{name}.json"


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iterations: int = 50) -> tuple[tuple[float, ...], float]:
    """Logistic regression by Newton's method: (weights, bias) for rows of FEATURES and labels in [0, 1]
    (0/1, or soft: an F1)."""
    X = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(X.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -50, 50)))
        grad = X.T @ (p - y) + l2 * np.r_[w[:-1], 0.0]
        hess = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(X.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return tuple(float(v) for v in w[:-1]), float(w[-1])


def reliability(scores: np.ndarray, correct: np.ndarray, bins: int = 10) -> tuple[list[dict], float]:
    """Score bins against the fraction correct, and the expected calibration error."""
    rows, ece = [], 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    for i in range(bins):
        inside = (scores >= edges[i]) & ((scores < edges[i + 1]) if i < bins - 1 else (scores <= 1.0))
        n = int(inside.sum())
        if n:
            mean, right = float(scores[inside].mean()), float(correct[inside].mean())
            ece += n / len(scores) * abs(mean - right)
            rows.append({"bin": f"{edges[i]:.1f}-{edges[i + 1]:.1f}", "n": n, "mean_score": round(mean, 3), "correct": round(right, 3)})
    return rows, round(ece, 4)
