"""The SQLite store as the retriever reads it: BM25 with common words, and threads reading at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from qa.index import build_index, open_index
from tests.conftest import write_article


@pytest.fixture
def market_index(config, embedder):
    """Every passage says "market"; only a few also say "zeppelin" or "harbour"."""
    for k in range(6):
        write_article(
            config.corpus,
            f"day-{k}.txt",
            f"Trading report number {k}",
            f"The market rose on day {k} as traders bought shares in banks and miners alike.",
            f"Analysts said the market would stay calm for the rest of week {k} of the quarter.",
            *(["A zeppelin maker listed its shares and the market cheered the airship revival."] if k in (1, 4) else []),
            *(["The harbour authority said cargo volumes through the market town doubled."] if k == 2 else []),
        )
    build_index(config, embedder)
    index = open_index(config)
    yield index
    index.close()


def test_common_words_are_left_out_of_bm25_like_stop_words(market_index):
    store = market_index.store
    question = "Why did the market cheer the zeppelin maker?"
    assert store.document_frequency("market") > store.document_frequency("zeppelin") == 2
    exact = store.search_bm25(question, 50)
    limited = store.search_bm25(question, 50, common_df=store.document_frequency("maker"))
    # Every passage says "market", so the full query matches them all; without it, only the two
    # with the rarer words are scored, and they keep their order at the top.
    assert len(exact) > len(limited) == 2
    assert all("zeppelin" in store.passages([p])[p].text for p, _ in limited)
    assert [p for p, _ in limited] == [p for p, _ in exact[:2]]


def test_a_question_of_only_common_words_still_finds_passages(market_index):
    store = market_index.store
    found = store.search_bm25("How did the market and traders do?", 50, common_df=1)
    assert found, "with no rare word, the rarest word is used"
    assert all("trader" in store.passages([p])[p].text.lower() for p, _ in found)


def test_threads_read_at_once_with_connections_of_their_own(market_index):
    store = market_index.store
    question = "Which harbour doubled its cargo volumes?"
    expected = store.search_bm25(question, 5)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: store.search_bm25(question, 5), range(64)))
    assert all(r == expected for r in results)
    assert expected and "harbour" in store.passages([expected[0][0]])[expected[0][0]].text
    assert len(store._connections) > 1  # not one connection behind a lock
