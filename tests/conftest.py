"""Shared fixtures: the real bundled model (loaded once), and small corpora written per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qa.config import Config
from qa.embedding import Embedder
from qa.index import build_index
from qa.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "corpus" / "ibm-inspur-partnership.txt"
IBM_QUESTION = "Why did IBM partner with Inspur?"


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    e = Embedder(Config().model)
    e.model  # load once for the whole session
    return e


@pytest.fixture
def config(tmp_path: Path) -> Config:
    (tmp_path / "corpus").mkdir()
    return Config.load(corpus=tmp_path / "corpus", index=tmp_path / "index")


@pytest.fixture
def sample_config(config: Config) -> Config:
    shutil.copy(SAMPLE, config.corpus / SAMPLE.name)
    return config


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory, embedder) -> Config:
    """The sample corpus, indexed once for the tests that only read it."""
    root = tmp_path_factory.mktemp("sample")
    (root / "corpus").mkdir()
    shutil.copy(SAMPLE, root / "corpus" / SAMPLE.name)
    cfg = Config.load(corpus=root / "corpus", index=root / "index")
    build_index(cfg, embedder)
    return cfg


@pytest.fixture(scope="session")
def sample_pipeline(sample_index, embedder) -> Pipeline:
    return Pipeline(sample_index, embedder)


def write_article(folder: Path, name: str, title: str, *paragraphs: str, date: str | None = None) -> Path:
    path = folder / name
    parts = [title] + ([date] if date else []) + list(paragraphs)
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`qa serve` as a real process on a free loopback port."""

    def __init__(self, cfg: Config, api_key: str | None = None) -> None:
        import os
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "QA_CORPUS": str(cfg.corpus), "QA_INDEX": str(cfg.index)}
        if api_key:
            env["QA_API_KEY"] = api_key
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qa.cli", "serve", "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def wait_ready(self, timeout: float = 90) -> "ServeProcess":
        import time

        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qa serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("qa serve did not start")

    def kill(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.kill()
        if self.proc.stderr:
            self.proc.stderr.close()


class ThreadServer:
    """The app served by uvicorn in a background thread: real HTTP, shared model, quick to start."""

    def __init__(self, app) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ThreadServer":
        import time

        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
