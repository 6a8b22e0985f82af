"""Building the next version on Milvus beside the published one, by one worker or several."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from qa.config import Config
from qa.embedding import Embedder, vector_backend
from qa.index import duplicates
from qa.index.base import IndexBusy, IndexMismatch, Manifest, check_manifest
from qa.index.lexical import document_weights
from qa.index.milvus import lease
from qa.index.milvus.read import MilvusStore
from qa.index.milvus.schema import NO_TERMS, TEXT_CHUNK, WRITE_BATCH, Milvus, analyzer, row_id, sentence_id, term_id, visible
from qa.models import Document


class MilvusBuild:
    """Writes version V+1 beside the published V; `publish()` makes it the one readers see.

    With `part=(i, n)` this is worker i of n: it writes only the documents whose id hashes to its
    share, records that its part is in, and the worker that brings in the last part publishes.

    The caller holds the build lease (lease.hold, through qa.index.build_lock): workers of one
    parted build hold it together; the first of them to hold it starts the build (clears what
    killed builds left, records the plan), the others join that plan.
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
        joining = part is not None and self.db.meta_value("build") == plan
        if part is not None and not joining and not lease.held(self.db).first:
            joining = self._await_plan(plan)  # another worker of this build is starting it
        if not joining:  # start clean
            self._clean_unpublished()
            self.db.set_meta("build", plan)
        self.publisher: lease.Lease | None = None  # a parted build's: the worker that publishes
        self.live_hashes: dict[str, str] = {}
        if found:
            manifest = Manifest.parse(found[1])
            if not rebuild:
                check_manifest(manifest, config)
            self.live_hashes = MilvusStore(self.db, self.previous).document_hashes()
        self.old_hashes = {} if rebuild else self.live_hashes
        # BM25: the passages' side is written with the corpus's mean passage length, measured by the
        # first build (or a rebuild) and kept for the incremental ones; term counts change as rows do.
        self.average_length = None if rebuild else (self.db.meta_value("lexical") or {}).get("average_length")
        self.df_changes: dict[int, int] = {}
        self._pending: dict[str, list[dict]] = {}  # rows queued for the next write of their collection
        self.copies = (0, 0)  # (copies, clusters) of the published version, once `publish()` has made them

    def mine(self, doc_id: str) -> bool:
        """Whether this worker writes the document (always, without parts)."""
        if self.part is None:
            return True
        return int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % self.part[1] == self.part[0] - 1

    def _await_plan(self, plan: dict) -> bool:
        """Waits for the worker that started this parted build to record its plan: True once it
        has; False after a lease's length (that worker died first), and this one starts it."""
        deadline = time.monotonic() + self.config.milvus_lease_seconds
        while time.monotonic() < deadline:
            if self.db.meta_value("build") == plan:
                return True
            time.sleep(0.2)
        return False

    def part_done(self) -> bool:
        """Records this part as in; True when every part of the build is and this worker is the
        one to publish (two workers finishing together both see every part in: one wins the
        `publish-V` lease, the other leaves it the publishing)."""
        assert self.part is not None
        self._drain()
        self._write_df_changes()
        self.db.flush()
        self.db.set_meta(f"part-{self.target}-{self.part[0]}", {"done": True})
        if not all(self.db.meta_value(f"part-{self.target}-{i}") for i in range(1, self.part[1] + 1)):
            return False
        publisher = lease.Lease(self.db, f"publish-{self.target}", seconds=self.config.milvus_lease_seconds)
        try:
            publisher.acquire(0)
        except IndexBusy:
            return False
        found = self.db.current()
        if found and found[0] >= self.target:  # the other worker published it already
            publisher.release()
            return False
        self.publisher = publisher
        return True

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
            lengths = [analyzer.passage_terms(doc.title, p.text)[2] for doc, passages in split for p in passages]
            self.average_length = float(np.mean(lengths)) if lengths else 1.0
            self.db.set_meta("lexical", {"average_length": self.average_length})

    def _sparse(self, title: str, text: str) -> dict[int, float]:
        body, title_terms, length = analyzer.passage_terms(title, text)
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
        signature = duplicates.to_hex(duplicates.signature(doc.title, doc.text))
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
                    # The cluster is made by `publish()`, over every part's documents.
                    "cluster": doc.id,
                    "signature": signature if k == 0 else "",
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

    def _recluster(self) -> tuple[int, int]:
        """Every document's near-duplicate cluster made anew from the signatures of the version
        being built (by the publishing worker: it sees every part's documents). A document whose
        cluster changes gets its rows anew in this version, the old ones marked removed."""
        store = MilvusStore(self.db, self.target)
        heads = store.rows_in(self.db.documents, "chunk == 0", ["document_id", "signature", "cluster"])
        clusters = duplicates.cluster_ids(
            {r["document_id"]: duplicates.from_hex(r["signature"]) for r in heads}, self.config.dedup_threshold
        )
        changed = sorted(r["document_id"] for r in heads if clusters[r["document_id"]] != r["cluster"])
        for k in range(0, len(changed), 1000):
            rows = store.rows_in(self.db.documents, f"document_id in {json.dumps(changed[k : k + 1000])}", ["*"])
            fresh = [
                {
                    **r,
                    "key": row_id("document", r["document_id"], r["hash"], r["chunk"], self.target),
                    "cluster": clusters[r["document_id"]],
                    "added": self.target,
                    "removed": 0,
                }
                for r in rows
            ]
            self.db.write(self.db.documents, [{**r, "removed": self.target} for r in rows if r["added"] != self.target])
            self.db.write(self.db.documents, fresh)
        return duplicates.cluster_counts(clusters.values())

    def publish(self) -> Manifest:
        self._drain()
        if self.part is None:
            self._write_df_changes()
        self._fold_df_changes()
        self.db.flush()
        self.copies = self._recluster()
        counts = MilvusStore(self.db, self.target)
        self.db.flush()
        n = counts.counts()
        manifest = Manifest.new(self.target, self.config, self.embedder.dimension, vector_backend(self.embedder.backend), n)
        held = lease.held(self.db)

        def still_held() -> None:  # right before the publishing insert: no other builder may have taken over
            held.check()
            if self.publisher is not None:
                self.publisher.check()

        try:
            self.db.publish(manifest, still_held)
        finally:
            if self.publisher is not None:
                self.publisher.release()
        self.db.client.delete(self.db.meta, filter='key like "part-%" or key == "build"')
        oldest = self.target - self.config.keep_versions
        for name in self.db.versioned:
            self.db.client.delete(name, filter=f"removed != 0 and removed <= {oldest}")
        return manifest
