"""The ONNX backends against torch, and the vector index's approximate path with incremental changes."""

import faiss
import numpy as np
import pytest

from qa.config import Config
from qa.embedding import Embedder, vector_backend
from qa.index import IndexMismatch, build_index, open_index
from qa.index.vectors import VectorIndex
from tests.conftest import write_article

TEXTS = [
    "IBM partnered with Inspur to sell its Power servers in China.",
    "The beta bakery sold nine hundred loaves of rye bread on Sunday.",
    "Quarterly profits at US media giant TimeWarner jumped 76% to $1.13bn for the three months to December.",
    "Short.",
]


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return Embedder.from_config(Config().replace(backend="torch")).embed(TEXTS)


@pytest.mark.parametrize("backend, floor", [("onnx", 0.9999), ("onnx-int8", 0.97)])
def test_onnx_vectors_match_torch(backend, floor, torch_vectors):
    e = Embedder.from_config(Config().replace(backend=backend))
    v = e.embed(TEXTS)
    assert v.shape == torch_vectors.shape and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    assert (v * torch_vectors).sum(1).min() >= floor
    assert e.max_tokens == 254 and e.count_tokens("Hello world") == 2


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_sentences_are_pooled_from_their_passage(backend, torch_vectors):
    """One run of the model gives a passage's vector and its sentences' (late chunking)."""
    e = Embedder.from_config(Config().replace(backend=backend))
    passage = " ".join(TEXTS[:3])
    spans, at = [], 0
    for t in TEXTS[:3]:
        spans.append((at, at + len(t)))
        at += len(t) + 1
    vectors, pooled = e.embed_with_spans([passage, TEXTS[3]], [spans, [(0, 6)]])
    assert np.allclose(vectors, e.embed([passage, TEXTS[3]]), atol=1e-4)
    assert pooled[0].shape == (3, e.dimension) and np.allclose(np.linalg.norm(pooled[0], axis=1), 1, atol=1e-4)
    # each pooled sentence is nearest to the same sentence embedded alone
    assert ((pooled[0] @ torch_vectors[:3].T).argmax(1) == [0, 1, 2]).all()
    assert (pooled[1] @ torch_vectors[3]).item() > 0.9  # the whole text: its own vector


def test_int8_vectors_are_recorded_and_checked(config, embedder):
    write_article(config.corpus, "a.txt", "Alpha", "The alpha plant produced forty tonnes of steel in March last year.")
    build_index(config, embedder)
    assert open_index(config).manifest.vectors == vector_backend(embedder.backend)
    other = "onnx-int8" if vector_backend(embedder.backend) == "float" else "onnx"
    with pytest.raises(IndexMismatch, match="rebuild"):
        open_index(config.replace(backend=other))


def _clustered(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d))
    x = (centres[rng.integers(0, 20, n)] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    faiss.normalize_L2(x)
    return x


def _exact(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(q @ x.T), axis=1)[:, :k]]


def _recall(index: VectorIndex, x, ids, q, k=20) -> float:
    _, got = index.search(q, k)
    want = _exact(x, ids, q, k)
    return float(np.mean([len(set(g) & set(w)) / k for g, w in zip(got, want)]))


def test_ann_index_above_threshold_finds_exact_neighbours_and_survives_changes(tmp_path):
    cfg = Config(ann_min_vectors=1000, ann_ef_search=256, vector_delta_fraction=0.1)
    x, ids = _clustered(3000), np.arange(3000, dtype=np.int64) * 7
    q = _clustered(50, seed=1)
    v = VectorIndex.empty(32, cfg)
    v.add_with_ids(x, ids)
    (tmp_path / "v1").mkdir()
    v.save(tmp_path / "v1" / "p.faiss")
    one = VectorIndex.load(tmp_path / "v1" / "p.faiss", cfg)
    assert one.approximate and one.ntotal == 3000
    assert _recall(one, x, ids, q) >= 0.98
    assert np.allclose(one.reconstruct(int(ids[5])), x[5])

    # A small change: the base is linked, the change lives in delta and removed list.
    one.remove_ids(ids[:10])
    extra = _clustered(20, seed=2)
    one.add_with_ids(extra, np.arange(20, dtype=np.int64) + 100_000)
    (tmp_path / "v2").mkdir()
    one.save(tmp_path / "v2" / "p.faiss")
    assert (tmp_path / "v2" / "p.faiss").stat().st_ino == (tmp_path / "v1" / "p.faiss").stat().st_ino
    two = VectorIndex.load(tmp_path / "v2" / "p.faiss", cfg)
    x2, ids2 = np.vstack([x[10:], extra]), np.concatenate([ids[10:], np.arange(20) + 100_000])
    assert two.ntotal == len(ids2) and _recall(two, x2, ids2, q) >= 0.98
    _, found = two.search(extra[:1], 1)
    assert found[0, 0] == 100_000 and np.allclose(two.reconstruct(100_000), extra[0])
    assert not set(two.search(x[:10], 5)[1].ravel()) & set(ids[:10].tolist())
    # A filter is exact: it finds the one allowed id wherever it lies.
    sel = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.array([int(ids2[123])], dtype=np.int64)))
    assert two.search(q[:1], 3, params=sel)[1][0, 0] == ids2[123]

    # A large change rewrites the base, which then holds everything.
    two.remove_ids(ids[10:1000])
    (tmp_path / "v3").mkdir()
    two.save(tmp_path / "v3" / "p.faiss")
    three = VectorIndex.load(tmp_path / "v3" / "p.faiss", cfg)
    x3, ids3 = np.vstack([x[1000:], extra]), np.concatenate([ids[1000:], np.arange(20) + 100_000])
    assert three.delta.ntotal == 0 and three.ntotal == len(ids3) == three.base.ntotal
    assert _recall(three, x3, ids3, q) >= 0.98


def test_build_switches_to_ann_and_keeps_incremental_updates(config, embedder):
    cfg = config.replace(ann_min_vectors=8)
    for i in range(6):
        write_article(
            cfg.corpus,
            f"a{i}.txt",
            f"Article {i}",
            f"The plant number {i} produced {i + 3} tonnes of steel in March.",
            f"Workers at site {i} went on strike over pay for the {i + 2}nd time this year.",
        )
    build_index(cfg, embedder)
    index = open_index(cfg)
    assert index.sentence_vectors.approximate and index.sentence_vectors.ntotal == index.manifest.sentences
    (cfg.corpus / "a0.txt").unlink()
    write_article(cfg.corpus, "b.txt", "Bakery", "The bakery sold nine hundred loaves of rye bread on Sunday morning.")
    s = build_index(cfg, embedder)
    assert (s.added, s.removed) == (1, 1)
    index = open_index(cfg)
    q = embedder.embed(["How many loaves did the bakery sell?"])
    _, ids = index.passage_vectors.search(q, 1)
    assert index.store.passages([int(ids[0, 0])])[int(ids[0, 0])].document_id == "b.txt"
    assert not index.store.document_passage_ids("a0.txt")
    assert index.passage_vectors.ntotal == index.manifest.passages
