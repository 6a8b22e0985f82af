"""The index on disk: immutable versions in `index/vNNNNNN/`, published by swapping `index/CURRENT`.

- `vectors`: the vector segments of one version (base, delta of additions, removed ids);
- `version`: opening a published version, and the errors that say what to do;
- `build`: building the next version and publishing it.
"""

from qa.index.build import BuildSummary, ProgressFn, build_index, build_lock, require_corpus, writing
from qa.index.vectors import VectorIndex
from qa.index.version import (
    FORMAT_VERSION,
    Candidates,
    CorpusMissing,
    IndexBusy,
    IndexDamaged,
    IndexMismatch,
    IndexProblem,
    IndexVersion,
    Manifest,
    NoIndex,
    TooManyRemovals,
    current_version,
    open_index,
    published_version,
    version_dir,
)

__all__ = [
    "FORMAT_VERSION",
    "BuildSummary",
    "Candidates",
    "CorpusMissing",
    "IndexBusy",
    "IndexDamaged",
    "IndexMismatch",
    "IndexProblem",
    "IndexVersion",
    "Manifest",
    "NoIndex",
    "TooManyRemovals",
    "ProgressFn",
    "VectorIndex",
    "build_index",
    "build_lock",
    "current_version",
    "open_index",
    "published_version",
    "require_corpus",
    "version_dir",
    "writing",
]
