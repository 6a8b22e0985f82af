"""The version protocol on a real Milvus server, whose reads are Bounded by default: Milvus 2.3.5
standalone (`python3 -m venv /tmp/milvus235 && /tmp/milvus235/bin/pip install milvus==2.3.5`, then
QA_TEST_MILVUS_SERVER=/tmp/milvus235/bin/milvus-server, or `milvus-server` on PATH). It has no
sparse vectors, so the project's index is refused there, and the protocol is tested on a dense-only
collection with the project's meta collection, publish and reads. Skipped, with the reason, without it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from qa.config import Config
from qa.index import IndexProblem, build_index
from qa.index.base import Manifest
from qa.index.milvus.schema import BOUNDED, Milvus, at, visible
from qa.models import Document
from tests.index.test_milvus_consistency import contend

SERVER = os.environ.get("QA_TEST_MILVUS_SERVER") or shutil.which("milvus-server")
pytestmark = pytest.mark.skipif(
    not SERVER, reason="no Milvus 2.3 server: pip install milvus==2.3.5 in a venv of its own; QA_TEST_MILVUS_SERVER=its milvus-server"
)
PORT = 19530  # milvus-server's ports are fixed (and 2379, 9091)
DIM = 8


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if listening(PORT):
        pytest.skip(f"port {PORT} is taken (another Milvus?): milvus-server needs it")
    data = tmp_path_factory.mktemp("milvus235")
    with open(data / "server.log", "ab") as log:
        proc = subprocess.Popen([SERVER, "--data", str(data / "data")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not listening(PORT):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"milvus-server did not start:\n{(data / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{PORT}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the wrapper and the engine it started
        proc.wait(30)


def test_the_index_is_refused_on_a_server_without_sparse_vectors(server, tmp_path, embedder) -> None:
    cfg = Config.load(corpus=tmp_path, index=tmp_path / "index", milvus_uri=server, milvus_prefix="refused")
    with pytest.raises(IndexProblem, match=r"sparse vectors .*Milvus 2\.4"):
        build_index(cfg, embedder, upserts=[Document("a", "A", "Report a.")], deletes=[])
    assert not Milvus(cfg).client.has_collection("refused_passages")  # nothing half made


def test_a_reader_right_after_each_publish_reads_all_of_the_new_version(server, tmp_path) -> None:
    """A writer publishes versions (20 rows added, 5 marked removed each); the reader adopts each
    with a Strong read of the published version and counts it at once at the version's timestamp:
    always complete. The same count with the server's default (Bounded) is printed, for contrast."""
    cfg = Config.load(corpus=tmp_path, index=tmp_path / "index", milvus_uri=server, milvus_prefix="dense")
    db = Milvus(cfg)
    db.ensure_meta()
    from pymilvus import DataType

    schema = db.client.create_schema(auto_id=False)
    for name, kind, more in (("id", DataType.INT64, {"is_primary": True}), ("added", DataType.INT64, {}), ("removed", DataType.INT64, {})):
        schema.add_field(name, kind, **more)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    index = db.client.prepare_index_params()
    index.add_index("vector", index_type="HNSW", metric_type="IP", params={"M": 8, "efConstruction": 64})
    db.client.create_collection(db.passages, schema=schema, index_params=index, consistency_level=BOUNDED)
    versions = 6
    expected = {v: 20 + 15 * (v - 1) for v in range(1, versions + 1)}
    done = threading.Event()

    def write() -> None:
        live: list[int] = []
        for v in range(1, versions + 1):
            rows = [{"id": v * 1000 + k, "added": v, "removed": 0, "vector": [1.0] + [0.0] * (DIM - 1)} for k in range(20)]
            db.client.insert(db.passages, rows)
            if v > 1:
                gone = db.client.get(db.passages, ids=live[:5], consistency_level="Strong")
                db.client.upsert(db.passages, [{**r, "removed": v} for r in gone])
                live = live[5:]
            live += [r["id"] for r in rows]
            counts = {"documents": expected[v], "passages": expected[v], "sentences": 0}
            db.publish(Manifest.new(v, cfg, DIM, "float", counts))
            time.sleep(1.5)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    seen, bounded_short, first_ms, then_ms = {}, 0, [], []
    while not done.is_set() or len(seen) < versions:
        found = db.current()
        if found is None or found[0] in seen:
            continue
        v, data = found
        assert data["ts"] > 0  # a server gives the publish its timestamp
        started = time.perf_counter()
        count = db.client.query(db.passages, filter=visible(v), output_fields=["count(*)"], **at(data["ts"]))[0]["count(*)"]
        first_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        db.client.query(db.passages, filter=visible(v), output_fields=["count(*)"], **at(data["ts"]))
        then_ms.append((time.perf_counter() - started) * 1000)
        bounded = db.client.query(db.passages, filter=visible(v), output_fields=["count(*)"], consistency_level=BOUNDED)[0]["count(*)"]
        bounded_short += bounded != expected[v]
        seen[v] = count
        if len(seen) == versions:
            break
    writer.join(60)
    print(f"\n2.3.5: {len(seen)} versions adopted; read at the publish timestamp: first {sorted(first_ms)} ms, then {sorted(then_ms)} ms; "
          f"Bounded reads short of the version: {bounded_short} of {len(seen)}")  # fmt: skip
    assert seen == {v: expected[v] for v in seen} and len(seen) >= versions - 1  # (a fast writer may skip one)


def test_contending_builders_leave_one_lease_holder_on_a_server(server, tmp_path) -> None:
    cfg = Config.load(corpus=tmp_path, index=tmp_path / "index", milvus_uri=server, milvus_prefix="lease")
    db = Milvus(cfg)
    db.ensure_meta()
    contend(db, claimants=4, rounds=2)
