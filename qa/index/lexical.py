"""BM25 over the passages' words: postings arrays on disk, scored with numpy at question time.

SQLite's FTS5 computes bm25() for every passage that holds any question word, and news questions
carry words found in tens of thousands of passages: at news-archive scale that was most of a
question's time (docs/benchmarks.md). Summing a few postings lists with numpy is far cheaper,
with every question word kept. bm25s (the library that does this with sparse matrices) cannot add or remove
a passage without indexing them all again, and adding an article must take a second or two, so
this follows `VectorIndex`: an immutable base, a small delta of later additions and a list of
removed passages, merged into a new base once they outgrow `Config.vector_delta_fraction`.

Scores use the statistics of base and delta together. A removed passage still counts in its
words' document frequencies until the next merge (as in Lucene): the IDFs drift a little, the
ranking of the passages that remain does not depend on it much.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import Stemmer

from qa.index.layers import keeps_base, load_ids, removed_after, save_ids, share

#: BM25's term-frequency saturation and length normalisation (the usual values; FTS5's too).
K1 = 1.2
B = 0.75
#: A title word counts half a body word (a passage carries its article's title).
TITLE_WEIGHT = 0.5
#: Longer "words" (URLs, hashes) are not indexed.
MAX_WORD_BYTES = 40
#: The files of one segment: `{name}.{part}.npy`.
PARTS = ("ids", "lengths", "terms", "offsets", "rows", "tfs")
REMOVED = ".removed.npy"

# Words that carry no evidence for BM25; questions are full of them. Passages keep them in their
# lengths but not in the postings.
STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most
    my myself no nor not now of off on once only or other our ours ourselves out over own same she should
    so some such than that the their theirs them themselves then there these they this those through to
    too under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves s t also did does many much name named called""".split()
)

_WORD = re.compile(r"\w+")
_MARKS = re.compile(r"[\u0300-\u036f]")


class Analyzer:
    """Text to index terms: lower case, accents dropped, Snowball (Porter 2) stems, stop words out."""

    def __init__(self) -> None:
        self._local = threading.local()  # a PyStemmer instance is not thread-safe: one per thread
        self._stems: dict[str, bytes] = {}

    def _stem(self, word: str) -> bytes:
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = Stemmer.Stemmer("english")
        return stemmer.stemWord(word).encode()

    def words(self, text: str) -> list[str]:
        return _WORD.findall(_MARKS.sub("", unicodedata.normalize("NFKD", text.lower())))

    def terms(self, words: Iterable[str]) -> list[bytes]:
        """The stems of the words that are not stop words (a word's stem is computed once)."""
        out = []
        stems = self._stems
        for w in words:
            s = stems.get(w)
            if s is None:
                s = b"" if w in STOP_WORDS or (len(w) < 2 and not w.isdigit()) else self._stem(w)
                if len(s) > MAX_WORD_BYTES:
                    s = b""
                if len(stems) < 2_000_000:
                    stems[w] = s
            if s:
                out.append(s)
        return out

    def question_terms(self, question: str) -> list[bytes]:
        return list(dict.fromkeys(self.terms(self.words(question))))

    def passage_terms(self, title: str, text: str) -> tuple[list[bytes], list[bytes], float]:
        """A passage's body terms, its title's terms, and its BM25 length (a title word counts
        TITLE_WEIGHT; stop words count in the length though not in the postings)."""
        title_words, words = self.words(title), self.words(text)
        return self.terms(words), self.terms(title_words), len(words) + TITLE_WEIGHT * len(title_words)


def idf(count: int, df: int | np.ndarray) -> float | np.ndarray:
    """BM25's inverse document frequency of a term in `df` of `count` passages."""
    return np.log1p((count - df + 0.5) / (df + 0.5))


def document_weights(body: list[bytes], title: list[bytes], length: float, average_length: float) -> dict[bytes, float]:
    """A passage's side of BM25, term by term: with the question side's idf, their inner product
    is the passage's BM25 score (how the Milvus engine stores it as a sparse vector)."""
    tf: dict[bytes, float] = {}
    for term in body:
        tf[term] = tf.get(term, 0.0) + 1.0
    for term in title:
        tf[term] = tf.get(term, 0.0) + TITLE_WEIGHT
    norm = K1 * (1 - B + B * length / average_length)
    return {term: f * (K1 + 1) / (f + norm) for term, f in tf.items()}


def query_terms(question: str) -> list[str]:
    """The question's words that are not stop words, lower case, once each (for the readers)."""
    words = _WORD.findall(question.lower())
    return list(dict.fromkeys(w for w in words if w not in STOP_WORDS and (len(w) > 1 or w.isdigit())))


@dataclass
class Segment:
    """The postings of some passages. `terms` is sorted; the postings of `terms[t]` are
    `rows[offsets[t]:offsets[t + 1]]` (positions in `ids`) with their weighted counts `tfs`."""

    ids: np.ndarray  # int64 passage ids, ascending
    lengths: np.ndarray  # float32 weighted word counts
    terms: np.ndarray  # bytes, sorted
    offsets: np.ndarray  # int64, len(terms) + 1
    rows: np.ndarray  # int32
    tfs: np.ndarray  # float32

    @classmethod
    def empty(cls) -> Segment:
        return cls(
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros(0, "S1"),
            np.zeros(1, np.int64),
            np.zeros(0, np.int32),
            np.zeros(0, np.float32),
        )

    @classmethod
    def from_postings(cls, ids: np.ndarray, lengths: np.ndarray, terms: np.ndarray, owners: np.ndarray, tfs: np.ndarray) -> Segment:
        """From the passages and one (term, owning passage id, tf) triple per posting, in any
        order; repeats are summed."""
        order = np.argsort(ids, kind="stable")
        ids, lengths = ids[order].astype(np.int64), lengths[order].astype(np.float32)
        rows = np.searchsorted(ids, owners).astype(np.int64)
        vocab, term_ids = np.unique(terms, return_inverse=True)
        n = max(len(ids), 1)
        keys, inverse = np.unique(term_ids.astype(np.int64) * n + rows, return_inverse=True)
        summed = np.bincount(inverse, weights=tfs, minlength=len(keys)).astype(np.float32)
        offsets = np.zeros(len(vocab) + 1, np.int64)
        np.cumsum(np.bincount(keys // n, minlength=len(vocab)), out=offsets[1:])
        width = int(np.char.str_len(vocab).max()) if len(vocab) else 1
        return cls(ids, lengths, vocab.astype(f"S{max(width, 1)}"), offsets, (keys % n).astype(np.int32), summed)

    @classmethod
    def load(cls, path: Path) -> Segment:
        return cls(*(np.load(_part(path, p), mmap_mode="r", allow_pickle=False) for p in PARTS))

    def save(self, path: Path) -> None:
        for p in PARTS:
            with open(_part(path, p), "wb") as fh:
                np.save(fh, getattr(self, p), allow_pickle=False)

    def link(self, source: Path, path: Path) -> None:
        """The base of the next version is this one's, unchanged: share the files."""
        for p in PARTS:
            share(_part(source, p), _part(path, p))

    def postings(self, term: bytes) -> tuple[np.ndarray, np.ndarray]:
        t = int(np.searchsorted(self.terms, term))
        if t == len(self.terms) or self.terms[t] != term:
            return self.rows[:0], self.tfs[:0]
        return self.rows[self.offsets[t] : self.offsets[t + 1]], self.tfs[self.offsets[t] : self.offsets[t + 1]]

    def triples(self, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ids, lengths, term per posting, passage id per posting, tf) of the rows kept."""
        terms = np.repeat(np.asarray(self.terms), np.diff(self.offsets))
        rows, tfs = np.asarray(self.rows), np.asarray(self.tfs)
        ids, lengths = np.asarray(self.ids), np.asarray(self.lengths)
        if keep is not None:
            on = keep[rows]
            terms, rows, tfs = terms[on], rows[on], tfs[on]
            ids, lengths = ids[keep], lengths[keep]
        return ids, lengths, terms, np.asarray(self.ids)[rows], tfs

    def __len__(self) -> int:
        return len(self.ids)


class LexicalIndex:
    """BM25 over a base segment, a delta segment and the ids removed from the base."""

    def __init__(self, base: Segment, delta: Segment, removed: np.ndarray, delta_fraction: float, source: Path | None) -> None:
        self.base, self.delta, self.delta_fraction, self.source = base, delta, delta_fraction, source
        self.removed = np.unique(np.asarray(removed, dtype=np.int64))
        self.analyzer = Analyzer()
        self._refresh()

    @classmethod
    def empty(cls, delta_fraction: float) -> LexicalIndex:
        return cls(Segment.empty(), Segment.empty(), np.zeros(0, np.int64), delta_fraction, None)

    @classmethod
    def load(cls, path: Path, delta_fraction: float) -> LexicalIndex:
        delta = _beside(path, ".delta")
        removed = _beside(path, REMOVED)
        return cls(
            Segment.load(path),
            Segment.load(delta) if _part(delta, "ids").exists() else Segment.empty(),
            load_ids(removed),
            delta_fraction,
            path,
        )

    def _refresh(self) -> None:
        self._alive = ~np.isin(self.base.ids, self.removed) if len(self.removed) else None
        self.count = len(self.base) - len(self.removed) + len(self.delta)
        total = float(np.sum(self.base.lengths, dtype=np.float64)) + float(np.sum(self.delta.lengths, dtype=np.float64))
        if self._alive is not None:
            total -= float(np.sum(np.asarray(self.base.lengths)[~self._alive], dtype=np.float64))
        self.average_length = total / self.count if self.count else 1.0

    # Searching.

    def search(self, question: str, limit: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """(passage id, BM25 score) of the best `limit` passages holding a question word;
        `allowed` (passage ids) keeps only those."""
        terms = self.analyzer.question_terms(question)
        if not terms or not self.count:
            return []
        found = [(seg, [seg.postings(t) for t in terms]) for seg in (self.base, self.delta) if len(seg)]
        ids_out, scores_out = [], []
        for seg, lists in found:
            scores = np.zeros(len(seg), np.float32)
            lengths = np.asarray(seg.lengths)
            for t, (rows, tfs) in enumerate(lists):
                if not len(rows):
                    continue
                weight = idf(self.count, sum(len(other[t][0]) for _, other in found))
                norm = K1 * (1 - B + B * lengths[rows] / self.average_length)
                scores += np.bincount(rows, weights=weight * tfs * (K1 + 1) / (tfs + norm), minlength=len(seg)).astype(np.float32)
            if seg is self.base and self._alive is not None:
                scores[~self._alive] = 0
            if allowed is not None:
                scores[~np.isin(seg.ids, allowed)] = 0
            hit = np.flatnonzero(scores)
            if len(hit) > limit:
                hit = hit[np.argpartition(-scores[hit], limit - 1)[:limit]]
            ids_out.append(np.asarray(seg.ids)[hit])
            scores_out.append(scores[hit])
        if not ids_out:
            return []
        ids, scores = np.concatenate(ids_out), np.concatenate(scores_out)
        order = np.lexsort((ids, -scores))[:limit]
        return [(int(ids[i]), float(scores[i])) for i in order]

    # Changing (a builder's own copy).

    def remove_ids(self, ids: Iterable[int]) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        in_delta = np.isin(ids, self.delta.ids)
        if in_delta.any():
            self.delta = Segment.from_postings(*self.delta.triples(~np.isin(self.delta.ids, ids)))
        self.removed = removed_after(self.removed, ids, in_delta)
        self._refresh()

    def add(self, passages: list[tuple[int, str, str]]) -> None:
        """Indexes (passage id, title, text) triples."""
        if not passages:
            return
        old, new = self.delta.triples(), self._postings(passages)
        self.delta = Segment.from_postings(*(np.concatenate([a, b]) for a, b in zip(old, new)))
        self._refresh()

    def _postings(self, passages: list[tuple[int, str, str]]):
        ids = np.fromiter((p[0] for p in passages), dtype=np.int64, count=len(passages))
        lengths = np.zeros(len(passages), np.float32)
        terms: list[bytes] = []
        owners: list[int] = []
        tfs: list[float] = []
        for row, (pid, title, text) in enumerate(passages):
            body, title_terms, lengths[row] = self.analyzer.passage_terms(title, text)
            terms += body
            terms += title_terms
            owners += [pid] * (len(body) + len(title_terms))
            tfs += [1.0] * len(body) + [TITLE_WEIGHT] * len(title_terms)
        return (
            ids,
            lengths,
            np.asarray(terms, dtype=f"S{MAX_WORD_BYTES}"),
            np.asarray(owners, dtype=np.int64),
            np.asarray(tfs, dtype=np.float32),
        )

    def save(self, path: Path) -> None:
        """Writes this version's files: links the base and writes the delta, or merges them."""
        if keeps_base(self.source, len(self.removed) + len(self.delta), len(self.base), self.delta_fraction):
            self.base.link(self.source, path)
            self.delta.save(_beside(path, ".delta"))
            save_ids(_beside(path, REMOVED), self.removed)
            return
        self._merged().save(path)

    def _merged(self) -> Segment:
        kept, delta = self.base.triples(self._alive), self.delta.triples()
        return Segment.from_postings(*(np.concatenate([a, b]) for a, b in zip(kept, delta)))


def _part(path: Path, part: str) -> Path:
    return path.with_name(f"{path.name}.{part}.npy")


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)
