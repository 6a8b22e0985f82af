"""Near-duplicate articles (wire copies, re-posts): MinHash signatures and the clusters they make.

A document's signature is a MinHash (datasketch, NUM_PERM permutations) of its text's word
shingles (SHINGLE words, lower-cased). Two documents are copies when their estimated Jaccard
similarity is at least `Config.dedup_threshold`. A cluster is a connected component of that
relation, named by its smallest document id: a pure function of the documents indexed, so the
same whatever order they were added in, and when the head is deleted the next smallest member
names what remains (a component that loses its bridge splits, each part naming itself).

Two documents are compared when they share a band (LSH: BANDS bands of ROWS values, each band
named by a 64-bit `band_keys` hash), and are copies when the whole signatures then agree on at
least the threshold: a pairwise rule, so the clusters of a set of documents can be made from any
closed part of it. Both engines store each document's signature and cluster id. The files engine
also stores the band keys and, at each build, re-clusters only the components a change can reach
(`Store.recluster`); Milvus re-clusters every signature when it publishes (`qa/index/milvus/build.py`).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

import numpy as np
from datasketch import MinHash

NUM_PERM = 128
#: Words per shingle. 5: a changed byline or an added sentence leaves copies of a 300-word article
#: above 0.9, while distinct stories on one topic share few 5-word runs (bench/duplicates.py).
SHINGLE = 5
#: LSH bands x rows (<= NUM_PERM): a pair at Jaccard 0.8 shares a band with probability 0.99995,
#: at 0.5 with 0.55, at 0.3 with 0.06; every candidate is then checked on all NUM_PERM values.
BANDS, ROWS = 25, 5
SEED = 1
_WORD = re.compile(r"\w+")
#: datasketch's hashing scheme, named: 2.0 changed its default, and stored signatures must stay comparable.
SCHEME = "affine32"
_PERMUTATIONS = MinHash(num_perm=NUM_PERM, seed=SEED, scheme=SCHEME).permutations  # made once: the costly part of a MinHash


def shingles(text: str, size: int = SHINGLE) -> set[bytes]:
    """The text's runs of `size` words, lower-cased; a text shorter than that is one shingle."""
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


def signature(title: str, text: str, size: int = SHINGLE) -> np.ndarray:
    """The document's MinHash (NUM_PERM uint32 values) of its text's shingles (its title when it has no text)."""
    m = MinHash(num_perm=NUM_PERM, seed=SEED, permutations=_PERMUTATIONS, scheme=SCHEME)
    m.update_batch(list(shingles(text if text.strip() else title, size)))
    return np.asarray(m.hashvalues, dtype=np.uint32)


def to_bytes(sig: np.ndarray) -> bytes:
    return np.asarray(sig, dtype="<u4").tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def to_hex(sig: np.ndarray) -> str:
    return to_bytes(sig).hex()


def from_hex(text: str) -> np.ndarray:
    return from_bytes(bytes.fromhex(text))


def band_keys(sig: np.ndarray) -> list[int]:
    """The signature's BANDS bucket keys: each band's ROWS values and its number, hashed to a signed
    64-bit integer (an SQLite INTEGER). Two signatures are compared when they share a key."""
    data = to_bytes(sig)
    width = ROWS * 4
    return [
        int.from_bytes(hashlib.blake2b(bytes([b]) + data[b * width : (b + 1) * width], digest_size=8).digest(), "little", signed=True)
        for b in range(BANDS)
    ]


def similar_pairs(ids: list[str], signatures: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """(i, j, estimated Jaccard) of the rows whose estimate is at least `threshold`, i < j: the
    rows that share a band key, each pair checked on its whole signature."""
    sigs = np.asarray(signatures, dtype=np.uint32)
    buckets: defaultdict[int, list[int]] = defaultdict(list)
    for k, row in enumerate(sigs):
        for key in band_keys(row):
            buckets[key].append(k)
    candidates = {(i, j) for members in buckets.values() if len(members) > 1 for i in members for j in members if i < j}
    out: list[tuple[int, int, float]] = []
    for i, j in sorted(candidates):
        estimate = float((sigs[i] == sigs[j]).mean())
        if estimate >= threshold:
            out.append((i, j, estimate))
    return out


def cluster_ids(signatures: dict[str, np.ndarray], threshold: float) -> dict[str, str]:
    """Each document id -> its cluster's id: the smallest id of its component of copies."""
    ids = sorted(signatures)
    if not ids:
        return {}
    parent = list(range(len(ids)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in similar_pairs(ids, np.vstack([signatures[i] for i in ids]), threshold):
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)  # ids are sorted: the smaller index is the smaller id
    return {doc_id: ids[root(k)] for k, doc_id in enumerate(ids)}


def cluster_counts(clusters: Iterable[str]) -> tuple[int, int]:
    """(copies, clusters of more than one document) from the cluster ids of every document."""
    sizes = Counter(clusters)
    return sum(n - 1 for n in sizes.values()), sum(1 for n in sizes.values() if n > 1)
