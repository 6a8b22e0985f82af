"""Running the encoders: trained layers on the bundled model, its ONNX export, and the sessions.

The retriever, the span reader and the reranker are each the bundled all-MiniLM-L6-v2 with trained
layers (and a head) shipped alone, in fp16: `trained_model` puts a shipped layers file on the
bundled model as any transformers class, and `overlaid_model` writes that as a model folder for
sentence-transformers. On the ONNX backends a model is exported once (`export_onnx`), and its
int8 twin quantised once, into `Config.cache`, keyed by the files it is made of (`files_key`), so
export happens once per machine and offline (`cached_onnx`); `onnx_session` runs the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

#: transformers' fast tokenizer sets padding and truncation on the shared Rust tokenizer at each
#: call, so two threads at once can run with each other's settings (an unpadded batch, a
#: truncation error). Tokenizing is a small part of a question: every transformers tokenizer call
#: of the readers and the reranker takes this lock, one at a time.
TOKENIZING = threading.Lock()


# --------------------------------------------------------------------------------------- trained layers


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings (a base model has no head of the class asked for: that is expected)
    and loading bars (one per load would clutter `qa ask`) off while loading."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def trained_model(base: str | Path, layers: Path, model_class, **kwargs):
    """`model_class` (a transformers class, `kwargs` to its `from_pretrained`) loaded from the
    bundled `base` model folder, with the trained weights in the `layers` safetensors file (which
    ship alone, in fp16) put over its own, in fp32 and eval mode. A weight the model does not have
    is refused: the file was made for another class."""
    from safetensors.torch import load_file

    with quiet_transformers():
        model = model_class.from_pretrained(str(base), **kwargs)
    trained = {k: v.float() for k, v in load_file(str(layers)).items()}
    unknown = sorted(set(trained) - set(model.state_dict()))
    if unknown:
        raise ValueError(f"{layers}: weights the model does not have, e.g. {unknown[:3]}")
    model.load_state_dict(trained, strict=False)
    model.eval()
    return model


def overlaid_model(base: Path, layers: Path, parent: Path) -> Path:
    """A model folder under `parent`, assembled once per machine: the `base` model's files with its
    weights overlaid by the trained `layers` (`trained_model` on the base's transformer)."""
    from filelock import FileLock

    target = parent / f"{base.name}-{files_key(base, layers)}"
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / ".lock")):
        if (target / "model.safetensors").exists():
            return target
        from safetensors.torch import save_file
        from transformers import AutoModel

        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("model.safetensors", "pytorch_model.bin", "onnx", "*.onnx"))
        model = trained_model(base, layers, AutoModel)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


# --------------------------------------------------------------------------------------- file keys


def files_key(*paths: Path) -> str:
    """A key that changes when any of these files (or the files in these folders) changes."""
    key = hashlib.sha256()
    for path in paths:
        for p in sorted(path.iterdir()) if path.is_dir() else [path]:
            if p.is_file():
                st = p.stat()
                key.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return key.hexdigest()[:16]


@cache
def content_hash(files: tuple[tuple[str, int, int], ...]) -> str:
    """sha256 of the files' bytes, once a process for each (path, size, mtime)."""
    digest = hashlib.sha256()
    for path, _, _ in files:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------- ONNX


def exported_model(folder: Path, cache: Path, quantize: bool) -> Path:
    """The ONNX file for a model folder's transformer, exported (and quantised) on first use under `cache`."""
    return cached_onnx(cache / "onnx" / f"{folder.name}-{files_key(folder)}", quantize, lambda out: _export(folder, out))


def cached_onnx(target: Path, quantize: bool, export: Callable[[Path], None], keep_float: str = "") -> Path:
    """`target`/model.onnx, made by `export` on first use, and with `quantize` its dynamic int8 twin.

    `keep_float`, a regular expression, names the MatMul nodes the int8 twin leaves in fp32 (where
    int8 rounding of outlying activations costs accuracy); it is part of the twin's file name.
    A lock and atomic renames keep concurrent processes from seeing half-written files, so export
    happens once per machine (and offline: it only reads local weights).
    """
    from filelock import FileLock

    tag = f"-{hashlib.sha256(keep_float.encode()).hexdigest()[:8]}" if keep_float else ""
    fp32, int8 = target / "model.onnx", target / f"model-int8{tag}.onnx"
    wanted = int8 if quantize else fp32
    if wanted.exists():
        return wanted
    target.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target / ".lock")):
        if not fp32.exists():
            tmp = fp32.with_suffix(f".tmp{os.getpid()}")
            export(tmp)
            os.replace(tmp, fp32)
        if quantize and not int8.exists():
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            graph = onnx.load(str(fp32), load_external_data=False).graph
            floats = [n.name for n in graph.node if keep_float and n.op_type == "MatMul" and re.search(keep_float, n.name)]
            tmp = int8.with_suffix(f".tmp{os.getpid()}")
            quantize_dynamic(
                fp32, tmp, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"], nodes_to_exclude=floats
            )
            os.replace(tmp, int8)
    return wanted


def onnx_session(path: Path):
    """An ONNX Runtime session on all cores whose idle threads sleep instead of spinning: a
    question's model run is followed by FAISS and SQLite work, which spinning threads would starve.
    Its `run` may be called from several threads at once."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export(folder: Path, out: Path) -> None:
    """Exports the transformer (token ids in, token states out) with torch's ONNX exporter."""
    import torch
    from transformers import AutoModel

    class Transformer(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    export_onnx(Transformer(AutoModel.from_pretrained(str(folder)).eval()), out, ["last_hidden_state"])


def export_onnx(module, out: Path, outputs: list[str]) -> None:
    """Traces a BERT-style module (ids, mask, token types in) to ONNX with dynamic batch and length."""
    import torch

    example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in _ONNX_INPUTS)
    axes = {name: {0: "batch", 1: "tokens"} for name in (*_ONNX_INPUTS, *outputs)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes: the axes are declared dynamic
        torch.onnx.export(
            module.eval(),
            example,
            str(out),
            input_names=list(_ONNX_INPUTS),
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
