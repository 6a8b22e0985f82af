"""The retriever's trained models as the service uses them: the default embedding model is the
bundled one with the shipped layers (qa/retriever_weights/, made by training/dual_encoder.py), and a
question encoder of its own (`QA_QUESTION_ENCODER=FOLDER`) can sit beside the passages' model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qa.config import Config
from qa.embedding import ENCODER_FILE, Embedder, resolve_model


def test_the_default_model_is_the_bundled_one_with_the_shipped_layers_and_asks_for_a_rebuild(sample_config, embedder) -> None:
    """An index of the published model is refused by the trained default (its vectors live in
    another space) with the way out, and `qa index --rebuild` moves the corpus over."""
    from safetensors.numpy import load_file

    from qa.config import BUNDLED_MODEL, DEFAULT_MODEL
    from qa.embedding import RETRIEVER_WEIGHTS, Embedder, resolve_model
    from qa.index import IndexMismatch, build_index, open_index
    from qa.index.files import version_dir

    assert sample_config.model == DEFAULT_MODEL and embedder.name == DEFAULT_MODEL
    folder, base = Path(embedder.path), Path(resolve_model(BUNDLED_MODEL))
    assembled, bundled = load_file(str(folder / "model.safetensors")), load_file(str(base / "model.safetensors"))
    shipped = load_file(str(RETRIEVER_WEIGHTS / ENCODER_FILE))
    k = "encoder.layer.3.attention.self.query.weight"
    assert np.array_equal(assembled[k], shipped[k].astype(np.float32)) and not np.array_equal(assembled[k], bundled[k])
    assert np.array_equal(assembled["embeddings.word_embeddings.weight"], bundled["embeddings.word_embeddings.weight"])

    published = Embedder.from_config(sample_config.replace(model=BUNDLED_MODEL))
    question = "Why did IBM partner with Inspur?"
    assert float((published.embed([question]) @ embedder.embed([question]).T)[0, 0]) < 0.99  # another vector space

    old = build_index(sample_config.replace(model=BUNDLED_MODEL), published)
    # An index of the published model from before weight hashes were recorded still opens with it.
    manifest = version_dir(sample_config.index, old.version) / "manifest.json"
    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "model_version"}))
    open_index(sample_config.replace(model=BUNDLED_MODEL)).close()
    with pytest.raises(IndexMismatch, match=rf"built with model '{BUNDLED_MODEL}'.*qa index --rebuild"):
        open_index(sample_config)
    moved = build_index(sample_config, embedder, rebuild=True)
    assert moved.added == 1
    index = open_index(sample_config)
    assert index.manifest.model == DEFAULT_MODEL
    index.close()


def test_questions_can_go_through_a_question_encoder_of_their_own() -> None:
    cache = Config.load().cache  # the machine's exported models, as the service uses them
    question = "Who leads the survey in Harlow?"
    folder = resolve_model("all-MiniLM-L6-v2-qa", cache)  # any model folder of the same dimension
    paired = Embedder("all-MiniLM-L6-v2", "onnx", cache, question_encoder=folder)
    plain = Embedder("all-MiniLM-L6-v2", "onnx", cache, question_encoder="model")
    assert np.allclose(paired.embed([question]), plain.embed([question]), atol=1e-5)  # passages: the model's
    assert np.allclose(plain.embed_questions([question]), plain.embed([question]), atol=1e-5)
    q_paired = paired.embed_questions([question])
    assert q_paired.shape == (1, 384) and abs(float(np.linalg.norm(q_paired)) - 1) < 1e-4
    assert not np.allclose(q_paired, plain.embed_questions([question]), atol=1e-4)  # a different encoder
    with pytest.raises(ValueError, match="question encoder"):
        Embedder("all-MiniLM-L6-v2", "onnx", cache, question_encoder="/no/such/folder").question_path
    with pytest.raises(ValueError, match="question encoder"):
        Embedder("all-MiniLM-L6-v2", "onnx", cache, question_encoder="tuned").question_path  # removed
