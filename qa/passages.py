"""Splitting documents into passages (paragraphs, or sentence windows of long ones) and sentences.

Lengths are measured with the embedding model's tokenizer, so a passage never gets truncated
silently by the model. Every passage and sentence keeps offsets back into the document text.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import blingfire

from qa.corpus import iter_paragraph_spans
from qa.models import Document, Passage, Sentence

TokenCounter = Callable[[str], int]
TokenSplitter = Callable[[str, int], list[tuple[int, int]]]

_ENDS_SENTENCE = re.compile(r"[.!?][\"'”’)\]]*$")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence in `text` (blingfire: fast, and gives character offsets)."""
    if not text.strip():
        return []
    _, offsets = blingfire.text_to_sentences_and_offsets(text)
    return [(s, e) for s, e in offsets if text[s:e].strip()]


class PassageSplitter:
    def __init__(
        self,
        count_tokens: TokenCounter,
        split_tokens: TokenSplitter,
        max_tokens: int,
        min_words: int,
        overlap_sentences: int,
    ) -> None:
        self.count_tokens = count_tokens
        self.split_tokens = split_tokens
        self.max_tokens = max_tokens
        self.min_words = min_words
        self.overlap = overlap_sentences

    def split(self, doc: Document) -> list[Passage]:
        budget = max(32, self.max_tokens - self.count_tokens(doc.title))
        spans: list[tuple[int, int]] = []
        for start, end in iter_paragraph_spans(doc.text):
            para = doc.text[start:end]
            if len(para.split()) < self.min_words:
                # Too short to stand alone: a byline or date line is dropped, a short closing
                # sentence joins the passage before it when it fits.
                if spans and _ENDS_SENTENCE.search(para):
                    prev_start, _ = spans[-1]
                    if self.count_tokens(doc.text[prev_start:end]) <= budget:
                        spans[-1] = (prev_start, end)
                continue
            spans.extend(self._windows(doc.text, start, end, budget))
        if not spans and doc.text.strip():  # a tiny article is still one passage
            spans = list(self._windows(doc.text, 0, len(doc.text), budget))
        passages = []
        for ordinal, (start, end) in enumerate(spans):
            text = doc.text[start:end]
            sentences = [Sentence(s, e) for s, e in sentence_spans(text)] or [Sentence(0, len(text))]
            passages.append(Passage(doc.id, ordinal, start, end, text, sentences))
        return passages

    def _windows(self, text: str, start: int, end: int, budget: int) -> list[tuple[int, int]]:
        """The paragraph itself when it fits, else overlapping windows cut at sentence boundaries."""
        para = text[start:end]
        if self.count_tokens(para) <= budget:
            return [(start, end)]
        units: list[tuple[int, int, int]] = []  # (start, end, tokens), absolute offsets
        for s, e in sentence_spans(para):
            n = self.count_tokens(para[s:e])
            if n <= budget:
                units.append((start + s, start + e, n))
            else:  # one sentence longer than the model reads: cut it by tokens
                for ps, pe in self.split_tokens(para[s:e], budget):
                    units.append((start + s + ps, start + s + pe, budget))
        windows: list[tuple[int, int]] = []
        i = 0
        while i < len(units):
            j, used = i, 0
            while j < len(units) and (j == i or used + units[j][2] <= budget):
                used += units[j][2]
                j += 1
            windows.append((units[i][0], units[j - 1][1]))
            if j >= len(units):
                break
            i = max(i + 1, j - self.overlap)
        return windows
