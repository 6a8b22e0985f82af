"""Readers: retrieved passages in, extractive answers out (`make_reader` picks one by configuration).

- `base`: the `Reader` protocol and what both readers share;
- `sentence`: the best sentence and a heuristic span inside it, no model;
- `span`: a trained span model over the question's best sentences (the default).
"""

from __future__ import annotations

from qa.config import Config
from qa.readers.base import Reader
from qa.readers.sentence import SentenceReader

READERS = ("span", "sentence")


def make_reader(config: Config) -> Reader:
    if config.reader == "sentence":
        return SentenceReader(config)
    if config.reader == "span":
        from qa.readers.span import SpanReader  # loads transformers only when asked for

        return SpanReader(config)
    raise ValueError(f"unknown reader {config.reader!r} (available: {', '.join(READERS)})")


__all__ = ["READERS", "Reader", "SentenceReader", "make_reader"]
