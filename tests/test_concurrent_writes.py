"""Concurrent writers over real HTTP: same-id uploads racing deletes, different ids, writes during a rebuild.

After every round the three views agree: the document the API stores, the file in `corpus/`, and the
answers; the last write to be published is what all of them show; no request gets a 5xx.
`make stress` runs more rounds (QA_STRESS=1).
"""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import pytest

from qa.config import Config
from qa.corpus import read_corpus
from qa.embedding import Embedder
from qa.index import build_index, open_index
from qa.service import create_app
from qa.updates import PENDING, CorpusWriter, recover
from tests.conftest import ThreadServer, write_article

STRESS = os.environ.get("QA_STRESS") == "1"
ROUNDS = 40 if STRESS else 12
KEY = "k3y"
AUTH = {"Authorization": f"Bearer {KEY}"}
NAMES = ("Alpha", "Bravo", "Charlie")


def corpus_matches_index(cfg: Config) -> None:
    """What a full rebuild would index is what is served: same documents, same content."""
    on_disk = {d.id: d.hash for d in read_corpus(cfg.corpus).documents}
    index = open_index(cfg)
    try:
        served = index.store.document_hashes()
    finally:
        index.close()
    assert on_disk == served
    assert not list((cfg.corpus / PENDING).glob("*")), "a write left staged files behind"


def race(n: int, action) -> list[tuple[str, httpx.Response]]:
    """`action(i)` in n threads started together; their (what, response) pairs."""
    barrier = threading.Barrier(n)
    out: list[tuple[str, httpx.Response]] = []

    def run(i: int) -> None:
        barrier.wait()
        out.append(action(i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def article(round_: int, name: str) -> dict:
    return {
        "id": "race",
        "title": f"Regatta round {round_}",
        "text": f"The regatta's round {round_} on the lake was won by the boat called {name}. "
        f"Crowds lined the shore at Quillport to watch {name} cross the line first.",
    }


@pytest.mark.parametrize("engine", ["files", "milvus"])
def test_same_id_uploads_racing_deletes_agree_everywhere(sample_config, embedder: Embedder, engine: str, tmp_path) -> None:
    cfg = sample_config.replace(api_key=KEY, milvus_uri=str(tmp_path / "milvus.db") if engine == "milvus" else None)
    build_index(cfg, embedder)
    with ThreadServer(create_app(cfg, embedder)) as server, httpx.Client(base_url=server.url, timeout=120) as c:
        for r in range(ROUNDS):
            deleter = r % 3 if r % 2 else None  # every other round, one of the three deletes instead

            def act(i: int, r: int = r, deleter: int | None = deleter) -> tuple[str, httpx.Response]:
                if i == deleter:
                    return "delete", c.delete("/api/documents/race", headers=AUTH)
                return NAMES[i], c.post("/api/documents", json=article(r, NAMES[i]), headers=AUTH)

            results = race(3, act)
            codes = [resp.status_code for _, resp in results]
            assert all(code < 500 for code in codes), [resp.text for _, resp in results]
            assert all(code in (200, 201) or (what == "delete" and code == 404) for what, resp in results for code in [resp.status_code]), (
                codes
            )
            published = [(resp.json()["index_version"], what) for what, resp in results if resp.status_code in (200, 201)]
            _, last = max(published)  # the write published last must be what every view shows

            stored = c.get("/api/documents/race")
            file = cfg.corpus / "race.json"
            answer = c.get("/api/ask", params={"q": f"Which boat won round {r} of the regatta?", "document_id": "race"})
            assert answer.status_code == 200
            if last == "delete":
                assert stored.status_code == 404 and not file.exists()
                assert answer.json()["passages"] == []
            else:
                assert stored.status_code == 200, stored.text
                text = stored.json()["text"]
                assert f"won by the boat called {last}." in text and f"round {r} " in text
                assert json.loads(file.read_text())["text"] == text
                passages = answer.json()["passages"]
                assert passages and last in passages[0]["text"] and passages[0]["text"] in text
            corpus_matches_index(cfg)


def test_different_ids_written_at_once_all_land(sample_config, embedder: Embedder) -> None:
    cfg = sample_config.replace(api_key=KEY)
    build_index(cfg, embedder)
    with ThreadServer(create_app(cfg, embedder)) as server, httpx.Client(base_url=server.url, timeout=120) as c:
        for version in (1, 2):

            def act(i: int, version: int = version) -> tuple[str, httpx.Response]:
                body = {
                    "id": f"harbour-{i}",
                    "title": f"Harbour {i} news",
                    "text": f"Harbour {i} counted {i * 10 + version} ships on the morning of the storm, edition {version}.",
                }
                return str(i), c.post("/api/documents", json=body, headers=AUTH)

            results = race(4, act)
            assert sorted(resp.status_code for _, resp in results) == [201] * 4, [resp.text for _, resp in results]
            for i in range(4):
                stored = c.get(f"/api/documents/harbour-{i}").json()
                assert f"{i * 10 + version} ships" in stored["text"]
            corpus_matches_index(cfg)


def test_writes_arriving_during_a_full_rebuild(sample_config, embedder: Embedder) -> None:
    for i in range(30):
        write_article(
            sample_config.corpus,
            f"kites-{i:02d}.txt",
            f"Kite survey {i}",
            *[f"Survey {i}, part {k}: Harlow counted {i * 7 + k} red kites this week." for k in range(3)],
        )
    cfg = sample_config.replace(api_key=KEY)
    build_index(cfg, embedder)
    with ThreadServer(create_app(cfg, embedder)) as server, httpx.Client(base_url=server.url, timeout=120) as c:
        assert c.post("/api/index/rebuild", json={"full": True}, headers=AUTH).status_code == 202

        def act(i: int) -> tuple[str, httpx.Response]:
            if i == 3:
                return "delete", c.delete("/api/documents/kites-05.txt", headers=AUTH)
            body = {"id": f"late-{i}", "title": f"Late report {i}", "text": f"Late report {i}: the ferry ran {i + 2} hours behind."}
            return str(i), c.post("/api/documents", json=body, headers=AUTH)

        results = race(4, act)
        assert all(resp.status_code in (200, 201) for _, resp in results), [resp.text for _, resp in results]
        deadline = time.monotonic() + 300
        while (status := c.get("/api/index/status").json())["phase"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert status["phase"] == "done", status
        assert c.get("/api/documents/kites-05.txt").status_code == 404
        assert all(c.get(f"/api/documents/late-{i}").status_code == 200 for i in range(3))
        corpus_matches_index(cfg)


def test_recover_settles_every_state_a_killed_write_leaves(sample_config, embedder: Embedder) -> None:
    """Each crash point of a write, made by hand: staged and published, staged only, tombstones either side."""
    build_index(sample_config, embedder)
    writer = CorpusWriter(sample_config, embedder)
    pending = sample_config.corpus / PENDING
    sample = next(sample_config.corpus.glob("*.txt"))
    writer.add_text("Bridge opens", "The new bridge at Quillport opened to traffic on Friday morning.", "bridge")
    # Killed after the index was published, before the file moved: the file must follow the index.
    bridge = sample_config.corpus / "bridge.json"
    pending.mkdir(exist_ok=True)
    bridge.rename(pending / "0a1b.bridge.json")
    # Killed before anything was published: the staged file must go.
    (pending / "0c2d.ferry.json").write_text(json.dumps({"id": "ferry", "title": "Ferry", "text": "The ferry sank without loss."}))
    # A delete killed before publishing: the tombstone goes, the article stays.
    (pending / f"0e3f.{sample.name}.delete").write_text(json.dumps({"ids": [sample.name]}))
    # A staging write cut short.
    (pending / ".0f4a.x.json.tmp").write_text("{")
    recover(sample_config)
    assert bridge.exists() and sample.exists() and not (sample_config.corpus / "ferry.json").exists()
    corpus_matches_index(sample_config)

    # A delete killed after publishing, before the file went: the file goes too.
    build_index(sample_config, embedder, deletes=["bridge"], upserts=[])
    (pending / "1a2b.bridge.json.delete").write_text(json.dumps({"ids": ["bridge"]}))
    recover(sample_config)
    assert not bridge.exists()
    corpus_matches_index(sample_config)
