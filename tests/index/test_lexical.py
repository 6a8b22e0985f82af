"""BM25 (qa/index/lexical.py): what it finds, and that a delta of changes scores like a fresh index."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from qa.index import build_index, open_index
from qa.index.lexical import LexicalIndex
from tests.conftest import write_article

PASSAGES = [
    (10, "Trading report", "The market rose as traders bought shares in banks and miners alike."),
    (11, "Trading report", "Analysts said the market would stay calm for the rest of the quarter."),
    (12, "Airships", "A zeppelin maker listed its shares and the market cheered the airship revival."),
    (13, "Ports", "The harbour authority said cargo volumes through the market town doubled."),
    (14, "Cafés", "The café owners of the old town said rents had doubled since the harbour closed."),
    (15, "Airships", "Zeppelins carried passengers across the Atlantic before the war."),
]


def fresh(passages) -> LexicalIndex:
    index = LexicalIndex.empty(delta_fraction=0.1)
    index.add(passages)
    return index


def test_rare_words_outrank_common_ones_and_every_word_counts():
    found = fresh(PASSAGES).search("Why did the market cheer the zeppelin maker?", 10)
    ids = [p for p, _ in found]
    assert ids[0] == 12  # market, zeppelin and maker
    assert ids[1] == 15  # "Zeppelins": stemmed to zeppelin, a rarer word than market
    assert set(ids) == {10, 11, 12, 13, 15}  # every passage with "market" is still scored
    assert all(a[1] >= b[1] > 0 for a, b in zip(found, found[1:]))


def test_accents_case_and_word_forms_match():
    index = fresh(PASSAGES)
    assert [p for p, _ in index.search("Which CAFE owners?", 5)] == [14]
    assert [p for p, _ in index.search("cafés", 5)] == [14]
    assert index.search("what was it about?", 5) == []  # stop words only


def test_allowed_ids_filter_and_limit():
    index = fresh(PASSAGES)
    assert sorted(p for p, _ in index.search("market", 10, allowed=np.array([11, 13, 14]))) == [11, 13]
    assert len(index.search("market", 2)) == 2


@pytest.mark.parametrize("fraction", [10.0, 0.0])  # kept as a delta, or merged into a new base
def test_changes_saved_and_loaded_score_like_a_fresh_index(tmp_path, fraction):
    first = LexicalIndex.empty(fraction)
    first.add(PASSAGES[:4])
    first.save(tmp_path / "v1")
    changed = LexicalIndex.load(tmp_path / "v1", fraction)
    changed.add(PASSAGES[4:])
    changed.remove_ids([11, 14])  # one from the base, one from the delta
    changed.save(tmp_path / "v2")
    loaded = LexicalIndex.load(tmp_path / "v2", fraction)
    expected = fresh([p for p in PASSAGES if p[0] not in (11, 14)])
    assert loaded.count == expected.count == 4
    assert (tmp_path / "v2.delta.ids.npy").exists() == (fraction > 1)
    for question in ["market shares", "harbour cafe doubled", "zeppelin maker", "calm analysts"]:
        got, want = loaded.search(question, 10), expected.search(question, 10)
        assert {p for p, _ in got} == {p for p, _ in want}
        if fraction == 0.0:  # merged: the removed passages no longer count in the statistics
            assert [p for p, _ in got] == [p for p, _ in want]
            assert [s for _, s in got] == pytest.approx([s for _, s in want])


@pytest.fixture
def market_index(config, embedder):
    for k in range(3):
        write_article(config.corpus, f"day-{k}.txt", f"Trading report {k}", PASSAGES[k][2])
    build_index(config, embedder)
    index = open_index(config)
    yield index
    index.close()


def test_the_index_keeps_bm25_in_step_with_the_corpus(config, embedder, market_index):
    assert market_index.lexical.count == market_index.manifest.passages == 3
    write_article(config.corpus, "ports.txt", "Ports", PASSAGES[3][2])
    (config.corpus / "day-2.txt").unlink()
    build_index(config, embedder)
    index = open_index(config)
    try:
        texts = index.store.passages([p for p, _ in index.lexical.search("zeppelin harbour", 10)])
        assert [t.text for t in texts.values()] == [PASSAGES[3][2]]
    finally:
        index.close()


def test_threads_search_at_once():
    index = fresh(PASSAGES)
    questions = ["Which zeppelins crossed the Atlantic?", "harbour cargo doubled", "cafés and rents", "analysts calm"] * 50
    expected = [index.search(q, 3) for q in questions]
    index.analyzer._stems.clear()  # stem again, from every thread
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda q: index.search(q, 3), questions)) == expected
