"""One publisher at a time across machines: a build lease kept in the index's own meta collection.

The file lock (`index/.lock`) only keeps builders on one machine apart. On Milvus, a builder also
holds a lease: a row `build:<token>:<n>` of `<prefix>_meta` saying who holds it, in which group,
and until when. A holder never rewrites its row in place: it inserts the next one (n + 1), then
deletes the last; readers take each holder's latest. Milvus Lite's upsert is a delete then an
insert that a read can fall between (a third of reads during a loop of upserts found no row), so
an upserted row would vanish for a moment. Milvus has no compare-and-set, so the lease is won by a claim that sees no rival:

1. the claimant upserts its row in state `claiming`;
2. it reads every lease row with Strong consistency (every write finished before the read began);
3. a live `held` row of another group: busy (refuse, or wait and try again); a live `claiming` row
   of anyone else: a contest, so it deletes its claim, backs off a random moment and tries again;
   no rival: it upserts its row as `held`.

Of two claims, the later one's read follows the earlier one's write, so it sees the earlier claim
(a rival) and withdraws: two claimants never both see no rival. A holder renews its row every
third of the lease's length; a holder that dies stops renewing and its row is ignored once its
expiry has passed. Publishing checks, with a Strong read just before its publishing insert, that
the row is still there, still this holder's and not within a third of its expiry.

Assumptions (docs/scale-out.md): expiry times are the holder's clock, compared with the reader's,
so builders' clocks agree to well under the lease's length (NTP); a holder paused for longer than
the lease (a stopped VM) is told when it next renews or publishes, but a pause between that last
check and the publishing insert itself is not covered: the check and the insert are two calls.

Workers of one parted build (`qa index --part I/N`) share a group, `parts-N`: they hold the lease
together, and the one that finds every part in wins a second lease, `publish-V`, to publish alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from qa.index.base import IndexBusy, IndexProblem

STRONG = "Strong"
CLAIM_SECONDS = 10.0  # how long a claim not yet decided counts
FORGOTTEN_AFTER = 10  # lease lengths after its expiry when anyone may delete a dead holder's row


class LeaseLost(IndexProblem):
    """The build lease expired or was taken over: this builder must not publish."""


@dataclass(frozen=True)
class LeaseRow:
    """One row of the lease: a claim or a holding."""

    key: str
    seq: int
    token: str
    group: str
    state: str  # "claiming" or "held"
    expires: float  # the holder's clock (time.time())
    holder: str  # host:pid, for people
    since: float

    def live(self, now: float) -> bool:
        return self.expires > now


class Lease:
    """A lease named `name` on one index (a `Milvus` of schema.py), taken by `acquire`.

    `group`: holders that may hold it together (the workers of one parted build); None: this
    holder alone. `seconds`: how long a holding lasts without renewal."""

    def __init__(self, db, name: str = "build", group: str | None = None, seconds: float = 30.0) -> None:
        self.db, self.name, self.seconds = db, name, float(seconds)
        self.token = uuid.uuid4().hex
        self.group = group or self.token
        self.key = f"{name}:{self.token}"  # its rows are f"{key}:{seq}"
        self.seq = 0
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.since = 0.0
        self.expires = 0.0
        self.first = False  # no other holder of the group held it when this one won
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lost: str | None = None

    # The rows.

    def rows(self) -> list[LeaseRow]:
        """Every row of this lease, read with Strong consistency; rows of holders dead for long are deleted."""
        found = self.db.client.query(
            self.db.meta, filter=f'key like "{self.name}:%"', output_fields=["key", "value"], consistency_level=STRONG
        )
        now, latest, forgotten = time.time(), {}, []
        for r in found:
            key, _, seq = r["key"].rpartition(":")
            row = LeaseRow(key=key, seq=int(seq), **json.loads(r["value"]))
            if row.expires < now - FORGOTTEN_AFTER * self.seconds and row.key != self.key:
                forgotten.append(r["key"])
            elif row.seq > getattr(latest.get(key), "seq", -1):
                latest[key] = row
        if forgotten:
            self.db.client.delete(self.db.meta, filter=f"key in {json.dumps(forgotten)}")
        return list(latest.values())

    def _write(self, state: str) -> None:
        # A claim is decided in a few calls: one left by a claimant that died blocks others briefly.
        self.expires = time.time() + (self.seconds if state == "held" else min(self.seconds, CLAIM_SECONDS))
        value = {"token": self.token, "group": self.group, "state": state, "expires": self.expires}
        value |= {"holder": self.holder, "since": self.since}
        self.seq += 1
        self.db.client.insert(self.db.meta, [{"key": f"{self.key}:{self.seq}", "value": json.dumps(value), "dummy": [0.0, 0.0]}])
        if self.seq > 1:
            self.db.client.delete(self.db.meta, filter=f"key == {json.dumps(f'{self.key}:{self.seq - 1}')}")

    def _withdraw(self) -> None:
        self.db.client.delete(self.db.meta, filter=f'key like "{self.key}:%"')

    # Taking it.

    def try_acquire(self) -> LeaseRow | None:
        """One attempt: None when won, else the rival that holds it (a contest is retried here,
        after a random pause, until one claimant wins or someone holds it)."""
        while True:
            self.since = time.time()
            self._write("claiming")
            now = time.time()
            rivals = [r for r in self.rows() if r.key != self.key and r.live(now)]
            holding = [r for r in rivals if r.state == "held" and r.group != self.group]
            if holding:
                self._withdraw()
                return holding[0]
            if any(r.state == "claiming" for r in rivals):
                self._withdraw()
                time.sleep(random.uniform(0.05, 0.5))  # both withdrew: the first to come back wins
                continue
            self.first = not any(r.state == "held" for r in rivals)
            self._write("held")
            return None

    def acquire(self, wait: float = 0.0) -> Lease:
        """Holds the lease, waiting up to `wait` seconds for a holder to finish; IndexBusy otherwise."""
        deadline = time.monotonic() + wait
        while (rival := self.try_acquire()) is not None:
            if time.monotonic() >= deadline:
                left = rival.expires - time.time()
                raise IndexBusy(
                    f"another build holds the {self.name} lease on Milvus ({self.db.config.milvus_uri}, prefix "
                    f"{self.db.config.milvus_prefix!r}): {rival.holder}, since {time.strftime('%H:%M:%S', time.localtime(rival.since))}, "
                    f"expiring in {left:.0f}s unless renewed; wait for it to finish"
                    + (f" (waited {wait:.0f}s)" if wait > 0 else " or pass --wait SECONDS")
                )
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.name}", daemon=True)
        self._renewer.start()
        return self

    def _renew(self) -> None:
        """Every third of the lease: the row rewritten with a later expiry, if it is still ours."""
        while not self._stop.wait(self.seconds / 3):
            try:
                self.check(margin=0.0)
                self._write("held")
            except LeaseLost as exc:
                self._lost = str(exc)
                return
            except Exception:  # noqa: BLE001 - a server that does not answer: the next renewal tries again
                continue

    def check(self, margin: float | None = None) -> None:
        """Raises LeaseLost unless this holder's row is there, held, and not within `margin`
        seconds (a third of the lease by default) of its expiry, with no other group holding."""
        if self._lost:
            raise LeaseLost(self._lost)
        margin = self.seconds / 3 if margin is None else margin
        now = time.time()
        rows = self.rows()
        mine = next((r for r in rows if r.key == self.key), None)
        if mine is None or mine.state != "held":
            raise LeaseLost(f"the {self.name} lease of this build ({self.holder}) is gone: another builder took it over")
        if mine.expires - now < margin:
            left = mine.expires - now
            raise LeaseLost(f"the {self.name} lease of this build ({self.holder}) expires in {left:.1f}s: not renewed in time")
        if rival := next((r for r in rows if r.group != self.group and r.state == "held" and r.live(now)), None):
            raise LeaseLost(f"another builder ({rival.holder}) holds the {self.name} lease")

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(5)
            self._renewer = None
        with contextlib.suppress(Exception):  # the row then expires on its own
            self._withdraw()


# The leases this process holds, by (uri, prefix): publishing asks for its own.
_held: dict[tuple[str, str], list[Lease]] = {}
_held_lock = threading.Lock()


def hold(db, wait: float, part: tuple[int, int] | None = None) -> Lease:
    """The build lease of `db`'s index, for this process until `release_held`."""
    lease = Lease(db, "build", group=f"parts-{part[1]}" if part else None, seconds=db.config.milvus_lease_seconds)
    lease.acquire(wait)
    with _held_lock:
        _held.setdefault((db.config.milvus_uri, db.config.milvus_prefix), []).append(lease)
    return lease


def held(db) -> Lease:
    """The build lease this process holds on `db`'s index; LeaseLost when it holds none."""
    with _held_lock:
        leases = _held.get((db.config.milvus_uri, db.config.milvus_prefix)) or []
    if not leases:
        raise LeaseLost("publishing on Milvus needs the build lease (qa.index.build_lock), which this process does not hold")
    return leases[-1]


def release_held(lease: Lease) -> None:
    lease.release()
    with _held_lock:
        for leases in _held.values():
            if lease in leases:
                leases.remove(lease)
