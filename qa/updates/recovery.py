"""Settling what writes cut short by a crash left in `corpus/.pending/`.

Every write stages its file in `corpus/.pending/` before it indexes (qa/updates/writer.py). A
crash can stop it between any two steps; what it leaves behind is settled under the build lock,
at start-up (`recover`) and before every write:
- `corpus/.pending/<write id>.<file name>`: an article staged by a write. If the published index
  holds exactly its documents, the write got that far: the file goes into `corpus/`; otherwise
  it is dropped, and so is the write.
- `corpus/.pending/<write id>.<file name>.delete`: a delete's tombstone, naming its document ids.
  If the index no longer holds them, the delete was published: the file goes too; otherwise
  the tombstone is dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qa.config import Config
from qa.corpus import CorpusError, read_file
from qa.index import IndexBusy, NoIndex, build_lock, open_index

PENDING = ".pending"
TOMBSTONE = ".delete"


def recover(config: Config, wait: float = 5.0) -> None:
    """Settles what killed writes left in corpus/.pending/. Called at start-up; when another process
    is building, it is left for the next write, which settles leftovers first."""
    if not (config.corpus / PENDING).is_dir():
        return
    try:
        lock = build_lock(config, wait)
    except IndexBusy:
        return
    try:
        settle_pending(config)
    finally:
        lock.release()


def settle_pending(config: Config) -> None:
    """Settles every leftover, oldest first. The caller holds the build lock: under it, nothing in
    .pending/ belongs to a live write."""
    pending = config.corpus / PENDING
    leftovers = sorted(pending.iterdir(), key=lambda p: p.stat().st_mtime_ns) if pending.is_dir() else []
    if not leftovers:
        return
    try:
        index = open_index(config)
    except NoIndex:
        hashes: dict[str, str] = {}
    else:
        try:
            hashes = index.store.document_hashes()
        finally:
            index.close()
    for staged in leftovers:
        _settle(config, staged, hashes)


def _settle(config: Config, staged: Path, hashes: dict[str, str]) -> None:
    write_id, _, name = staged.name.partition(".")
    if staged.name.startswith(".") or not name or not staged.is_file():
        staged.unlink(missing_ok=True)  # a staging write cut short, or something that is not ours
        return
    target = config.corpus / name.removesuffix(TOMBSTONE)
    if name.endswith(TOMBSTONE):
        try:
            ids = json.loads(staged.read_text())["ids"]
        except (ValueError, KeyError, OSError):
            ids = None
        if ids is not None and not any(i in hashes for i in ids):
            target.unlink(missing_ok=True)  # the delete was published; its file goes too
        staged.unlink(missing_ok=True)
        return
    try:
        docs = read_file(staged, name)
        indexed = all(hashes.get(d.id) == d.hash for d in docs)
    except CorpusError:
        indexed = False
    if indexed:
        os.replace(staged, target)
    else:
        staged.unlink(missing_ok=True)
