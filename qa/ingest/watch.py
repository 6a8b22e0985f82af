"""The folder watcher: new, changed and removed files in the corpus folder, indexed in small batches.

`watchfiles` wakes the loop when something under the folder changes (and every `TICK_MS` while
files wait). A changed file is read only once it is *stable*: its modification time is at least
QA_WATCH_STABLE_SECONDS old, and its size and modification time are the same after it was read
as before. A writer that writes slowly keeps moving its file's modification time, so it is not
read half-way; a file renamed into the folder (written elsewhere first) is complete already. Files
named with a leading dot (editors' and downloaders' temporary files) are never read.

Every file ready at one moment goes into one build (`CorpusWriter.writing`: the build lock, with
killed writes settled first, the same step every API write takes), so a burst of 500 files is a few
builds, not 500. The ledger (qa/ingest/ledger.py) records each file as indexed (size, modification
time, document ids): a restarted watcher reads only what changed while it was away, and knows which
documents a removed file held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from watchfiles import Change, watch

from qa.config import REMOVAL_GUARD_MIN_DOCUMENTS, Config
from qa.corpus import SUFFIXES, CorpusError, parse_bytes
from qa.embedding import Embedder
from qa.index import BuildSummary, IndexProblem, NoIndex, build_index, open_index
from qa.ingest.ledger import FileRow, Ledger
from qa.updates import CorpusWriter, WriteRejected

log = logging.getLogger(__name__)
#: How often the loop looks at waiting files when nothing else happens (ms).
TICK_MS = 200


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in Path(rel).parts)


@dataclass
class Batch:
    """What one pass found ready: files to (re)read, files gone."""

    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class Watcher:
    """Keeps the index up with the corpus folder, in batches of stable files, until `stop()`.

    `batches` keeps the files each of the last builds read, `reads` how often each file was read
    into a build, `summaries` the builds' summaries (for the tests and the bench); `skipped` the
    files that could not be read, with why (they are tried again when they change)."""

    def __init__(self, config: Config, embedder: Embedder, ledger: Ledger | None = None) -> None:
        self.config = config
        self.corpus = config.corpus.resolve()
        self.writer = CorpusWriter(config, embedder)
        self.ledger = ledger or Ledger.of(config)
        self.stop_event = threading.Event()
        self.started = time.time()
        self.known: dict[str, FileRow] = {}
        self.pending: set[str] = set()
        self.broken: dict[str, tuple[int, int]] = {}  # unreadable files, by the stat they were read at
        self.skipped: dict[str, str] = {}
        self.summaries: deque[BuildSummary] = deque(maxlen=100)
        self.batches: deque[list[str]] = deque(maxlen=1000)
        self.reads: Counter[str] = Counter()
        self.builds = 0
        self.orphans_checked = False
        self.ready = threading.Event()  # set once the start-up pass is done
        self._thread: threading.Thread | None = None

    # Running.

    def run(self) -> None:
        """Watches until `stop()`: the start-up pass (what changed while no watcher ran), then events."""
        self.known = self.ledger.files()
        self.started = time.time()
        self.pending |= self._scan()
        self.step()
        self.ready.set()
        for changes in watch(
            self.corpus,
            watch_filter=self._wanted,
            stop_event=self.stop_event,
            rust_timeout=TICK_MS,
            yield_on_timeout=True,
            debounce=1600,
            step=50,
            raise_interrupt=False,
        ):
            for change, path in changes:
                self._noticed(change, Path(path))
            self.step()

    def start(self) -> Watcher:
        self._thread = threading.Thread(target=self._run_logged, name="qa-watch", daemon=True)
        self._thread.start()
        return self

    def _run_logged(self) -> None:
        try:
            self.run()
        except Exception:  # the server keeps serving; the log says why the watcher stopped
            log.exception("the folder watcher stopped")

    def stop(self, timeout: float = 30) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _wanted(self, change: Change, path: str) -> bool:
        try:
            rel = Path(path).relative_to(self.corpus).as_posix()
        except ValueError:
            return False
        return not _hidden(rel)

    def _noticed(self, change: Change, path: Path) -> None:
        rel = path.relative_to(self.corpus).as_posix()
        if path.is_dir():  # a folder moved in or out: its files, whatever events were sent for them
            self.pending |= {p.relative_to(self.corpus).as_posix() for p in self._files(path)}
            self.pending |= {k for k in self.known if k.startswith(rel + "/")}
        elif change == Change.deleted and not path.suffix:
            self.pending |= {k for k in self.known if k.startswith(rel + "/")}  # a folder removed
        elif path.suffix.lower() in SUFFIXES:
            self.pending.add(rel)

    def _files(self, folder: Path) -> list[Path]:
        return [
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in SUFFIXES and not _hidden(p.relative_to(self.corpus).as_posix()) and p.is_file()
        ]

    def _scan(self) -> set[str]:
        """Files whose size or modification time differ from the ledger's, and files gone: a
        stat of each file, no reads."""
        found: set[str] = set()
        present: set[str] = set()
        for path in self._files(self.corpus):
            rel = path.relative_to(self.corpus).as_posix()
            present.add(rel)
            known = self.known.get(rel)
            st = path.stat()
            if known is None or (known.size, known.mtime_ns) != (st.st_size, st.st_mtime_ns):
                found.add(rel)
        return found | (set(self.known) - present)

    # One pass.

    def step(self) -> BuildSummary | None:
        """Indexes the waiting files that are ready; returns the build's summary, if there was one."""
        batch = self._ready()
        if not batch.changed and not batch.removed and (self.orphans_checked or self.pending):
            return None
        try:
            summary = self._index(batch)
        except (WriteRejected, IndexProblem, OSError) as exc:  # busy or failing: the files wait for the next pass
            log.error("watch: indexing %d files failed: %s", len(batch.changed) + len(batch.removed), exc)
            self.pending |= set(batch.changed) | set(batch.removed)
            time.sleep(1)
            return None
        # Events arrive while a build runs; a stat of the folder catches any a busy moment lost.
        if summary is not None:
            self.pending |= self._scan() - set(self.broken)
        return summary

    def _ready(self) -> Batch:
        """Takes the stable and the removed files out of `pending`."""
        batch = Batch()
        now = time.time()
        for rel in sorted(self.pending):
            try:
                st = (self.corpus / rel).stat()
            except FileNotFoundError:
                self.pending.discard(rel)
                self.broken.pop(rel, None)
                if rel in self.known:
                    batch.removed.append(rel)
                continue
            stat = (st.st_size, st.st_mtime_ns)
            known = self.known.get(rel)
            if (known is not None and (known.size, known.mtime_ns) == stat) or self.broken.get(rel) == stat:
                self.pending.discard(rel)  # as indexed, or as unreadable as it was
            elif now - st.st_mtime >= self.config.watch_stable_seconds:
                self.pending.discard(rel)
                batch.changed.append(rel)
        return batch

    def _index(self, batch: Batch) -> BuildSummary | None:
        """One build for the batch, under the build lock: files read, ids checked, removals guarded."""
        with self.writer.writing():
            upserts, present, lags = self._read(batch.changed)
            upserts = self._without_clashes(upserts, present, batch.removed)
            kept = {d.id for d in upserts}
            deletes = {i for rel in batch.removed for i in self.known[rel].ids}
            deletes |= {i for rel in present if rel in self.known for i in self.known[rel].ids}
            if not self.orphans_checked and not self.pending:
                deletes |= self._orphans(present, batch.removed)
            deletes -= kept
            if not self._removals_allowed(deletes):
                for rel in batch.removed:  # not tried again by this watcher; `qa index --allow-removals` settles them
                    self.known.pop(rel, None)
                deletes, batch.removed = set(), []
            summary = build_index(self.config, self.writer.embedder, upserts=upserts, deletes=sorted(deletes), locked=True)
        self.ledger.files_indexed(present, batch.removed, lags)
        self.ledger.ingested("watch", summary.added, summary.changed, summary.removed, summary.seconds)
        self.known.update(present)
        for rel in batch.removed:
            self.known.pop(rel, None)
        self.builds += 1
        self.summaries.append(summary)
        self.batches.append(sorted(present))
        self.reads.update(list(present))
        if summary.added or summary.changed or summary.removed:
            log.info("watch: %d files -> %s", len(present) + len(batch.removed), summary.line())
        return summary

    def _read(self, changed: list[str]) -> tuple[list, dict[str, FileRow], dict[str, float]]:
        """The documents of each changed file that stayed still while it was read."""
        upserts = []
        present: dict[str, FileRow] = {}
        lags: dict[str, float] = {}
        for rel in changed:
            path = self.corpus / rel
            try:
                before = path.stat()
                data = path.read_bytes()
                after = path.stat()
            except OSError:
                self.pending.add(rel)  # gone or moving: the next pass sees where it went
                continue
            stat = (after.st_size, after.st_mtime_ns)
            if (before.st_size, before.st_mtime_ns) != stat or len(data) != after.st_size:
                self.pending.add(rel)  # written to while it was read: not stable after all
                continue
            try:
                docs = parse_bytes(data, rel)
            except CorpusError as exc:
                self._skip(rel, str(exc), FileRow(*stat, []))
                continue
            self.broken.pop(rel, None)
            self.skipped.pop(rel, None)
            upserts += docs
            present[rel] = FileRow(*stat, [d.id for d in docs])
            if after.st_mtime >= self.started:
                lags[rel] = max(0.0, time.time() - after.st_mtime)
        return upserts, present, lags

    def _without_clashes(self, upserts: list, present: dict[str, FileRow], removed: list[str]) -> list:
        """`upserts` less the files that hold a document id another file holds (as `qa index` skips
        them); those files are reported and dropped from `present`."""
        owner = {i: p for p, row in self.known.items() if p not in removed and p not in present for i in row.ids}
        for rel, row in list(present.items()):
            clash = next((i for i in row.ids if owner.get(i, rel) != rel), None)
            if clash is not None:
                self._skip(rel, f"duplicate document id {clash!r} (also in {owner[clash]})", row)
                del present[rel]
                continue
            owner |= {i: rel for i in row.ids}
        return [d for d in upserts if d.path in present]

    def _skip(self, rel: str, reason: str, row: FileRow) -> None:
        """A file that cannot be indexed as it is: reported, and tried again when it changes. What it
        held before stays indexed (a half-saved edit must not remove an article)."""
        log.warning("watch: skipped %s: %s", rel, reason)
        self.skipped[rel] = reason
        self.broken[rel] = (row.size, row.mtime_ns)

    def _orphans(self, present: dict[str, FileRow], removed: list[str]) -> set[str]:
        """Documents in the index that no file in the folder holds (their file went while no watcher
        ran): checked once, when every file has been read."""
        self.orphans_checked = True
        if self.broken:
            return set()  # an unreadable file's documents are unknown: nothing is taken for an orphan
        held = {i for p, row in self.known.items() if p not in removed for i in row.ids} | {i for row in present.values() for i in row.ids}
        try:
            index = open_index(self.config)
        except NoIndex:
            return set()
        try:
            return set(index.store.document_hashes()) - held
        finally:
            index.close()

    def _removals_allowed(self, deletes: set[str]) -> bool:
        """The removal guard of `qa index`: a folder emptied or unmounted by mistake must not empty
        the index. Refused removals are logged and left for `qa index --allow-removals`."""
        if not deletes:
            return True
        try:
            index = open_index(self.config)
        except NoIndex:
            return True
        try:
            published = index.store.counts()["documents"]
        finally:
            index.close()
        if published < REMOVAL_GUARD_MIN_DOCUMENTS or len(deletes) <= self.config.max_remove_fraction * published:
            return True
        log.error(
            "watch: refusing to remove %d of %d indexed documents (more than QA_MAX_REMOVE_FRACTION=%g); "
            "run `qa index --allow-removals` if that is meant",
            len(deletes),
            published,
            self.config.max_remove_fraction,
        )
        return False
