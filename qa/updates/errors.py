"""Why a change to the corpus was not made, by kind (the service gives each its HTTP status)."""

from __future__ import annotations

from typing import Literal

#: invalid: the article cannot be read; unsupported: not a file type the corpus takes; missing: no
#: such document; conflict: it clashes with what is there; busy: another build holds the lock.
Kind = Literal["invalid", "unsupported", "missing", "conflict", "busy"]


class WriteRejected(Exception):
    """A change that cannot be made, with a message a person can act on and its `kind`."""

    def __init__(self, message: str, kind: Kind = "invalid") -> None:
        super().__init__(message)
        self.kind = kind
