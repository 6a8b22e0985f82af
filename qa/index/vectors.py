"""The vectors of one kind (passages or sentences) in one version: a base, a delta and removed ids."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import faiss
import numpy as np

from qa.config import Config
from qa.index.layers import keeps_base, load_ids, removed_after, save_ids, share

#: Beside each vector file: vectors added since it was written, and ids removed from it.
DELTA = ".delta.faiss"
REMOVED = ".removed.npy"
#: HNSW graph degree and build-time breadth (recall against exact search: docs/benchmarks.md).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
#: Bases kept read in this process (`_read_base`): a passage and a sentence base, of two generations.
BASES_KEPT = 4
_bases: OrderedDict[tuple[int, int, int, int], faiss.Index] = OrderedDict()
_bases_lock = threading.Lock()


class VectorIndex:
    """The vectors of one kind in one version: a base index, a delta of later additions, removed ids.

    The base is exact (`IndexIDMap2(IndexFlatIP)`) below `Config.ann_min_vectors` vectors and
    `IndexIDMap2(IndexHNSWFlat)` from there on (HNSW keeps recall@20 near 1 at any size, where IVF
    needed most of its lists probed on these embeddings). HNSW cannot remove vectors; it need not,
    since removed ids are filtered out at search until the next rewrite. A build that changes
    little hard-links the base from the previous version (its file is never written again, so
    sharing it is safe) and writes only the small delta and removed list; once they outgrow
    `Config.vector_delta_fraction` of the base, the base is rewritten. Readers memory-map the base
    and a process reads each base file once (`_read_base`), so opening the next version is quick
    whatever its size. Search and `reconstruct` see the union, and
    behave like the faiss index the retriever and reader were written for.
    """

    def __init__(self, base: faiss.Index, delta: faiss.Index, removed: np.ndarray, config: Config, source: Path | None) -> None:
        self.base, self.delta, self.config, self.source = base, delta, config, source
        self.removed = np.unique(np.asarray(removed, dtype=np.int64))
        self.d = base.d
        self._ids = faiss.vector_to_array(base.id_map) if self.approximate else None
        self._refresh()

    @classmethod
    def empty(cls, dimension: int, config: Config) -> VectorIndex:
        return cls(_flat(dimension), _flat(dimension), np.zeros(0, np.int64), config, None)

    @classmethod
    def load(cls, path: Path, config: Config) -> VectorIndex:
        base = _read_base(path)
        delta_path, removed_path = _beside(path, DELTA), _beside(path, REMOVED)
        delta = faiss.read_index(str(delta_path)) if delta_path.exists() else _flat(base.d)
        return cls(base, delta, load_ids(removed_path), config, path)

    def _refresh(self) -> None:
        self._delta_ids = set(faiss.vector_to_array(self.delta.id_map).tolist())
        self._not_removed = None
        if len(self.removed):
            self._removed_sel = faiss.IDSelectorBatch(self.removed)
            self._not_removed = faiss.IDSelectorNot(self._removed_sel)
        self.ntotal = int(self.base.ntotal - len(self.removed) + self.delta.ntotal)

    @property
    def approximate(self) -> bool:
        return isinstance(faiss.downcast_index(self.base.index), faiss.IndexHNSW)

    def search(self, q: np.ndarray, k: int, params: faiss.SearchParameters | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top `k` by inner product over base and delta; `params.sel` filters as in faiss.

        A filtered search scans the HNSW's stored vectors exactly, so it finds the allowed ids
        however few they are (a graph search would lose them).
        """
        wanted = params.sel if params is not None else None
        sel = self._not_removed
        if wanted is not None:
            sel = wanted if sel is None else faiss.IDSelectorAnd(wanted, sel)
        parts = []
        if self.base.ntotal:
            kb = min(k, self.base.ntotal)
            if self.approximate and wanted is not None:
                storage = faiss.downcast_index(faiss.downcast_index(self.base.index).storage)
                translated = faiss.IDSelectorTranslated(self.base.id_map, sel)
                found_s, found = storage.search(q, kb, params=faiss.SearchParameters(sel=translated))
                parts.append((found_s, np.where(found >= 0, self._ids[np.maximum(found, 0)], -1)))
            else:
                if self.approximate:
                    bp = faiss.SearchParametersHNSW(efSearch=max(self.config.ann_ef_search, kb))
                    if sel is not None:
                        bp.sel = sel
                else:
                    bp = faiss.SearchParameters(sel=sel) if sel is not None else None
                parts.append(self.base.search(q, kb, params=bp))
        if self.delta.ntotal:
            dp = faiss.SearchParameters(sel=wanted) if wanted is not None else None
            parts.append(self.delta.search(q, min(k, self.delta.ntotal), params=dp))
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        if not parts:
            return scores, ids
        all_s = np.hstack([p[0] for p in parts])
        all_i = np.hstack([p[1] for p in parts])
        all_s[all_i < 0] = -np.inf
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        n = top.shape[1]
        scores[:, :n] = np.take_along_axis(all_s, top, 1)
        ids[:, :n] = np.take_along_axis(all_i, top, 1)
        return scores, ids

    def reconstruct(self, vector_id: int) -> np.ndarray:
        return (self.delta if vector_id in self._delta_ids else self.base).reconstruct(int(vector_id))

    def remove_ids(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        in_delta = np.fromiter((i in self._delta_ids for i in ids.tolist()), dtype=bool, count=len(ids))
        if in_delta.any():
            self.delta.remove_ids(ids[in_delta])
        self.removed = removed_after(self.removed, ids, in_delta)
        self._refresh()

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.delta.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
        self._delta_ids.update(np.asarray(ids).tolist())
        self.ntotal += len(ids)

    def save(self, path: Path) -> None:
        """Writes this version's files: links the base and writes the delta, or rewrites the base."""
        changes = len(self.removed) + self.delta.ntotal
        same_kind = self.approximate == _wants_ann(self.ntotal, self.config, self.approximate)
        if same_kind and keeps_base(self.source, changes, self.base.ntotal, self.config.vector_delta_fraction):
            share(self.source, path)
            faiss.write_index(self.delta, str(_beside(path, DELTA)))
            save_ids(_beside(path, REMOVED), self.removed)
            return
        faiss.write_index(self._compacted(), str(path))

    def _compacted(self) -> faiss.Index:
        """One base holding everything, built with all cores (training and assignment are batch work)."""
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        try:
            return self._compact()
        finally:
            faiss.omp_set_num_threads(threads)

    def _compact(self) -> faiss.Index:
        delta_ids = faiss.vector_to_array(self.delta.id_map)
        delta_vectors = self.delta.index.reconstruct_n(0, self.delta.ntotal) if self.delta.ntotal else np.zeros((0, self.d), np.float32)
        ids, vectors = all_vectors(self.base)
        if len(self.removed):
            keep = ~np.isin(ids, self.removed)
            ids, vectors = ids[keep], vectors[keep]
        ids, vectors = np.concatenate([ids, delta_ids]), np.vstack([vectors, delta_vectors])
        if _wants_ann(len(ids), self.config, self.approximate):
            hnsw = faiss.IndexHNSWFlat(self.d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            base = faiss.IndexIDMap2(hnsw)
        else:
            base = _flat(self.d)
        base.add_with_ids(vectors, ids)
        return base


def _read_base(path: Path) -> faiss.Index:
    """The base at `path`, memory-mapped, read once per file in this process. A base is never
    written after it is published (later versions hard-link it), so every version that shares it,
    and the builder of the next one, can search one object; reading an HNSW base is not free (its
    graph and id map are loaded, not mapped: most of a small build's time at news_2022's size).
    The file's identity is its device, inode, size and modification time."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _bases_lock:
        if key in _bases:
            _bases.move_to_end(key)
            return _bases[key]
    base = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    with _bases_lock:
        _bases[key] = base
        while len(_bases) > BASES_KEPT:
            _bases.popitem(last=False)
    return base


def _flat(dimension: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name.removesuffix(".faiss") + suffix)


def _wants_ann(n: int, config: Config, now: bool) -> bool:
    """From `ann_min_vectors` on; an HNSW stays until the size falls well below it (no flapping)."""
    return n >= (config.ann_min_vectors // 2 if now else config.ann_min_vectors)


def all_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """Ids and vectors of a base (flat or HNSW, both under IndexIDMap2)."""
    ids = faiss.vector_to_array(index.id_map)
    return ids, index.index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), np.float32)
