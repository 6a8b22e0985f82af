"""The index on Milvus: documents, passages, sentences, dense vectors and BM25 in one Milvus database.

`QA_MILVUS_URI` chooses it: a path ending in `.db` is Milvus Lite in that file (the engine of the
tests), `http://host:19530` a Milvus server or cluster shared by any number of `qa serve` replicas.

Versions. Every row carries the version that added it (`added`) and the one that removed it
(`removed`, 0 while it is live); version V sees the rows with `added <= V` and `removed` 0 or
above V. A build of V+1 inserts its rows with `added = V+1` and marks the rows it drops with
`removed = V+1`, invisible to readers of V either way; publishing is one upsert of the `current`
row of the meta collection. A reader reads that row once per question and filters every query by
it, so it never sees a half-published build nor mixes two versions; a killed build leaves only
rows that no published version sees, which the next build removes first. Rows removed more than
`keep_versions` versions ago are deleted after each publish.

Ids are a hash of (document id, content hash, position, version), so what a build writes does
not depend on the order documents are embedded in.

BM25 is the files engine's (qa/lexical.py: same analyzer, same formula) as sparse vectors: each
passage stores its side (saturated term frequencies, normalized by the corpus's mean passage
length), a question sends its terms' idf, and the inner product is the BM25 score. The document
frequencies live in the terms collection, versioned like every row, so the statistics are global
to a version; Milvus's own BM25 function keeps them per segment, so its scores depended on how
rows were flushed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import numpy as np

from qa.config import Config
from qa.embedding import Embedder, model_version, vector_backend
from qa.lexical import Analyzer, document_weights, idf
from qa.index.version import FORMAT_VERSION, Candidates, IndexDamaged, IndexMismatch, IndexProblem, Manifest, NoIndex, check_manifest
from qa.models import Document, Filters
from qa.store import PassageRow, SentenceRow

# pymilvus warns on every paged query against Milvus Lite (no server timestamp): not a problem.
logging.getLogger("pymilvus").setLevel(logging.ERROR)
logging.getLogger("grpc._server").setLevel(logging.CRITICAL)  # Milvus Lite's in-process server, same cause

TEXT_CHUNK = 8000  # characters of a document's text per row (VARCHAR limits are in bytes)
PAGE = 10_000
# Milvus answers at most this many rows to one plain query; past it, pages go through an iterator.
QUERY_WINDOW = 16_384
SEARCH_LIMIT = 16_384  # the most hits one search returns
# The dense vectors' index, by QA_MILVUS_INDEX: Milvus Lite offers FLAT and IVF_FLAT, a server HNSW too.
INDEX_PARAMS: dict[str, dict] = {"IVF_FLAT": {"nlist": 1024}, "FLAT": {}, "HNSW": {"M": 16, "efConstruction": 200}}
WRITE_BATCH = 1000  # rows per upsert call
SENTENCE_PROBE = 24  # sentence ids tried per passage (news_2022: 2.0 sentences a passage on average)
DF_CACHE = 500_000  # terms whose document frequency a version keeps in memory once read
# The collections' layout. Collections are made once and cannot change, so an index made by code
# with another layout is refused with a way out (schema_problem). 2: BM25 as the project's own
# sparse weights (below) instead of Milvus's BM25 function. 3: a sentence's id is a hash of its
# passage's id and its position, so a question reads its sentences in one call.
SCHEMA = 3
SENTENCE_VECTORS_KEPT = 20_000  # sentence vectors read with their sentences, kept for the reader
_analyzer = Analyzer()


def term_id(term: bytes) -> int:
    """A term's dimension in the sparse vectors (31 bits of its hash)."""
    return int.from_bytes(hashlib.blake2b(term, digest_size=4).digest(), "big") >> 1


# Milvus refuses an empty sparse vector; a passage with no terms (only stop words, or none) gets
# this dimension, which no term hashes to and no question asks for.
NO_TERMS = {1 << 31: 1.0}


_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()
_loaded: set[tuple[str, str]] = set()  # (uri, prefix) whose collections this process has loaded


def client(uri: str, token: str):
    """One client per server for the whole process: opening one costs a connection (and, for
    Milvus Lite, starting its engine), and the pipeline asks for the published version per question."""
    with _clients_lock:
        if (uri, token) not in _clients:
            try:
                from pymilvus import MilvusClient
            except ImportError as exc:
                raise IndexProblem(f"QA_MILVUS_URI is set but pymilvus is not installed: pip install 'qa[milvus]' ({exc})") from exc
            # Milvus Lite's local server answers the client's keepalive pings with GOAWAY
            # ("too_many_pings"), logged on every connection: a local socket needs no keepalive.
            local = {"grpc_options": {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": False}}
            _clients[(uri, token)] = MilvusClient(uri, token=token or "", **(local if uri.endswith(".db") else {}))
        return _clients[(uri, token)]


def visible(version: int) -> str:
    return f"added <= {version} and (removed == 0 or removed > {version})"


def row_id(*parts: object) -> int:
    """A positive int64 from the parts: stable across processes and builders."""
    return int.from_bytes(hashlib.blake2b(json.dumps(parts).encode(), digest_size=8).digest(), "big") >> 1


def sentence_id(passage_id: int, k: int) -> int:
    """The k-th sentence of a passage (a passage's id already names its document, content and version)."""
    return row_id("sentence", passage_id, k)


def filter_expr(filters: Filters | None) -> str:
    if filters is None or filters.empty():
        return ""
    clauses = []
    if filters.document_id:
        clauses.append(f"document_id == {json.dumps(filters.document_id)}")
    if filters.source:
        clauses.append(f"source == {json.dumps(filters.source)}")
    if filters.date_from:
        clauses.append(f'date >= {json.dumps(filters.date_from)} and date != ""')
    if filters.date_to:
        clauses.append(f'date <= {json.dumps(filters.date_to)} and date != ""')
    return " and ".join(clauses)


class Milvus:
    """The four collections of one prefix: meta, documents, passages, sentences."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.client = client(config.milvus_uri, config.milvus_token)
        p = config.milvus_prefix
        self.meta, self.documents, self.passages, self.sentences = f"{p}_meta", f"{p}_documents", f"{p}_passages", f"{p}_sentences"
        self.terms = f"{p}_terms"
        self._index_types: dict[str, str] = {}
        self._probes: dict[str, tuple[str, list[float]]] = {}
        self._load()

    def _load(self) -> None:
        """Loads the collections into memory once per process: a Milvus that restarted (or a Milvus
        Lite file another process wrote) has them released, and a released collection cannot be searched."""
        key = (self.config.milvus_uri, self.config.milvus_prefix)
        if key in _loaded:
            return
        with _clients_lock:
            names = [n for n in (self.meta, *self.versioned) if self.client.has_collection(n)]
            for name in names:
                if "NotLoad" in str(getattr(self.client.get_load_state(name).get("state"), "name", "")):
                    self.client.load_collection(name)
            if len(names) == 5:
                _loaded.add(key)

    @property
    def lite(self) -> bool:
        """Milvus Lite in a local file, rather than a server."""
        return self.config.milvus_uri.endswith(".db")

    def probe(self, collection: str) -> tuple[str, list[float]]:
        """A collection's vector field and a query vector for searches that only filter: any
        vector will do, the filter chooses the rows."""
        if collection not in self._probes:
            from pymilvus import DataType

            fields = self.client.describe_collection(collection)["fields"]
            field = next(f for f in fields if f["type"] == DataType.FLOAT_VECTOR)
            self._probes[collection] = (field["name"], [1.0] + [0.0] * (int(field["params"]["dim"]) - 1))
        return self._probes[collection]

    @property
    def versioned(self) -> tuple[str, ...]:
        """The collections whose rows carry versions."""
        return (self.documents, self.passages, self.sentences, self.terms)

    def meta_value(self, key: str) -> dict | None:
        rows = self.client.query(self.meta, filter=f"key == {json.dumps(key)}", output_fields=["value"])
        return json.loads(rows[0]["value"]) if rows else None

    def set_meta(self, key: str, value: dict) -> None:
        self.client.upsert(self.meta, [{"key": key, "value": json.dumps(value), "dummy": [0.0, 0.0]}])
        self.client.flush(self.meta)

    def schema_problem(self) -> str | None:
        """Why the existing collections cannot serve this code (their layout is fixed when made)."""
        if not self.client.has_collection(self.passages):
            return None
        made = (self.meta_value("schema") or {}).get("version", 1)
        if made != SCHEMA:
            return (
                f"the Milvus collections {self.config.milvus_prefix}_* have layout {made}, this code needs {SCHEMA}: build a new "
                "index under another prefix (QA_MILVUS_PREFIX=... qa index), point the replicas at it, then drop the old collections"
            )
        return None

    # Published versions.

    def current(self) -> tuple[int, dict] | None:
        if not self.client.has_collection(self.meta):
            return None
        rows = self.client.query(self.meta, filter='key == "current"', output_fields=["value"])
        if not rows:
            return None
        data = json.loads(rows[0]["value"])
        return int(data["version"]), data

    def publish(self, manifest: Manifest) -> None:
        self.flush()
        self.client.upsert(self.meta, [{"key": "current", "value": json.dumps(asdict(manifest)), "dummy": [0.0, 0.0]}])
        self.client.flush(self.meta)

    def flush(self) -> None:
        for name in self.versioned:
            self.client.flush(name)

    # Schema.

    def ensure(self, dimension: int) -> None:
        from pymilvus import DataType

        c = self.client
        fresh = not c.has_collection(self.passages)

        def create(name: str, fields: list[tuple], vectors: list[tuple[str, str, str]]) -> None:
            if c.has_collection(name):
                return
            schema = c.create_schema(auto_id=False)
            for field in fields:
                schema.add_field(*field[:2], **(field[2] if len(field) > 2 else {}))
            index = c.prepare_index_params()
            for field, kind, metric in vectors:
                index.add_index(field, index_type=kind, metric_type=metric, params=INDEX_PARAMS.get(kind, {}))
            c.create_collection(name, schema=schema, index_params=index)

        version = [("added", DataType.INT64), ("removed", DataType.INT64)]
        dense = self.config.milvus_index
        if dense not in INDEX_PARAMS:
            raise IndexProblem(f"QA_MILVUS_INDEX {dense!r} is not one of {', '.join(INDEX_PARAMS)}")
        text = {"max_length": 65535}
        short = {"max_length": 1024}
        create(
            self.meta,
            [
                ("key", DataType.VARCHAR, {"max_length": 64, "is_primary": True}),
                ("value", DataType.VARCHAR, text),
                ("dummy", DataType.FLOAT_VECTOR, {"dim": 2}),
            ],
            [("dummy", "FLAT", "L2")],
        )
        create(
            self.documents,
            [
                ("key", DataType.INT64, {"is_primary": True}),
                ("document_id", DataType.VARCHAR, short),
                ("chunk", DataType.INT64),
                ("text", DataType.VARCHAR, text),
                ("title", DataType.VARCHAR, text),
                ("date", DataType.VARCHAR, short),
                ("url", DataType.VARCHAR, text),
                ("source", DataType.VARCHAR, short),
                ("path", DataType.VARCHAR, text),
                ("hash", DataType.VARCHAR, short),
                ("passages", DataType.INT64),
                *version,
                ("dummy", DataType.FLOAT_VECTOR, {"dim": 2}),
            ],
            [("dummy", "FLAT", "L2")],
        )
        create(
            self.passages,
            [
                ("id", DataType.INT64, {"is_primary": True}),
                ("document_id", DataType.VARCHAR, short),
                ("ordinal", DataType.INT64),
                ("start", DataType.INT64),
                ("end", DataType.INT64),
                ("text", DataType.VARCHAR, text),
                ("title", DataType.VARCHAR, text),
                ("date", DataType.VARCHAR, short),
                ("url", DataType.VARCHAR, text),
                ("source", DataType.VARCHAR, short),
                ("sparse", DataType.SPARSE_FLOAT_VECTOR),
                *version,
                ("vector", DataType.FLOAT_VECTOR, {"dim": dimension}),
            ],
            [("vector", dense, "IP"), ("sparse", "SPARSE_INVERTED_INDEX", "IP")],
        )
        create(
            self.sentences,
            [
                ("id", DataType.INT64, {"is_primary": True}),
                ("passage_id", DataType.INT64),
                ("document_id", DataType.VARCHAR, short),
                ("ordinal", DataType.INT64),
                ("start", DataType.INT64),
                ("end", DataType.INT64),
                ("date", DataType.VARCHAR, short),
                ("source", DataType.VARCHAR, short),
                *version,
                ("vector", DataType.FLOAT_VECTOR, {"dim": dimension}),
            ],
            [("vector", dense, "IP")],
        )
        # BM25's document frequencies: per version, one row per term (kind 0); a build's workers
        # write their changes (kind 1), which publishing folds into the totals.
        create(
            self.terms,
            [("key", DataType.INT64, {"is_primary": True}), ("term", DataType.INT64), ("df", DataType.INT64), ("kind", DataType.INT64)]
            + version
            + [("dummy", DataType.FLOAT_VECTOR, {"dim": 2})],
            [("dummy", "FLAT", "L2")],
        )
        if fresh:
            self.set_meta("schema", {"version": SCHEMA})

    def search_params(self, collection: str, limit: int) -> dict:
        """How to search a collection's dense vectors, for the index it was made with (read once:
        QA_MILVUS_INDEX only applies to collections made after it was set)."""
        if collection not in self._index_types:
            found = self.client.describe_index(collection, "vector") or {}
            self._index_types[collection] = str(found.get("index_type", "FLAT"))
        kind = self._index_types[collection]
        if kind == "IVF_FLAT":
            return {"metric_type": "IP", "params": {"nprobe": self.config.milvus_nprobe}}
        if kind == "HNSW":
            return {"metric_type": "IP", "params": {"ef": max(limit, self.config.milvus_nprobe * 4)}}
        return {"metric_type": "IP"}

    def write(self, collection: str, rows: list[dict]) -> None:
        """Upserts in calls of WRITE_BATCH rows: Milvus Lite 2.5 takes a call of 8,000 passage rows
        a hundred times longer than four calls of 2,000 (bench: 67 s against 0.6 s each)."""
        for k in range(0, len(rows), WRITE_BATCH):
            self.client.upsert(collection, rows[k : k + WRITE_BATCH])

    def rows(self, collection: str, expr: str, fields: list[str]) -> list[dict]:
        """Every row matching `expr` (queries are capped, so this pages through them)."""
        if not self.client.query(collection, filter=expr, output_fields=["count(*)"])[0]["count(*)"]:
            return []  # (and Milvus Lite 2.5 fails to read a sparse field from an empty growing segment)
        it = self.client.query_iterator(collection, filter=expr, output_fields=fields, batch_size=PAGE)
        out: list[dict] = []
        try:
            while batch := it.next():
                out.extend(batch)
        finally:
            it.close()
        return out


class MilvusStore:
    """The read side of one published version, in the shape of `qa.store.Store`'s readers."""

    def __init__(self, db: Milvus, version: int) -> None:
        self.db, self.version, self.live = db, version, visible(version)
        self.sentence_vectors: dict[int, list[float]] = {}

    def _q(self, collection: str, expr: str, fields: list[str], limit: int | None = None) -> list[dict]:
        """Rows matching `expr` in this version. With `limit` unset, every row: one plain query when
        they fit its window (the question path: an iterator costs several round trips), else pages."""
        expr = f"({expr}) and {self.live}" if expr else self.live
        if limit is not None:
            return self.db.client.query(collection, filter=expr, output_fields=fields, limit=limit)
        rows = self.db.client.query(collection, filter=expr, output_fields=fields, limit=QUERY_WINDOW)
        return rows if len(rows) < QUERY_WINDOW else self.db.rows(collection, expr, fields)

    def by_ids(self, collection: str, ids: list[int], fields: list[str]) -> list[dict]:
        """Rows of this version by primary key: a point read on a server (its segments index their
        keys), where a filtered query scans the collection."""
        if not ids:
            return []
        rows = self.db.client.get(collection, ids=[int(i) for i in ids], output_fields=[*fields, "added", "removed"])
        v = self.version
        return [r for r in rows if r["added"] <= v and (r["removed"] == 0 or r["removed"] > v)]

    def searched(self, collection: str, expr: str, fields: list[str], most: int) -> list[dict]:
        """Rows of this version matching `expr`, at most `most`, by a search that only filters.
        Milvus Lite's reads: it keeps a collection in one growing segment with no primary-key index,
        so a get or a query scans the rows up to the last match (news_2022: 20 passages 37 ms, their
        sentences 73 ms), where a search filtered to them takes 4 and 15 ms (docs/scale-out.md)."""
        field, vector = self.db.probe(collection)
        hits = self.db.client.search(
            collection, data=[vector], anns_field=field, limit=most, filter=f"({expr}) and {self.live}", output_fields=fields
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
            rows += self._q(self.db.sentences, f"passage_id in {list(map(int, more))}", fields)
        if len(self.sentence_vectors) > SENTENCE_VECTORS_KEPT:
            self.sentence_vectors.clear()
        for r in sorted(rows, key=lambda r: (r["passage_id"], r["ordinal"])):
            out[r["passage_id"]].append(SentenceRow(r["id"], r["passage_id"], r["start"], r["end"]))
            self.sentence_vectors[r["id"]] = r["vector"]  # the reader asks for them next
        return out

    def document_passage_ids(self, doc_id: str) -> list[int]:
        rows = self._q(self.db.passages, f"document_id == {json.dumps(doc_id)}", ["id", "ordinal"])
        return [r["id"] for r in sorted(rows, key=lambda r: r["ordinal"])]

    def document(self, doc_id: str) -> dict | None:
        fields = ["chunk", "text", "title", "date", "url", "source", "path", "hash", "passages"]
        rows = sorted(self._q(self.db.documents, f"document_id == {json.dumps(doc_id)}", fields), key=lambda r: r["chunk"])
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
        return sorted(self._q(self.db.documents, "chunk == 0", fields), key=lambda r: r["document_id"])

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
        return {r["document_id"]: r["hash"] for r in self._q(self.db.documents, "chunk == 0", ["document_id", "hash"])}

    def sample_titles(self, limit: int) -> list[str]:
        return [r["title"] for r in self._heads()[:limit]]

    def counts(self) -> dict[str, int]:
        def count(collection: str, expr: str = "") -> int:
            expr = f"({expr}) and {self.live}" if expr else self.live
            return int(self.db.client.query(collection, filter=expr, output_fields=["count(*)"])[0]["count(*)"])

        return {
            "documents": count(self.db.documents, "chunk == 0"),
            "passages": count(self.db.passages),
            "sentences": count(self.db.sentences),
        }

    def close(self) -> None:
        pass


class MilvusIndex:
    """One published version on Milvus, with the interface of `qa.index.IndexVersion`."""

    def __init__(self, db: Milvus, manifest: Manifest, config: Config) -> None:
        self.db, self.manifest, self.config = db, manifest, config
        self.store = MilvusStore(db, manifest.version)
        self._df: dict[int, int] = {}  # term -> passages holding it, in this version

    @property
    def version(self) -> int:
        return self.manifest.version

    def candidates(self, question_vector: np.ndarray, question: str, n: int, filters: Filters | None) -> Candidates:
        where = filter_expr(filters)
        expr = f"({where}) and {self.store.live}" if where else self.store.live
        c, q = self.db.client, [question_vector.astype(np.float32).tolist()]
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
            )
            if weights
            else None
        )
        by_sentence: dict[int, float] = {}
        for hit in sent.result()[0]:
            by_sentence.setdefault(int(hit["entity"]["passage_id"]), float(hit["distance"]))
        dense = dense.result()[0]
        lexical = lexical.result()[0] if lexical is not None else []
        return Candidates(
            [(int(h["id"]), float(h["distance"])) for h in dense],
            list(by_sentence.items()),
            [(int(h["id"]), float(h["distance"])) for h in lexical if h["distance"] > 0],
        )

    def question_weights(self, question: str) -> dict[int, float]:
        """The question's side of BM25: each term's idf in this version (its passages' side is stored).
        A version's counts never change, so they are kept once read (0: in no passage)."""
        terms = {term_id(t) for t in _analyzer.question_terms(question)}
        if missing := sorted(terms - self._df.keys()):
            if len(self._df) > DF_CACHE:
                self._df.clear()
            expr = f"kind == 0 and term in {missing}"
            rows = self.store.searched(self.db.terms, expr, ["term", "df"], len(missing) + 1) if self.db.lite else []
            if not self.db.lite or len(rows) > len(missing):  # (one row per term and version)
                rows = self.store._q(self.db.terms, expr, ["term", "df"])
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
    with _clients_lock:
        if not _pool:
            _pool.append(ThreadPoolExecutor(8, thread_name_prefix="milvus-search"))
        return _pool[0]


def current_milvus_version(config: Config) -> int | None:
    found = Milvus(config).current()
    return found[0] if found else None


def open_milvus(config: Config) -> MilvusIndex:
    db = Milvus(config)
    found = db.current()
    if found is None:
        raise NoIndex(f"no index yet in Milvus ({config.milvus_uri}, prefix {config.milvus_prefix!r}): run `qa index`")
    try:
        manifest = Manifest(**{k: found[1][k] for k in Manifest.__dataclass_fields__ if k in found[1]})
    except TypeError as exc:
        raise IndexDamaged(f"the Milvus index's current version is damaged ({exc}): run `qa index --rebuild`") from exc
    check_manifest(manifest, config)
    if problem := db.schema_problem():
        raise IndexMismatch(problem)
    return MilvusIndex(db, manifest, config)


# Building the next version.


class MilvusBuild:
    """Writes version V+1 beside the published V; `publish()` makes it the one readers see.

    With `part=(i, n)` this is worker i of n: it writes only the documents whose id hashes to its
    share, records that its part is in, and the worker that brings in the last part publishes.
    """

    def __init__(self, config: Config, embedder: Embedder, rebuild: bool, part: tuple[int, int] | None = None) -> None:
        self.config, self.embedder, self.part = config, embedder, part
        self.db = Milvus(config)
        if problem := self.db.schema_problem():
            raise IndexMismatch(problem)
        self.db.ensure(embedder.dimension)
        found = self.db.current()
        self.previous = found[0] if found else 0
        self.target = self.previous + 1
        plan = {"target": self.target, "parts": part[1] if part else 1, "rebuild": rebuild}
        if not (part and self.db.meta_value("build") == plan):  # not joining a build under way: start clean
            self._clean_unpublished()
            self.db.set_meta("build", plan)
        self.live_hashes: dict[str, str] = {}
        if found:
            manifest = Manifest(**{k: found[1][k] for k in Manifest.__dataclass_fields__ if k in found[1]})
            if not rebuild:
                check_manifest(manifest, config)
            self.live_hashes = MilvusStore(self.db, self.previous).document_hashes()
        self.old_hashes = {} if rebuild else self.live_hashes
        # BM25: the passages' side is written with the corpus's mean passage length, measured by the
        # first build (or a rebuild) and kept for the incremental ones; term counts change as rows do.
        self.average_length = None if rebuild else (self.db.meta_value("lexical") or {}).get("average_length")
        self.df_changes: dict[int, int] = {}
        self._pending: dict[str, list[dict]] = {}  # rows queued for the next write of their collection

    def mine(self, doc_id: str) -> bool:
        """Whether this worker writes the document (always, without parts)."""
        if self.part is None:
            return True
        return int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % self.part[1] == self.part[0] - 1

    def part_done(self) -> bool:
        """Records this part as in; True when every part of the build is."""
        assert self.part is not None
        self._drain()
        self._write_df_changes()
        self.db.flush()
        self.db.set_meta(f"part-{self.target}-{self.part[0]}", {"done": True})
        return all(self.db.meta_value(f"part-{self.target}-{i}") for i in range(1, self.part[1] + 1))

    def _clean_unpublished(self) -> None:
        """Rows of builds that never published (killed): gone, and their removal marks undone."""
        c = self.db.client
        for name in self.db.versioned:
            c.delete(name, filter=f"added > {self.previous}")
            marked = self.db.rows(name, f"removed > {self.previous}", ["*"])
            if marked:
                self.db.write(name, [{**r, "removed": 0} for r in marked])

    def remove(self, doc_ids: list[str]) -> None:
        """Marks the documents' rows removed in the new version."""
        if not doc_ids:
            return
        expr = f"document_id in {json.dumps(doc_ids)} and {visible(self.previous)}"
        for name in (self.db.documents, self.db.passages, self.db.sentences):
            rows = self.db.rows(name, expr, ["*"])
            if name == self.db.passages:
                for r in rows:
                    for term in r["sparse"]:
                        if int(term) not in NO_TERMS:
                            self.df_changes[int(term)] = self.df_changes.get(int(term), 0) - 1
            self.db.write(name, [{**r, "removed": self.target} for r in rows])

    def measure(self, split: list[tuple[Document, list]]) -> None:
        """Sets BM25's mean passage length from the passages about to be written, where no earlier
        build set it (each part of a parallel build measures its own share: hash shares of one
        corpus, so their means agree closely)."""
        if self.average_length is None:
            lengths = [_analyzer.passage_terms(doc.title, p.text)[2] for doc, passages in split for p in passages]
            self.average_length = float(np.mean(lengths)) if lengths else 1.0
            self.db.set_meta("lexical", {"average_length": self.average_length})

    def _sparse(self, title: str, text: str) -> dict[int, float]:
        body, title_terms, length = _analyzer.passage_terms(title, text)
        weights: dict[int, float] = {}
        for term, weight in document_weights(body, title_terms, length, self.average_length or 1.0).items():
            key = term_id(term)
            weights[key] = weights.get(key, 0.0) + weight
        for key in weights:
            self.df_changes[key] = self.df_changes.get(key, 0) + 1
        return weights or NO_TERMS

    def add(self, doc: Document, passages: list, vectors: np.ndarray, sentence_vectors: list[np.ndarray]) -> None:
        v, dummy = self.target, [0.0, 0.0]
        meta = {"date": doc.date or "", "source": doc.source or ""}
        chunks = [doc.text[i : i + TEXT_CHUNK] for i in range(0, len(doc.text), TEXT_CHUNK)] or [""]
        self._queue(
            self.db.documents,
            [
                {
                    "key": row_id("document", doc.id, doc.hash, k, v),
                    "document_id": doc.id,
                    "chunk": k,
                    "text": chunk,
                    "title": doc.title,
                    "url": doc.url or "",
                    "path": doc.path or "",
                    "hash": doc.hash,
                    "passages": len(passages),
                    "added": v,
                    "removed": 0,
                    "dummy": dummy,
                    **meta,
                }
                for k, chunk in enumerate(chunks)
            ],
        )
        prows, srows = [], []
        for p, vec, svecs in zip(passages, vectors, sentence_vectors):
            pid = row_id("passage", doc.id, doc.hash, p.ordinal, v)
            prows.append(
                {
                    "id": pid,
                    "document_id": doc.id,
                    "ordinal": p.ordinal,
                    "start": p.start,
                    "end": p.end,
                    "text": p.text,
                    "title": doc.title,
                    "url": doc.url or "",
                    "sparse": self._sparse(doc.title, p.text),
                    "added": v,
                    "removed": 0,
                    "vector": vec.astype(np.float32).tolist(),
                    **meta,
                }
            )
            for k, (s, svec) in enumerate(zip(p.sentences, svecs)):
                srows.append(
                    {
                        "id": sentence_id(pid, k),
                        "passage_id": pid,
                        "document_id": doc.id,
                        "ordinal": k,
                        "start": s.start,
                        "end": s.end,
                        "added": v,
                        "removed": 0,
                        "vector": np.asarray(svec, np.float32).tolist(),
                        **meta,
                    }
                )
        self._queue(self.db.passages, prows)
        self._queue(self.db.sentences, srows)

    def _queue(self, collection: str, rows: list[dict]) -> None:
        """Rows go out in batches across documents: a write costs Milvus Lite about the same for
        one document's rows as for a thousand (news_2022: 72 passages/s written one document a call)."""
        pending = self._pending.setdefault(collection, [])
        pending.extend(rows)
        if len(pending) >= (WRITE_BATCH // 10 if collection == self.db.documents else WRITE_BATCH):
            self._drain(collection)

    def _drain(self, *collections: str) -> None:
        for name in collections or list(self._pending):
            self.db.write(name, self._pending.pop(name, []))

    def db_counts(self) -> dict[str, int]:
        return MilvusStore(self.db, self.previous).counts()

    def _write_df_changes(self) -> None:
        """This worker's changes to the term counts, as rows of kind 1 for publishing to fold."""
        part = self.part[0] if self.part else 1
        rows = [
            {"key": row_id("df", term, self.target, part), "term": term, "df": change, "kind": 1, "added": self.target, "removed": 0}
            for term, change in self.df_changes.items()
            if change
        ]
        self.db.write(self.db.terms, [r | {"dummy": [0.0, 0.0]} for r in rows])
        self.df_changes = {}

    def _fold_df_changes(self) -> None:
        """Totals of the new version: the previous totals plus every worker's changes."""
        c, terms = self.db.client, self.db.terms
        c.flush(terms)
        changes: dict[int, int] = {}
        for r in self.db.rows(terms, f"kind == 1 and added == {self.target}", ["term", "df"]):
            changes[r["term"]] = changes.get(r["term"], 0) + r["df"]
        keys = sorted(changes)
        for k in range(0, len(keys), 1000):
            chunk = keys[k : k + 1000]
            old = self.db.rows(terms, f"kind == 0 and term in {chunk} and {visible(self.previous)}", ["*"])
            totals = {r["term"]: r["df"] for r in old}
            new = [
                {
                    "key": row_id("df", t, self.target),
                    "term": t,
                    "df": totals.get(t, 0) + changes[t],
                    "kind": 0,
                    "added": self.target,
                    "removed": 0,
                }
                for t in chunk
            ]
            if fresh := [r | {"dummy": [0.0, 0.0]} for r in new if r["df"] > 0]:
                self.db.write(terms, fresh)
            if old:
                self.db.write(terms, [{**r, "removed": self.target} for r in old])
        c.delete(terms, filter=f"kind == 1 and added == {self.target}")

    def publish(self) -> Manifest:
        self._drain()
        if self.part is None:
            self._write_df_changes()
        self._fold_df_changes()
        counts = MilvusStore(self.db, self.target)
        self.db.flush()
        n = counts.counts()
        manifest = Manifest(
            FORMAT_VERSION,
            self.target,
            self.config.model,
            self.embedder.dimension,
            n["documents"],
            n["passages"],
            n["sentences"],
            datetime.now(UTC).isoformat(timespec="seconds"),
            vector_backend(self.embedder.backend),
            model_version(self.config.model),
        )
        self.db.publish(manifest)
        self.db.client.delete(self.db.meta, filter='key like "part-%" or key == "build"')
        oldest = self.target - self.config.keep_versions
        for name in self.db.versioned:
            self.db.client.delete(name, filter=f"removed != 0 and removed <= {oldest}")
        return manifest
