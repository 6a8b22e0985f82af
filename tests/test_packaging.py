"""The project as a user gets it: a wheel installed outside the repo, a README that matches the code, tidy code."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from qa.config import Config, settings_page, settings_table, with_settings_table
from tests.conftest import IBM_QUESTION, ROOT, SAMPLE, free_port


def test_readme_table_of_user_settings_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_table("user") in readme
    assert with_settings_table(readme) == readme, "the README's settings table is stale: run `make settings`"


def test_readme_is_a_short_guide_whose_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10_000, "the README is a user's guide of at most 10 KB: move detail to docs/"
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_docs_settings_page_is_current() -> None:
    assert (ROOT / "docs" / "settings.md").read_text() == settings_page(), "docs/settings.md is stale: run `make settings`"


def test_settings_page_lists_every_setting_by_tier_with_its_default() -> None:
    page = settings_page()
    for f in dataclasses.fields(Config):
        assert page.count(f"| `QA_{f.name.upper()}` |") == 1, f.name
    assert f"| `QA_ANSWER_THRESHOLD` | {Config().answer_threshold} |" in page
    assert "| `QA_API_KEY` | unset |" in page
    assert f"| `QA_SPAN_PASSAGE_WEIGHT` | {Config().span_passage_weight} (fitted) |" in page
    assert page.index("## User settings") < page.index("`QA_CORPUS`") < page.index("## Engine knobs") < page.index("`QA_BATCH_SIZE`")
    assert page.index("## Fitted to the shipped weights") < page.index("`QA_WEIGHT_DENSE`")


def qa_imports() -> dict[str, set[str]]:
    """Each module of qa/ and the qa modules it imports, read from its source: imports inside
    functions included (they hide a cycle from a test that only imports modules)."""
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in (ROOT / "qa").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
                for alias in node.names:  # `from qa.index import milvus` imports the subpackage
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                    if target in files:
                        edges.add(target)
        edges.discard(module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle_between_qa_modules() -> None:
    """Read statically, function-level imports included: no qa module reaches itself."""
    cycle = find_cycle(qa_imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_sees_imports_inside_functions() -> None:
    graph = qa_imports()
    assert "qa.index.milvus" in graph["qa.index.factory"] and "qa.index.base" in graph["qa.index.files"]
    assert find_cycle({**graph, "qa.index.base": graph["qa.index.base"] | {"qa.index.factory"}}) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_every_qa_module_imports() -> None:
    modules = sorted(qa_imports())
    script = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    done = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-800:]


@pytest.mark.slow
def test_wheel_runs_index_ask_and_the_web_page_outside_the_repo(tmp_path: Path) -> None:
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = dist.glob("qa-*.whl")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    shipped_files = (
        "qa/web/templates/index.html",
        "qa/web/static/style.css",
        "qa/reader_weights/top_layers.safetensors",
        "qa/reranker_weights/reranker.safetensors",
        "qa/retriever_weights/encoder_layers.safetensors",  # the default embedding model's layers
    )
    for shipped in shipped_files:
        assert (site / shipped).is_file(), f"the wheel lacks {shipped}"
    assert not (site / "training").exists() and not (site / "tests").exists()

    (work / "corpus").mkdir(parents=True)
    shutil.copy(SAMPLE, work / "corpus" / SAMPLE.name)
    # The installed package comes first on the path; the repo is nowhere on it, and is not the working folder.
    env = {**os.environ, "PYTHONPATH": str(site), "QA_BACKEND": "torch", "HF_HUB_OFFLINE": "1"}
    env.pop("QA_WEB", None)
    qa = [sys.executable, "-m", "qa.cli"]

    where = subprocess.run(
        [*qa[:1], "-c", "import qa, qa.config as c; print(qa.__file__); print(c.Config.load().web)"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
    )
    package_file, web = where.stdout.split()
    assert Path(package_file).is_relative_to(site) and Path(web).is_relative_to(site), where.stdout

    indexed = subprocess.run([*qa, "index"], capture_output=True, text=True, cwd=work, env=env)
    assert indexed.returncode == 0, indexed.stderr[-2000:]
    assert "1 added" in indexed.stdout
    asked = subprocess.run([*qa, "ask", IBM_QUESTION, "--json"], capture_output=True, text=True, cwd=work, env=env)
    assert asked.returncode == 0, asked.stderr[-2000:]
    answers = json.loads(asked.stdout)["answers"]
    assert answers and answers[0]["document_id"].startswith("ibm-inspur")
    assert "it/s]" not in indexed.stderr + asked.stderr, "progress bars in a log: they belong on a terminal only"

    port = free_port()
    server = subprocess.Popen([*qa, "serve", "--port", str(port)], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "qa serve did not start"
            time.sleep(0.5)
        page = httpx.get(base + "/", params={"q": IBM_QUESTION}, timeout=60)
        assert page.status_code == 200 and "<mark>" in page.text
        assert httpx.get(base + "/static/style.css", timeout=10).status_code == 200
        assert httpx.get(base + "/add", timeout=10).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
