"""Near-duplicate articles (qa/index/duplicates.py) folded into clusters, on both engines, through
adds, deletes and replaces; shown by the build's summary and /api/documents/{id}."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from qa.config import Config
from qa.embedding import Embedder
from qa.index import build_index, duplicates, open_index
from qa.index.store import Store
from qa.models import Document
from qa.service import create_app

STORY = (
    "The harbour at Quillport reopened on Monday after a two-year rebuild that cost the county forty million pounds. "
    "Fishermen who had landed their catch at Brixham since the old quay collapsed in a winter storm welcomed the news, "
    "and said the first boats would tie up at the new quay before the end of the week. The mayor opened the harbour at "
    "noon with a brass band and a crowd of about two thousand people from the town and the villages along the coast. "
    "Engineers said the new sea wall was built two metres higher than the old one and should withstand a storm of the "
    "kind that is expected once in two hundred years. The harbour master said pleasure boats would be allowed back in "
    "the spring, once the pontoons had been tested, and that the fish market would reopen in the old customs house."
)
OTHER = (
    "Volunteers counted more red kites than ever in the annual survey week across the hills above Harlow, the county's "
    "bird trust said on Tuesday. The birds were reintroduced to the area thirty years ago after being driven out by "
    "gamekeepers, and the trust now believes more than three hundred pairs breed in the woods between the river and "
    "the motorway. Farmers have reported few problems, and the trust asked walkers to keep to the paths in the nesting season."
)


def wire() -> list[Document]:
    """One story three times (a copy with a changed byline, one with a sentence added) and another story."""
    return [
        Document("wire-a", "Harbour reopens", "By Jane Smith, Reuters\n\n" + STORY, source="Reuters"),
        Document("wire-b", "Quillport harbour reopens after rebuild", "By Tom Jones, Press Association\n\n" + STORY, source="PA"),
        Document("wire-c", "Harbour reopens", STORY + " A second phase, a marina, is planned for next year.", source="Local"),
        Document("kites", "Kite numbers soar", OTHER),
    ]


def test_copies_share_a_cluster_and_a_different_story_does_not(engine: Config, embedder: Embedder) -> None:
    build_index(engine, embedder)
    summary = build_index(engine, embedder, upserts=wire(), deletes=[])
    store = open_index(engine).store
    ids = ["wire-a", "wire-b", "wire-c", "kites", "ibm-inspur-partnership.txt"]
    assert store.clusters(ids) == {
        "wire-a": "wire-a",
        "wire-b": "wire-a",
        "wire-c": "wire-a",
        "kites": "kites",
        "ibm-inspur-partnership.txt": "ibm-inspur-partnership.txt",
    }
    assert store.cluster_members("wire-a") == ["wire-a", "wire-b", "wire-c"]
    assert store.cluster_members("kites") == ["kites"] and store.cluster_members("nothing") == []
    assert (summary.copies, summary.clusters) == (2, 1) and "2 copies in 1 clusters" in summary.line()
    unchanged = build_index(engine, embedder, upserts=wire(), deletes=[])  # nothing to do: still reported
    assert (unchanged.copies, unchanged.clusters) == (2, 1)


def test_clusters_are_kept_through_deletes_and_replaces(engine: Config, embedder: Embedder) -> None:
    build_index(engine, embedder)
    build_index(engine, embedder, upserts=wire(), deletes=[])
    gone = build_index(engine, embedder, upserts=[], deletes=["wire-a"])  # the head goes: the next id leads
    store = open_index(engine).store
    assert store.clusters(["wire-a", "wire-b", "wire-c"]) == {"wire-b": "wire-b", "wire-c": "wire-b"}
    assert store.cluster_members("wire-b") == ["wire-b", "wire-c"] and store.cluster_members("wire-a") == []
    assert (gone.copies, gone.clusters) == (1, 1)
    replaced = Document("wire-c", "Harbour reopens", "The harbour reopening was postponed: divers found cracks in the new sea wall.")
    summary = build_index(engine, embedder, upserts=[replaced], deletes=[])  # a copy rewritten as another story leaves
    store = open_index(engine).store
    assert store.clusters(["wire-b", "wire-c"]) == {"wire-b": "wire-b", "wire-c": "wire-c"}
    assert store.cluster_members("wire-b") == ["wire-b"]
    assert (summary.copies, summary.clusters) == (0, 0)
    back = build_index(engine, embedder, upserts=[Document("wire-a", "Harbour reopens", STORY)], deletes=[])  # a head again
    store = open_index(engine).store
    assert store.cluster_members("wire-a") == ["wire-a", "wire-b"] and store.clusters(["wire-b"]) == {"wire-b": "wire-a"}
    assert (back.copies, back.clusters) == (1, 1)


def test_the_document_endpoint_shows_its_cluster(sample_config: Config, embedder: Embedder) -> None:
    build_index(sample_config, embedder)
    build_index(sample_config, embedder, upserts=wire(), deletes=[])
    with TestClient(create_app(sample_config, embedder)) as client:
        copy = client.get("/api/documents/wire-b").json()
        assert copy["cluster"] == "wire-a" and copy["copies"] == ["wire-a", "wire-c"]
        alone = client.get("/api/documents/kites").json()
        assert alone["cluster"] == "kites" and alone["copies"] == []


def _chain_texts(rng: random.Random, stories: int) -> list[tuple[str, str]]:
    """(id, text) of documents cut from long runs of words: neighbours in a run overlap enough to be
    copies (Jaccard ~0.82), the next but one not (~0.67), so removing a middle one splits a cluster."""
    docs = []
    for s in range(stories):
        words = [f"w{rng.randrange(5000)}" for _ in range(420)]
        for k in range(rng.randint(1, 4)):
            docs.append((f"s{s:02d}-{k}", " ".join(words[30 * k : 30 * k + 300])))
    return docs


def test_clusters_made_where_a_change_reaches_equal_clusters_made_whole(tmp_path: Path) -> None:
    """Random adds, removes and replaces on one store: after each build the stored clusters are
    those of clustering every signature anew, and a change far from the others re-clusters little."""
    rng = random.Random(7)
    pool = dict(_chain_texts(rng, 40))
    store = Store(tmp_path / "store.sqlite")
    present: set[str] = set()

    def step(adds: list[str], removes: list[str]) -> None:
        store.begin()
        for doc_id in removes + [a for a in adds if a in present]:
            store.delete_document(doc_id)
        for doc_id in adds:
            text = pool[doc_id] if rng.random() < 0.8 else f"rewritten {rng.random()} " + pool[doc_id][:200]
            store.add_document(Document(doc_id, doc_id, text), [])
        present.update(adds)
        present.difference_update(removes)
        counts = store.recluster(0.8)
        store.commit()
        stored = dict(store.db.execute("SELECT document_id, cluster FROM duplicates"))
        whole = duplicates.cluster_ids(
            {i: duplicates.from_bytes(s) for i, s in store.db.execute("SELECT document_id, signature FROM duplicates")}, 0.8
        )
        assert stored == whole and counts == duplicates.cluster_counts(whole.values())

    ids = sorted(pool)
    step(rng.sample(ids, 30), [])
    for _ in range(25):
        outside = [i for i in ids if i not in present]
        adds = rng.sample(outside, min(len(outside), rng.randint(0, 4))) + rng.sample(sorted(present), 1)
        step(adds, rng.sample(sorted(present - set(adds)), rng.randint(0, 3)))
    assert store.cluster_counts()[1] > 3  # the churn kept clusters of copies to check

    store.begin()
    store.add_document(Document("lone", "lone", "an unrelated note about the parish council budget for next year"), [])
    assert {r[0] for r in store._reachable()} == {"lone"}  # one document's change reaches its own component only
    store.recluster(0.8)
    store.commit()

    store.db.execute("DELETE FROM duplicate_bands")  # a store written before band keys is clustered whole, once
    store.close()
    old = Store(tmp_path / "store.sqlite")
    old.begin()
    old.add_document(Document(ids[0] + "-copy", "copy", pool[ids[0]]), [])
    old.recluster(0.8)
    old.commit()
    whole = duplicates.cluster_ids(
        {i: duplicates.from_bytes(s) for i, s in old.db.execute("SELECT document_id, signature FROM duplicates")}, 0.8
    )
    assert dict(old.db.execute("SELECT document_id, cluster FROM duplicates")) == whole
    assert old.db.execute("SELECT count(DISTINCT document_id) FROM duplicate_bands").fetchone()[0] == len(whole)
    old.close()
