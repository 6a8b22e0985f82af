"""Shared fixtures: the real bundled model (loaded once), and small corpora written per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qa.config import Config
from qa.embedding import Embedder
from qa.index import build_index
from qa.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "corpus" / "ibm-inspur-partnership.txt"
IBM_QUESTION = "Why did IBM partner with Inspur?"


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    e = Embedder(Config().model)
    e.model  # load once for the whole session
    return e


@pytest.fixture
def config(tmp_path: Path) -> Config:
    (tmp_path / "corpus").mkdir()
    return Config.load(corpus=tmp_path / "corpus", index=tmp_path / "index")


@pytest.fixture
def sample_config(config: Config) -> Config:
    shutil.copy(SAMPLE, config.corpus / SAMPLE.name)
    return config


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory, embedder) -> Config:
    """The sample corpus, indexed once for the tests that only read it."""
    root = tmp_path_factory.mktemp("sample")
    (root / "corpus").mkdir()
    shutil.copy(SAMPLE, root / "corpus" / SAMPLE.name)
    cfg = Config.load(corpus=root / "corpus", index=root / "index")
    build_index(cfg, embedder)
    return cfg


@pytest.fixture(scope="session")
def sample_pipeline(sample_index, embedder) -> Pipeline:
    return Pipeline(sample_index, embedder)


def write_article(folder: Path, name: str, title: str, *paragraphs: str, date: str | None = None) -> Path:
    path = folder / name
    parts = [title] + ([date] if date else []) + list(paragraphs)
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path
