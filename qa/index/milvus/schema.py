"""The index on Milvus, its layout: collections, row ids, version filters, and the client.

The index on Milvus: documents, passages, sentences, dense vectors and BM25 in one Milvus database.

`QA_MILVUS_URI` chooses it: a path ending in `.db` is Milvus Lite in that file (the engine of the
tests), `http://host:19530` a Milvus server or cluster shared by any number of `qa serve` replicas.

Versions. Every row carries the version that added it (`added`) and the one that removed it
(`removed`, 0 while it is live); version V sees the rows with `added <= V` and `removed` 0 or
above V. A build of V+1 inserts its rows with `added = V+1` and marks the rows it drops with
`removed = V+1`, invisible to readers of V either way; publishing is one insert of a row
`version-<V+1>` into the meta collection (the highest is published). A reader reads it once per
question (a replica of a server: once per poll, `read.VersionWatch`) and filters every query by
it, so it never sees a half-published build nor mixes two versions; a killed build leaves only
rows that no published version sees, which the next build removes first. Rows removed more than
`keep_versions` versions ago are deleted after each publish.

Consistency (docs/scale-out.md, "Consistency"). A Milvus server reads with Bounded consistency
by default: a read may miss writes of the last few seconds. Every read here states its level:
the meta collection (the published version, build plans, leases) and every read a builder makes
are Strong; a replica reads a version's rows at that version's publish timestamp (`ts` in the
`current` row: "Customized" consistency with that guarantee timestamp), so it sees all of the
version the moment it adopts it and waits at most once per version for the server to catch up.
Writes have no level: they are visible to any read whose guarantee timestamp follows them.

Ids are a hash of (document id, content hash, position, version), so what a build writes does
not depend on the order documents are embedded in.

BM25 is the files engine's (qa/index/lexical.py: same analyzer, same formula) as sparse vectors: each
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
import time
from collections.abc import Callable
from typing import Any

from qa.config import Config
from qa.index.base import IndexProblem, Manifest
from qa.index.lexical import Analyzer
from qa.models import Filters

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
# passage's id and its position, so a question reads its sentences in one call. 4: documents carry
# their near-duplicate cluster and MinHash signature (qa/index/duplicates.py), versioned with the row.
SCHEMA = 4
SENTENCE_VECTORS_KEPT = 20_000  # sentence vectors read with their sentences, kept for the reader
DOCUMENTS_KEPT = 100_000  # documents whose cluster a version keeps once read
analyzer = Analyzer()  # BM25's, shared by reading and building
STRONG = "Strong"  # the read sees every write finished before it began; on a server it waits for that (~0.4 s on 2.3.5)
BOUNDED = "Bounded"  # a server's default: may miss the last seconds' writes (common.gracefulTime, 5 s)
CUSTOMIZED = "Customized"  # sees every write before the guarantee timestamp passed with it
# Collections' default level, for any read that would not state its own (every read here does).
DEFAULT_LEVEL = {"meta": STRONG, "data": BOUNDED}


def at(ts: int) -> dict:
    """A read's consistency for a version published at hybrid timestamp `ts` (0: unknown, as on
    Milvus Lite, whose reads see every write anyway): it sees every row the version was made of."""
    return {"consistency_level": CUSTOMIZED, "guarantee_timestamp": ts} if ts else {"consistency_level": STRONG}


def term_id(term: bytes) -> int:
    """A term's dimension in the sparse vectors (31 bits of its hash)."""
    return int.from_bytes(hashlib.blake2b(term, digest_size=4).digest(), "big") >> 1


# Milvus refuses an empty sparse vector; a passage with no terms (only stop words, or none) gets
# this dimension, which no term hashes to and no question asks for.
NO_TERMS = {1 << 31: 1.0}


_clients: dict[tuple[str, str], Any] = {}
clients_lock = threading.Lock()
_loaded: set[tuple[str, str]] = set()  # (uri, prefix) whose collections this process has loaded
# (uri, prefix) -> (version, its `current` value, time.time()) this process published last: its own
# writes are read at once, without waiting for the next poll of the published version.
published: dict[tuple[str, str], tuple[int, dict, float]] = {}


def client(uri: str, token: str):
    """One client per server for the whole process: opening one costs a connection (and, for
    Milvus Lite, starting its engine), and the pipeline asks for the published version per question."""
    with clients_lock:
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


def close_clients(uri: str) -> None:
    """Closes and forgets this process's clients of the server at `uri` (and the publisher's ORM
    connection to it); the next call opens new ones."""
    import warnings

    from pymilvus import connections

    with clients_lock, warnings.catch_warnings():  # (the ORM's connections are deprecated, as in write_timestamp)
        warnings.simplefilter("ignore")
        for key in [k for k in _clients if k[0] == uri]:
            _clients.pop(key).close()
        for alias, _ in connections.list_connections():
            if alias.startswith("qa-publish-") and str(connections.get_connection_addr(alias).get("address")) in uri:
                connections.disconnect(alias)
        for key in [k for k in _loaded if k[0] == uri]:
            _loaded.discard(key)


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
    if filters.as_of:  # as a reader on that day: nothing dated later; an undated article stays in
        clauses.append(f'(date == "" or date <= {json.dumps(filters.as_of)})')
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
        with clients_lock:
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
        rows = self.client.query(self.meta, filter=f"key == {json.dumps(key)}", output_fields=["value"], consistency_level=STRONG)
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
        rows = self.client.query(self.meta, filter='key like "version-%"', output_fields=["key", "value"], consistency_level=STRONG)
        if not rows:  # published by code before the fleet change: one `current` row
            rows = self.client.query(self.meta, filter='key == "current"', output_fields=["key", "value"], consistency_level=STRONG)
        if not rows:
            return None
        data = json.loads(max(rows, key=lambda r: r["key"])["value"])
        return int(data["version"]), data

    def publish(self, manifest: Manifest, check: Callable[[], None] | None = None) -> None:
        """Makes `manifest`'s version the one readers see: one insert of a row `version-<V>` (the
        published version is the highest), which carries a hybrid timestamp later than every row
        of the version (`ts`, read at `at(ts)`). An insert, not an upsert of one `current` row:
        Milvus Lite's upsert is a delete then an insert, and a read between them found no index.
        `check` (the build lease's) runs just before that insert and refuses by raising."""
        self.flush()
        ts = self.write_timestamp()
        if check is not None:
            check()
        value = {**manifest.to_dict(), "ts": ts}
        self.client.insert(self.meta, [{"key": f"version-{manifest.version:012d}", "value": json.dumps(value), "dummy": [0.0, 0.0]}])
        published[(self.config.milvus_uri, self.config.milvus_prefix)] = (manifest.version, value, time.time())
        self.client.delete(self.meta, filter=f'key == "current" or (key like "version-%" and key < "version-{manifest.version - 10:012d}")')
        self.client.flush(self.meta)

    def write_timestamp(self) -> int:
        """A hybrid timestamp after every write finished so far: the server's timestamp of a write
        made now (MilvusClient does not return it; the ORM's MutationResult does). 0 on Milvus Lite,
        which has none to give (its reads see every write)."""
        if self.lite:
            return 0
        import warnings

        from pymilvus import Collection, connections

        alias = f"qa-publish-{abs(hash((self.config.milvus_uri, self.config.milvus_token)))}"
        with warnings.catch_warnings():  # pymilvus 2.6 calls its ORM deprecated; its MilvusClient has no timestamps yet
            warnings.simplefilter("ignore")
            if not connections.has_connection(alias):
                connections.connect(alias, uri=self.config.milvus_uri, token=self.config.milvus_token or "")
            result = Collection(self.meta, using=alias).upsert([{"key": "published-at", "value": "{}", "dummy": [0.0, 0.0]}])
        return int(result.timestamp or 0)

    def flush(self) -> None:
        for name in self.versioned:
            if self.client.has_collection(name):  # (a dense-only index, as on a Milvus 2.3 test server, has fewer)
                self.client.flush(name)

    # Schema.

    def ensure_meta(self) -> None:
        """The meta collection (published version, plans, leases): Strong by default, as every read of it is."""
        from pymilvus import DataType

        c = self.client
        if c.has_collection(self.meta):
            return
        schema = c.create_schema(auto_id=False)
        schema.add_field("key", DataType.VARCHAR, max_length=64, is_primary=True)
        schema.add_field("value", DataType.VARCHAR, max_length=65535)
        schema.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)
        index = c.prepare_index_params()
        index.add_index("dummy", index_type="FLAT", metric_type="L2")
        c.create_collection(self.meta, schema=schema, index_params=index, consistency_level=DEFAULT_LEVEL["meta"])

    def ensure(self, dimension: int) -> None:
        from pymilvus import DataType

        c = self.client
        fresh = not c.has_collection(self.passages)

        def create(name: str, fields: list[tuple], vectors: list[tuple[str, str, str]]) -> None:
            if c.has_collection(name):
                return
            level = DEFAULT_LEVEL["data"]
            schema = c.create_schema(auto_id=False)
            for field in fields:
                schema.add_field(*field[:2], **(field[2] if len(field) > 2 else {}))
            index = c.prepare_index_params()
            for field, kind, metric in vectors:
                index.add_index(field, index_type=kind, metric_type=metric, params=INDEX_PARAMS.get(kind, {}))
            c.create_collection(name, schema=schema, index_params=index, consistency_level=level)

        if fresh and (problem := self.server_problem()):
            raise IndexProblem(problem)
        version = [("added", DataType.INT64), ("removed", DataType.INT64)]
        dense = self.config.milvus_index
        text = {"max_length": 65535}
        short = {"max_length": 1024}
        self.ensure_meta()
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
                ("cluster", DataType.VARCHAR, short),
                ("signature", DataType.VARCHAR, {"max_length": 2048}),
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

    def server_problem(self) -> str | None:
        """Why this server cannot hold the index, before any collection is made: BM25 lives in
        sparse vectors, which Milvus 2.4 added (2.3 accepts the schema and fails on the first write)."""
        if self.lite:
            return None
        quiet = logging.getLogger("pymilvus")
        level, quiet.level = quiet.level, logging.CRITICAL  # Milvus Lite's "unimplemented" comes with a traceback
        try:
            found = str(self.client.get_server_version())
        except Exception:  # noqa: BLE001 - Milvus Lite 2.5 over TCP answers "unimplemented" (and has sparse vectors)
            return None
        finally:
            quiet.setLevel(level)
        numbers = [int(n) for n in found.lstrip("v").split("-")[0].split(".")[:2] if n.isdigit()]
        if len(numbers) == 2 and tuple(numbers) < (2, 4):
            return (
                f"the Milvus server at {self.config.milvus_uri} is {found}: the index needs sparse vectors (its BM25), "
                "which Milvus 2.4 added; use Milvus 2.4 or later (or Milvus Lite 2.5, QA_MILVUS_URI=path.db)"
            )
        return None

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

    def rows(self, collection: str, expr: str, fields: list[str], level: dict | None = None) -> list[dict]:
        """Every row matching `expr` (queries are capped, so this pages through them), read at
        `level` (`at(ts)` of a version; Strong by default: a builder reads what it just wrote)."""
        level = level or {"consistency_level": STRONG}
        if not self.client.query(collection, filter=expr, output_fields=["count(*)"], **level)[0]["count(*)"]:
            return []  # (and Milvus Lite 2.5 fails to read a sparse field from an empty growing segment)
        it = self.client.query_iterator(collection, filter=expr, output_fields=fields, batch_size=PAGE, **level)
        out: list[dict] = []
        try:
            while batch := it.next():
                out.extend(batch)
        finally:
            it.close()
        return out


