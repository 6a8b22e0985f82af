"""Which engine serves the index: the files under `QA_INDEX`, or Milvus when `QA_MILVUS_URI` is set.
The one place that chooses (as txtai's `ann/dense/factory.py`)."""

from __future__ import annotations

from qa.config import Config
from qa.index import milvus
from qa.index.base import Index
from qa.index.files import current_version, open_files_index


def open_index(config: Config) -> Index:
    """The published version readers should use now."""
    return milvus.open_milvus(config) if config.milvus_uri else open_files_index(config)


def published_version(config: Config) -> int | None:
    """The number of the published version (None before the first build), read without opening it."""
    return milvus.current_milvus_version(config) if config.milvus_uri else current_version(config.index)
