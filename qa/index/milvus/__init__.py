"""The index on Milvus (`QA_MILVUS_URI`): `schema` (collections, ids, the client), `read` (a published
version), `build` (the next one). pymilvus is imported only when a client is made, so this
package imports without the `milvus` extra."""

from qa.index.milvus.build import MilvusBuild
from qa.index.milvus.read import MilvusIndex, MilvusStore, current_milvus_version, open_milvus

__all__ = ["MilvusBuild", "MilvusIndex", "MilvusStore", "current_milvus_version", "open_milvus"]
