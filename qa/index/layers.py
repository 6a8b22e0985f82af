"""The layout both kinds of search files of a files-engine version share: an immutable base, a
delta of what was added since, and the ids removed from the base (`vectors.py` for FAISS,
`lexical.py` for BM25's postings).

A build that changes little shares the previous version's base file (a hard link: a base is never
written again once published) and writes only the small delta and removed ids; once those outgrow
`Config.vector_delta_fraction` of the base, a new base is written with everything merged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np


def keeps_base(source: Path | None, changes: int, base_size: int, fraction: float) -> bool:
    """Whether the next version can share this base (read from `source`) and write only its changes:
    the delta's additions plus the removed ids, at most `fraction` of the base."""
    return source is not None and changes <= fraction * base_size


def share(source: Path, path: Path) -> None:
    """`path` becomes the same file as `source`: a hard link, or a copy across file systems."""
    try:
        os.link(source, path)
    except OSError:
        shutil.copy2(source, path)


def save_ids(path: Path, ids: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.asarray(ids, dtype=np.int64), allow_pickle=False)


def load_ids(path: Path) -> np.ndarray:
    """The ids saved at `path`, or none when the version has no such file (its base holds everything)."""
    return np.load(path, allow_pickle=False) if path.exists() else np.zeros(0, np.int64)


def removed_after(removed: np.ndarray, ids: np.ndarray, in_delta: np.ndarray) -> np.ndarray:
    """The base's removed ids once `ids` are removed: those not in the delta (the delta drops its own)."""
    return np.union1d(removed, np.asarray(ids, dtype=np.int64)[~in_delta])
