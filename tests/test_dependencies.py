"""Dependencies: the environment is the lock, the lock satisfies pyproject.toml, and no code of ours
uses another library's private API (what broke a fresh install on 2026-12-03)."""

from __future__ import annotations

import ast
import os
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import ROOT
from tests.lockfile import LOCK, canonical, installed, locked

#: The folders whose code runs ours: the package, the training scripts, benchmarks and tests.
OURS = ("qa", "training", "bench", "tests")


@pytest.mark.skipif(os.environ.get("UNLOCKED") == "1", reason="make test-latest: newer versions than the lock, on purpose")
def test_the_environment_holds_exactly_the_locked_versions():
    have = installed()
    wrong = {name: (version, have.get(name)) for name, version in locked().items() if have.get(name) != version}
    assert not wrong, f"installed versions differ from {LOCK.name} (locked, installed): {wrong}; run `make setup`"


def test_the_lock_satisfies_every_range_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"], *project["optional-dependencies"]["milvus"]]
    lock = locked()
    for line in wanted:
        req = Requirement(line)
        version = lock.get(canonical(req.name))
        assert version is not None, f"{req.name} is in pyproject.toml but not in {LOCK.name}: run `make lock`"
        assert req.specifier.contains(version, prereleases=True), f"{LOCK.name} pins {req.name}=={version}, outside {req.specifier}"
    assert lock["torch"].endswith("+cpu"), "the lock must hold the CPU build of torch, not PyPI's CUDA one"


def private_uses(source: str, ours: set[str]) -> list[str]:
    """Uses of another library's private names in `source`: an attribute or `getattr`/`hasattr` name
    with one leading underscore that no code of ours defines, and imports of underscored modules or names."""
    found = []
    for node in ast.walk(ast.parse(source)):
        name = ""
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            name = node.attr
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr") and len(node.args) >= 2:
            name = node.args[1].value if isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) else ""
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] not in OURS:
            parts = [*node.module.split("."), *(a.name for a in node.names)]
            if any(_private(part) for part in parts):
                found.append(f"line {node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if any(_private(part) for part in a.name.split("."))]
        if _private(name) and name not in ours:
            found.append(f"line {node.lineno}: {name}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def defined_names(source: str) -> set[str]:
    """Every name a module of ours defines: functions, classes, arguments, assigned names and
    attributes, and attributes set by name (`setattr(obj, "_x", v)`, `obj.__dict__["_x"] = v`)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and isinstance(node.slice, ast.Constant):
            names.add(str(node.slice.value))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and len(node.args) >= 2:
            names.add(str(getattr(node.args[1], "value", "")))
    return names


def sources() -> dict[Path, str]:
    return {p: p.read_text() for folder in OURS for p in sorted((ROOT / folder).rglob("*.py"))}


def test_no_private_api_of_another_library_is_used():
    code = sources()
    ours = set().union(*(defined_names(text) for text in code.values()))
    here = Path(__file__).resolve()
    found = {str(p.relative_to(ROOT)): uses for p, text in code.items() if p != here and (uses := private_uses(text, ours))}
    assert not found, f"private APIs of other libraries: {found}"


def test_the_private_api_check_finds_what_broke_the_build():
    """The retired reader recipe's call (training/train_reader.py until 2026-12-03) and its kin are found;
    our own underscored names and dunders are not."""
    retired = """
import torch._dynamo
from transformers.models.bert import modeling_bert, _helpers
from torch.optim._functional import adamw
def top_forward(model, mask, hidden):
    if hasattr(model.bert, "_create_attention_masks"):
        ext = model.bert._create_attention_masks(attention_mask=mask, embedding_output=hidden)[0]
    return self._own, getattr(model, "_cache"), model.__class__
"""
    assert sorted(private_uses(retired, {"_own"})) == [
        "line 2: import torch._dynamo",
        "line 3: from transformers.models.bert import modeling_bert, _helpers",
        "line 4: from torch.optim._functional import adamw",
        "line 6: _create_attention_masks",
        "line 7: _create_attention_masks",
        "line 8: _cache",
    ]
