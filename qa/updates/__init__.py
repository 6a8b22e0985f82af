"""Changing the index while serving: the corpus writer (add, replace, delete articles), the recovery
of writes a crash cut short, and background rebuilds. Each raises `WriteRejected` with a kind;
the service maps kinds to HTTP statuses (qa/service/app.py)."""

from qa.updates.errors import WriteRejected
from qa.updates.rebuilds import REBUILD_PHASES, Rebuilds, RebuildStatus
from qa.updates.recovery import PENDING, TOMBSTONE, recover, settle_pending
from qa.updates.writer import CorpusWriter, safe_name

__all__ = [
    "PENDING",
    "REBUILD_PHASES",
    "TOMBSTONE",
    "CorpusWriter",
    "RebuildStatus",
    "Rebuilds",
    "WriteRejected",
    "recover",
    "safe_name",
    "settle_pending",
]
