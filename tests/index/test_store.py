"""The SQLite store as the pipeline reads it: threads reading at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from qa.index import open_index


def test_threads_read_at_once_with_connections_of_their_own(sample_index):
    index = open_index(sample_index)
    store = index.store
    try:
        ids = [p for p, _ in index.lexical.search("Inspur chips", 5)]
        expected = store.passages(ids)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: store.passages(ids), range(64)))
        assert expected and all(r == expected for r in results)
        assert len(store._connections) > 1  # not one connection behind a lock
    finally:
        index.close()
