"""The index: what a question is answered from, on one of two engines, and how it is built.

- `base`: the interface every engine offers (`Index`, `IndexStore`), the manifest, the errors;
- `factory`: which engine serves (`open_index`, `published_version`);
- `files`: the files engine, a folder per version (`store`: SQLite, `vectors`: FAISS,
  `lexical`: BM25, `layers`: the base-plus-delta files the last two share);
- `milvus/`: the Milvus engine (`schema`, `read`, `build`);
- `build`: bringing the index up to the corpus, on either engine, and publishing the next version.
"""

from qa.index.base import (
    FORMAT_VERSION,
    Rankings,
    CorpusMissing,
    Index,
    IndexBusy,
    IndexDamaged,
    IndexMismatch,
    IndexProblem,
    IndexStore,
    Manifest,
    NoIndex,
    PassageRow,
    SentenceRow,
    TooManyRemovals,
)
from qa.index.build import BuildSummary, ProgressFn, build_index, build_lock, require_corpus, writing
from qa.index.factory import open_index, published_version
from qa.index.files import current_version, version_dir

__all__ = [
    "FORMAT_VERSION",
    "BuildSummary",
    "Rankings",
    "CorpusMissing",
    "Index",
    "IndexBusy",
    "IndexDamaged",
    "IndexMismatch",
    "IndexProblem",
    "IndexStore",
    "Manifest",
    "NoIndex",
    "PassageRow",
    "ProgressFn",
    "SentenceRow",
    "TooManyRemovals",
    "build_index",
    "build_lock",
    "current_version",
    "open_index",
    "published_version",
    "require_corpus",
    "version_dir",
    "writing",
]
