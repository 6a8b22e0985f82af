"""Consistency on Milvus, stated and kept: every read names its level, and the build lease lets one
builder publish (on Milvus Lite in a file here; tests/test_fleet.py runs it across processes)."""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path

import pytest

from qa.config import Config
from qa.index import IndexBusy, build_index, build_lock, open_index
from qa.index.milvus.lease import Lease, LeaseLost
from qa.index.milvus.schema import Milvus
from qa.models import Document

MILVUS = Path(__file__).resolve().parents[2] / "qa" / "index" / "milvus"
READS = {"query", "search", "get", "query_iterator", "hybrid_search"}


def unstated_reads(source: str) -> list[int]:
    """Lines of Milvus reads (client.query/search/get/..., or one handed to a pool) that state no
    consistency level: neither `consistency_level=` nor a `**level` mapping."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        fn, receiver = node.func, ast.unparse(node.func.value)
        handed = fn.attr == "submit" and node.args and isinstance(node.args[0], ast.Attribute) and node.args[0].attr in READS
        direct = fn.attr in READS and (receiver.endswith("client") or receiver == "c")
        if (handed or direct) and not any(k.arg in ("consistency_level", None) for k in node.keywords):
            lines.append(node.lineno)
    return lines


def test_every_milvus_read_states_its_consistency_level() -> None:
    found = {p.name: unstated_reads(p.read_text()) for p in MILVUS.glob("*.py")}
    assert sum(len(v) for v in found.values()) == 0, found
    assert unstated_reads("c.query('m', filter='x')\npool.submit(c.search, 'm', data=[])") == [1, 2]  # the scan finds them


@pytest.fixture
def milvus_config(sample_config: Config, tmp_path) -> Config:
    return sample_config.replace(milvus_uri=str(tmp_path / "milvus.db"), milvus_lease_seconds=1.5)


def test_a_builder_that_lost_its_lease_does_not_publish(milvus_config: Config, embedder) -> None:
    build_index(milvus_config, embedder)
    db = Milvus(milvus_config)
    stalled = Lease(db, seconds=1.5)
    assert stalled.try_acquire() is None  # held, never renewed: a builder that stalled
    with pytest.raises(IndexBusy, match="another build holds the build lease"):
        build_index(milvus_config.replace(index=milvus_config.index.parent / "elsewhere"), embedder)
    time.sleep(1.6)
    other = Lease(db, seconds=1.5).acquire()  # it expired: another builder takes the lease
    try:
        with pytest.raises(LeaseLost, match="gone|expires|another builder"):
            stalled.check()
        manifest = open_index(milvus_config).manifest
        with pytest.raises(LeaseLost):
            db.publish(manifest.__class__(**{**manifest.to_dict(), "version": 9}), stalled.check)
        assert open_index(milvus_config).version == manifest.version  # nothing published
    finally:
        other.release()


def contend(db: Milvus, claimants: int, rounds: int) -> None:
    """`claimants` leases claimed at once, `rounds` times: each time exactly one holds it."""
    for _ in range(rounds):
        leases = [Lease(db, seconds=30) for _ in range(claimants)]
        barrier, won = threading.Barrier(len(leases)), []

        def claim(lease: Lease) -> None:
            barrier.wait()
            if lease.try_acquire() is None:
                won.append(lease)

        threads = [threading.Thread(target=claim, args=(lease,)) for lease in leases]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(won) == 1, [lease.token for lease in won]
        won[0].release()


def test_contending_claims_leave_exactly_one_holder(milvus_config: Config) -> None:
    db = Milvus(milvus_config)
    db.ensure_meta()
    contend(db, claimants=6, rounds=3)


def test_a_build_holds_the_lease_only_while_it_runs(milvus_config: Config, embedder) -> None:
    lock = build_lock(milvus_config, 0)
    try:
        rows = Lease(Milvus(milvus_config)).rows()
        assert [r.state for r in rows] == ["held"]
    finally:
        lock.release()
    assert Lease(Milvus(milvus_config)).rows() == []
    build_index(milvus_config, embedder, upserts=[Document("a", "A", "Report a.")], deletes=[])
    assert Lease(Milvus(milvus_config)).rows() == []
