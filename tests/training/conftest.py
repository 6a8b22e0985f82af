"""Fixtures of the training tests (tests/training/fixtures.py holds their data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.fixtures import ARTICLES, write_data
from training.common import calibration_fold


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """The tiny data folder of tests/training/fixtures.py (read only: runs write under their own --work)."""
    assert not any(calibration_fold(t) for t in ARTICLES)  # all of the articles train
    return write_data(tmp_path_factory.mktemp("data"))
