"""Shared fixtures: the real bundled model (loaded once), and small corpora written per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qa.config import Config
from qa.embedding import Embedder
from qa.index import build_index
from qa.models import Filters
from qa.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "corpus" / "ibm-inspur-partnership.txt"
IBM_QUESTION = "Why did IBM partner with Inspur?"
SAMPLE_QUESTIONS = (IBM_QUESTION, "Which chips would Inspur use in its servers?", "What did Chinese banks use?")


@pytest.fixture(scope="session", autouse=True)
def milvus_logs_stay_in_the_test_folder(tmp_path_factory) -> None:
    """Milvus Lite's engine logs through glog, to $TMPDIR or /tmp, a few files per engine started:
    a test run's go to its own temporary folder (`make test` also gives the run a TMPDIR of its own)."""
    import os

    os.environ.setdefault("GLOG_log_dir", str(tmp_path_factory.mktemp("milvus-logs")))


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    e = Embedder.from_config(Config.load())
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


def answer_spans(cfg: Config, embedder: Embedder, question: str, filters: Filters | None = None) -> list[tuple]:
    """The answers' texts, documents and offsets: what both engines must agree on."""
    result = Pipeline(cfg, embedder).ask(question, filters=filters)
    return [(a.text, a.document_id, a.start, a.end, a.document_start, a.sentence_start) for a in result.answers]


@pytest.fixture(params=["files", "milvus"])
def engine(request, sample_config: Config, tmp_path: Path) -> Config:
    """The sample corpus's configuration on each engine: the files under QA_INDEX, and Milvus Lite."""
    return sample_config.replace(milvus_uri=str(tmp_path / "milvus.db")) if request.param == "milvus" else sample_config


#: Three independent reports of one fact, worded differently (copies would count once).
HARBOUR_REPORTS = {
    "wire": "The new harbour master of Quillport is Alva Brenning, the port authority said on Monday.",
    "daily": "Quillport's harbour master is now Alva Brenning, who starts work after thirty years at sea.",
    "weekly": "Fishermen welcomed Alva Brenning, named harbour master of Quillport last week by the council.",
}
HARBOUR_QUESTION = "Who is the harbour master of Quillport?"
#: One wire story; `write_wire_copies` writes it and a copy with a line added.
WIRE_STORY = "The new harbour master of Quillport is Alva Brenning, the port authority said on Monday in a statement."


def write_harbour_reports(folder: Path) -> None:
    for name, text in HARBOUR_REPORTS.items():
        write_article(folder, f"{name}.txt", f"Harbour news from the {name} desk", text)


def write_wire_copies(folder: Path) -> None:
    write_article(folder, "wire.txt", "Harbour master named", WIRE_STORY)
    write_article(folder, "wire-copy.txt", "Harbour master named (AP)", WIRE_STORY + " Reporting by the wire desk.")


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
    """`qa serve` as a real process on a free loopback port, configured by flags only; logs to `log`."""

    def __init__(
        self, cfg: Config, log: Path, api_key: str | None = None, args: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> None:
        import os
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")} | (env or {})
        if api_key:
            env["QA_API_KEY"] = api_key
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "qa.cli",
                    "serve",
                    "--corpus",
                    str(cfg.corpus),
                    "--index",
                    str(cfg.index),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *args,
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 90) -> dict:
        """Waits for /api/health; returns it."""
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"`qa serve` exited with {self.proc.returncode}:\n{self.log.read_text(errors='replace')}")
            try:
                r = httpx.get(f"{self.url}/api/health", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"`qa serve` did not answer within {timeout:.0f}s:\n{self.log.read_text(errors='replace')}")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a crash."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class ThreadServer:
    """The app served by uvicorn in a background thread: real HTTP, shared model, quick to start."""

    def __init__(self, app) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> ThreadServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
