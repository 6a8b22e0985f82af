"""Background rebuilds from the API and the web form: one at a time per process, with their progress."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from qa.config import Config
from qa.embedding import Embedder
from qa.index import CorpusMissing, TooManyRemovals, build_index
from qa.updates.errors import WriteRejected
from qa.updates.writer import BUILD_WAIT_SECONDS

#: A background rebuild's phases; refused: a guard stopped it (missing corpus, too many removals).
REBUILD_PHASES = ("idle", "reading", "embedding", "publishing", "done", "failed", "refused")


@dataclass
class RebuildStatus:
    phase: str = "idle"  # one of REBUILD_PHASES
    done: int = 0
    total: int = 0
    full: bool = False
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    summary: dict | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Rebuilds:
    """Runs `build_index` over the whole corpus folder in a background thread, one at a time, and
    keeps its status for `/api/index/status` and `/metrics`. The removal guard applies, as to
    `qa index`; a refusal is reported as the phase "refused"."""

    def __init__(self, config: Config, embedder: Embedder) -> None:
        self.config = config
        self.embedder = embedder
        self.status = RebuildStatus()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def start(self, full: bool, allow_removals: bool = False) -> RebuildStatus:
        with self._guard:
            if self._thread is not None and self._thread.is_alive():
                raise WriteRejected("a rebuild is already running; see GET /api/index/status", "conflict")
            self.status = RebuildStatus(phase="reading", full=full, started=_now())
            self._thread = threading.Thread(target=self._rebuild, args=(full, allow_removals), name="qa-rebuild", daemon=True)
            self._thread.start()
            return self.status

    def _rebuild(self, full: bool, allow_removals: bool) -> None:
        def progress(phase: str, done: int, total: int) -> None:
            if phase != "done":
                self.status.phase, self.status.done, self.status.total = phase, done, total

        try:
            summary = build_index(
                self.config,
                self.embedder,
                rebuild=full,
                wait=BUILD_WAIT_SECONDS,
                progress=progress,
                show_progress=True,  # a line per tenth of the work in the server's log
                allow_removals=allow_removals,
            )
            self.status.summary = summary.to_dict()
            self.status.phase = "done"
        except (CorpusMissing, TooManyRemovals) as exc:  # the guards: nothing was published
            self.status.error = str(exc)
            self.status.phase = "refused"
        except Exception as exc:  # reported through the status endpoint
            self.status.error = f"{type(exc).__name__}: {exc}"
            self.status.phase = "failed"
        finally:
            self.status.finished = _now()

    def wait(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(0.1)

    def status_dict(self) -> dict:
        return asdict(self.status)
