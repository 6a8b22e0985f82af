"""Reading a published version on Milvus: the store's rows and the three rankings of a question."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from qa.config import Config
from qa.index import duplicates
from qa.index.base import IndexMismatch, Manifest, NoIndex, PassageRow, Rankings, SentenceRow, check_manifest
from qa.index.lexical import idf
from qa.index.milvus.schema import (
    DF_CACHE,
    DOCUMENTS_KEPT,
    QUERY_WINDOW,
    SEARCH_LIMIT,
    SENTENCE_PROBE,
    SENTENCE_VECTORS_KEPT,
    STRONG,
    Milvus,
    analyzer,
    at,
    clients_lock,
    close_clients,
    filter_expr,
    published,
    sentence_id,
    term_id,
    visible,
)
from qa.models import Filters


class MilvusStore:
    """The read side of one published version, in the shape of `qa.index.store.Store`'s readers."""

    def __init__(self, db: Milvus, version: int, level: dict | None = None) -> None:
        """`level`: the consistency of every read, `at(ts)` of the version's publish (what a replica
        reads); Strong by default (a builder, reading what it or another worker just wrote)."""
        self.db, self.version, self.live = db, version, visible(version)
        self.level = level or {"consistency_level": STRONG}
        self.sentence_vectors: dict[int, list[float]] = {}
        self._clusters: dict[str, str | None] = {}  # document id -> cluster (None: not in this version)

    def rows_in(self, collection: str, expr: str, fields: list[str], limit: int | None = None) -> list[dict]:
        """Rows matching `expr` in this version. With `limit` unset, every row: one plain query when
        they fit its window (the question path: an iterator costs several round trips), else pages."""
        expr = f"({expr}) and {self.live}" if expr else self.live
        if limit is not None:
            return self.db.client.query(collection, filter=expr, output_fields=fields, limit=limit, **self.level)
        rows = self.db.client.query(collection, filter=expr, output_fields=fields, limit=QUERY_WINDOW, **self.level)
        return rows if len(rows) < QUERY_WINDOW else self.db.rows(collection, expr, fields, self.level)

    def by_ids(self, collection: str, ids: list[int], fields: list[str]) -> list[dict]:
        """Rows of this version by primary key: a point read on a server (its segments index their
        keys), where a filtered query scans the collection."""
        if not ids:
            return []
        rows = self.db.client.get(collection, ids=[int(i) for i in ids], output_fields=[*fields, "added", "removed"], **self.level)
        v = self.version
        return [r for r in rows if r["added"] <= v and (r["removed"] == 0 or r["removed"] > v)]

    def searched(self, collection: str, expr: str, fields: list[str], most: int) -> list[dict]:
        """Rows of this version matching `expr`, at most `most`, by a search that only filters.
        Milvus Lite's reads: it keeps a collection in one growing segment with no primary-key index,
        so a get or a query scans the rows up to the last match (news_2022: 20 passages 37 ms, their
        sentences 73 ms), where a search filtered to them takes 4 and 15 ms (docs/scale-out.md)."""
        field, vector = self.db.probe(collection)
        hits = self.db.client.search(
            collection, data=[vector], anns_field=field, limit=most, filter=f"({expr}) and {self.live}", output_fields=fields, **self.level
        )[0]
        return [{**h["entity"], "id": h["id"]} for h in hits]

    def passages(self, ids: list[int]) -> dict[int, PassageRow]:
        if not ids:
            return {}
        fields = ["id", "document_id", "ordinal", "start", "end", "text", "title", "date", "url", "source"]
        if self.db.lite:
            rows = self.searched(self.db.passages, f"id in {[int(i) for i in ids]}", fields, len(set(ids)))
            found = {r["id"] for r in rows}
            rows += self.by_ids(self.db.passages, [i for i in ids if i not in found], fields)
        else:
            rows = self.by_ids(self.db.passages, ids, fields)
        return {r["id"]: PassageRow(*[r[f] or (None if f in ("date", "url", "source") else r[f]) for f in fields]) for r in rows}

    def sentences(self, passage_ids: list[int]) -> dict[int, list[SentenceRow]]:
        """The passages' sentences and their vectors, in one call. On Milvus Lite a search filtered
        to the passages (see `searched`); on a server a get: a sentence's id is a hash of its
        passage's id and its position (`sentence_id`), so the first SENTENCE_PROBE ids of each
        passage are tried at once. A passage that may have more is scanned for."""
        out: dict[int, list[SentenceRow]] = {pid: [] for pid in passage_ids}
        if not passage_ids:
            return out
        fields = ["id", "passage_id", "ordinal", "start", "end", "vector"]
        if self.db.lite:
            most = min(SENTENCE_PROBE * len(out), SEARCH_LIMIT)
            rows = self.searched(self.db.sentences, f"passage_id in {[int(i) for i in out]}", fields, most)
            more = list(out) if len(rows) == most else []
        else:
            probes = [sentence_id(pid, k) for pid in out for k in range(SENTENCE_PROBE)]
            rows = self.by_ids(self.db.sentences, probes, fields)
            counts: dict[int, int] = {}
            for r in rows:
                counts[r["passage_id"]] = counts.get(r["passage_id"], 0) + 1
            more = [pid for pid in out if counts.get(pid, 0) in (0, SENTENCE_PROBE)]
        if more:
            rows = [r for r in rows if r["passage_id"] not in more]
            rows += self.rows_in(self.db.sentences, f"passage_id in {list(map(int, more))}", fields)
        if len(self.sentence_vectors) > SENTENCE_VECTORS_KEPT:
            self.sentence_vectors.clear()
        for r in sorted(rows, key=lambda r: (r["passage_id"], r["ordinal"])):
            out[r["passage_id"]].append(SentenceRow(r["id"], r["passage_id"], r["start"], r["end"]))
            self.sentence_vectors[r["id"]] = r["vector"]  # the reader asks for them next
        return out

    def document_passage_ids(self, doc_id: str) -> list[int]:
        rows = self.rows_in(self.db.passages, f"document_id == {json.dumps(doc_id)}", ["id", "ordinal"])
        return [r["id"] for r in sorted(rows, key=lambda r: r["ordinal"])]

    def document(self, doc_id: str) -> dict | None:
        fields = ["chunk", "text", "title", "date", "url", "source", "path", "hash", "passages"]
        rows = sorted(self.rows_in(self.db.documents, f"document_id == {json.dumps(doc_id)}", fields), key=lambda r: r["chunk"])
        if not rows:
            return None
        head = rows[0]
        meta = {k: head[k] or None for k in ("date", "url", "source", "path")}
        return {
            "id": doc_id,
            "title": head["title"],
            "text": "".join(r["text"] for r in rows),
            **meta,
            "hash": head["hash"],
            "passages": head["passages"],
        }

    def _heads(self) -> list[dict]:
        fields = ["document_id", "title", "date", "url", "source", "path", "hash", "passages"]
        return sorted(self.rows_in(self.db.documents, "chunk == 0", fields), key=lambda r: r["document_id"])

    def documents(self, offset: int, limit: int) -> list[dict]:
        return [
            {
                "id": r["document_id"],
                "title": r["title"],
                **{k: r[k] or None for k in ("date", "url", "source", "path")},
                "passages": r["passages"],
            }
            for r in self._heads()[offset : offset + limit]
        ]

    def document_hashes(self) -> dict[str, str]:
        return {r["document_id"]: r["hash"] for r in self.rows_in(self.db.documents, "chunk == 0", ["document_id", "hash"])}

    def clusters(self, document_ids: list[str]) -> dict[str, str]:
        """Document id -> the id of its cluster of near-duplicates (itself when it has no copy)."""
        # A version never changes: what was read is kept (a question asks twice, for its passages and its answers).
        if len(self._clusters) > DOCUMENTS_KEPT:
            self._clusters.clear()
        if missing := sorted(set(document_ids) - self._clusters.keys()):
            expr = f"chunk == 0 and document_id in {json.dumps(missing)}"
            found = {r["document_id"]: r["cluster"] for r in self.rows_in(self.db.documents, expr, ["document_id", "cluster"])}
            self._clusters |= {d: found.get(d) for d in missing}
        return {d: self._clusters[d] for d in document_ids if self._clusters.get(d) is not None}

    def cluster_members(self, cluster_id: str) -> list[str]:
        """The ids of the documents in a cluster, the head (`cluster_id`) first; [] for no such cluster."""
        rows = self.rows_in(self.db.documents, f"chunk == 0 and cluster == {json.dumps(cluster_id)}", ["document_id"])
        return sorted(r["document_id"] for r in rows)

    def cluster_counts(self) -> tuple[int, int]:
        """(copies: documents that are not their cluster's head, clusters of more than one document)."""
        return duplicates.cluster_counts(r["cluster"] for r in self.rows_in(self.db.documents, "chunk == 0", ["cluster"]))

    def sample_titles(self, limit: int) -> list[str]:
        return [r["title"] for r in self._heads()[:limit]]

    def counts(self) -> dict[str, int]:
        def count(collection: str, expr: str = "") -> int:
            expr = f"({expr}) and {self.live}" if expr else self.live
            return int(self.db.client.query(collection, filter=expr, output_fields=["count(*)"], **self.level)[0]["count(*)"])

        return {
            "documents": count(self.db.documents, "chunk == 0"),
            "passages": count(self.db.passages),
            "sentences": count(self.db.sentences),
        }

    def close(self) -> None:
        pass


class MilvusIndex:
    """One published version on Milvus, the `Index` protocol (qa/index/base.py)."""

    def __init__(self, db: Milvus, manifest: Manifest, config: Config, ts: int = 0) -> None:
        """`ts`: the hybrid timestamp the version was published at (its `version-<V>` row's), which
        every read is made at (schema.at)."""
        self.db, self.manifest, self.config = db, manifest, config
        self.store = MilvusStore(db, manifest.version, at(ts))
        self._df: dict[int, int] = {}  # term -> passages holding it, in this version

    @property
    def version(self) -> int:
        return self.manifest.version

    def rankings(self, question_vector: np.ndarray, question: str, n: int, filters: Filters | None) -> Rankings:
        where = filter_expr(filters)
        expr = f"({where}) and {self.store.live}" if where else self.store.live
        c, q, level = self.db.client, [question_vector.astype(np.float32).tolist()], self.store.level
        ip = {"metric_type": "IP"}
        weights = self.question_weights(question)
        # The three searches are independent: in flight together, a question waits for the slowest.
        searches = _searches()
        dense = searches.submit(
            c.search,
            self.db.passages,
            data=q,
            anns_field="vector",
            limit=n,
            filter=expr,
            output_fields=["id"],
            search_params=self.db.search_params(self.db.passages, n),
            **level,
        )
        sent = searches.submit(
            c.search,
            self.db.sentences,
            data=q,
            anns_field="vector",
            limit=n * 3,
            filter=expr,
            output_fields=["passage_id"],
            search_params=self.db.search_params(self.db.sentences, n * 3),
            **level,
        )
        lexical = (
            searches.submit(
                c.search,
                self.db.passages,
                data=[weights],
                anns_field="sparse",
                limit=n,
                filter=expr,
                output_fields=["id"],
                search_params=ip,
                **level,
            )
            if weights
            else None
        )
        by_sentence: dict[int, float] = {}
        for hit in sent.result()[0]:
            by_sentence.setdefault(int(hit["entity"]["passage_id"]), float(hit["distance"]))
        dense = dense.result()[0]
        lexical = lexical.result()[0] if lexical is not None else []
        return Rankings(
            [(int(h["id"]), float(h["distance"])) for h in dense],
            list(by_sentence.items()),
            [(int(h["id"]), float(h["distance"])) for h in lexical if h["distance"] > 0],
        )

    def question_weights(self, question: str) -> dict[int, float]:
        """The question's side of BM25: each term's idf in this version (its passages' side is stored).
        A version's counts never change, so they are kept once read (0: in no passage)."""
        terms = {term_id(t) for t in analyzer.question_terms(question)}
        if missing := sorted(terms - self._df.keys()):
            if len(self._df) > DF_CACHE:
                self._df.clear()
            expr = f"kind == 0 and term in {missing}"
            rows = self.store.searched(self.db.terms, expr, ["term", "df"], len(missing) + 1) if self.db.lite else []
            if not self.db.lite or len(rows) > len(missing):  # (one row per term and version)
                rows = self.store.rows_in(self.db.terms, expr, ["term", "df"])
            self._df.update(dict.fromkeys(missing, 0) | {r["term"]: r["df"] for r in rows})
        return {t: float(idf(self.manifest.passages, self._df[t])) for t in sorted(terms) if self._df.get(t)}

    def sentence_embeddings(self, sentence_ids: list[int]) -> np.ndarray:
        kept = self.store.sentence_vectors
        by_id = {int(i): kept[int(i)] for i in sentence_ids if int(i) in kept}
        if missing := [int(i) for i in sentence_ids if int(i) not in by_id]:
            by_id |= {r["id"]: r["vector"] for r in self.store.by_ids(self.db.sentences, missing, ["id", "vector"])}
        return np.asarray([by_id[int(i)] for i in sentence_ids], dtype=np.float32)

    def close(self) -> None:
        pass


_pool: list[ThreadPoolExecutor] = []


def _searches() -> ThreadPoolExecutor:
    """The threads a question's searches run on, shared by every index of the process."""
    with clients_lock:
        if not _pool:
            _pool.append(ThreadPoolExecutor(8, thread_name_prefix="milvus-search"))
        return _pool[0]


class VersionWatch:
    """The published version of one server's index, read with Strong consistency every
    `QA_MILVUS_VERSION_POLL` seconds by a thread of its own, so a question never waits for a Strong
    read (~0.4 s on Milvus 2.3.5) and a replica adopts a new version within a poll and a read of
    its publish. Milvus Lite in a file is read directly: its reads are immediate."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.found: tuple[int, dict] | None = None
        self.read_at = 0.0  # time.monotonic() of the last read that succeeded
        self.error: Exception | None = None
        self.ready = threading.Event()
        self.stopped = threading.Event()
        threading.Thread(target=self._run, name="milvus-version-watch", daemon=True).start()

    def _run(self) -> None:
        db: Milvus | None = None
        failures = 0
        while not self.stopped.is_set():
            try:
                db = db or Milvus(self.config)
                found = db.current()
                if found is not None or self.found is None:  # (a published index never goes back to none)
                    self.found = found
                self.read_at, self.error, failures = time.monotonic(), None, 0
            except Exception as exc:  # noqa: BLE001 - told to the next caller, who reads itself
                self.error, failures = exc, failures + 1
            self.ready.set()
            # A server that is down is asked again less and less often (up to 30 s), not every poll.
            self.stopped.wait(min(30.0, self.config.milvus_version_poll * 2 ** min(failures, 6)))

    def current(self) -> tuple[int, dict] | None:
        self.ready.wait(30)
        if self.error is not None or time.monotonic() - self.read_at > max(10.0, 20 * self.config.milvus_version_poll):
            return Milvus(self.config).current()  # the watch is failing or stuck: read, and raise what fails
        return self.found


_watches: dict[tuple[str, str, str], VersionWatch] = {}


def published_now(config: Config) -> tuple[int, dict] | None:
    """(version, its meta row) that readers should use now: the watch's, or this process's own
    publish when that is newer (a write through this replica's API is answered from at once)."""
    if config.milvus_uri.endswith(".db"):
        return Milvus(config).current()
    key = (config.milvus_uri, config.milvus_prefix, config.milvus_token)
    with clients_lock:
        watch = _watches.get(key) or _watches.setdefault(key, VersionWatch(config))
    found = watch.current()
    own = published.get((config.milvus_uri, config.milvus_prefix))
    if own and (found is None or own[0] > found[0]):
        return own[0], own[1]
    return found


def disconnect(uri: str) -> None:
    """Stops this process's version watches of the server at `uri` and closes its clients: before
    the server goes away (a test's engine, a replica shutting down), so no thread keeps calling it."""
    with clients_lock:
        watches = [_watches.pop(k) for k in [k for k in _watches if k[0] == uri]]
    for watch in watches:
        watch.stopped.set()
    close_clients(uri)


def current_milvus_version(config: Config) -> int | None:
    found = published_now(config)
    return found[0] if found else None


def open_milvus(config: Config) -> MilvusIndex:
    db = Milvus(config)
    found = published_now(config)
    if found is None:
        raise NoIndex(f"no index yet in Milvus ({config.milvus_uri}, prefix {config.milvus_prefix!r}): run `qa index`")
    manifest = Manifest.parse(found[1])
    check_manifest(manifest, config)
    if problem := db.schema_problem():
        raise IndexMismatch(problem)
    return MilvusIndex(db, manifest, config, int(found[1].get("ts") or 0))
