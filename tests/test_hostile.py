"""Hostile input: random bytes and odd encodings for the reader, generated requests for the API,
path traversal in ids and file names."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qa.config import Config
from qa.corpus import SUFFIXES, CorpusError, parse_bytes, read_corpus
from qa.index import build_index
from qa.models import Document
from qa.passages import PassageSplitter
from qa.service import create_app
from tests.conftest import SAMPLE

KEY = "hostile-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ENCODINGS = ["utf-8", "utf-16", "utf-16-le", "latin-1", "cp1252", "cp1251", "shift_jis", "gb18030", "koi8-r"]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4096), suffix=st.sampled_from(sorted(SUFFIXES)))
def test_random_bytes_are_errors_not_crashes(data, suffix):
    try:
        docs = parse_bytes(data, f"random{suffix}")
    except CorpusError as exc:
        assert str(exc)
        return
    for d in docs:
        assert isinstance(d.text, str) and d.text.strip() and d.id


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=1, max_size=2000), encoding=st.sampled_from(ENCODINGS), suffix=st.sampled_from([".txt", ".md", ".html"]))
def test_odd_encodings_decode_or_are_reported(text, encoding, suffix):
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        data = text.encode(encoding, errors="replace")
    try:
        docs = parse_bytes(data, f"odd{suffix}")
    except CorpusError:
        return
    assert all(isinstance(d.title, str) for d in docs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=3000))
def test_splitting_any_text_keeps_offsets(embedder, text):
    splitter = PassageSplitter(embedder.count_tokens, embedder.split_tokens, 64, 3, 1)
    doc = Document(id="d", title="T", text=text)
    for p in splitter.split(doc):
        assert doc.text[p.start : p.end] == p.text
        for s in p.sentences:
            assert 0 <= s.start <= s.end <= len(p.text)


def test_huge_empty_and_binary_files(tmp_path):
    (tmp_path / "huge.txt").write_text("Huge\n\n" + ("The same long line of news text again. " * 40 + "\n\n") * 2000)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "zeros.md").write_bytes(b"\x00" * 10_000)
    (tmp_path / "png.html").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    report = read_corpus(tmp_path)
    assert [d.id for d in report.documents] == ["huge.txt"]
    assert {s.path for s in report.skipped} == {"empty.txt", "zeros.md", "png.html", "deep.json"}


# The app exists at import time, for schemathesis to read its schema; its index is built by the fixture.
HOSTILE_ROOT = Path(tempfile.mkdtemp(prefix="qa-hostile-"))
HOSTILE_CONFIG = Config.load(corpus=HOSTILE_ROOT / "corpus", index=HOSTILE_ROOT / "index", api_key=KEY, max_body_bytes=100_000)
HOSTILE_APP = create_app(HOSTILE_CONFIG)
schema = schemathesis.openapi.from_asgi("/openapi.json", HOSTILE_APP)


@pytest.fixture(scope="module")
def hostile_app(embedder):
    HOSTILE_CONFIG.corpus.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE, HOSTILE_CONFIG.corpus / SAMPLE.name)
    build_index(HOSTILE_CONFIG, embedder)
    yield HOSTILE_APP, HOSTILE_CONFIG
    shutil.rmtree(HOSTILE_ROOT, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_never_get_a_server_error(hostile_app, case):
    for headers in (None, AUTH):
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])


def test_ids_and_file_names_cannot_escape_the_corpus(hostile_app, tmp_path):
    app, cfg = hostile_app
    outside = cfg.corpus.parent
    before = set(outside.rglob("*"))
    with TestClient(app) as c:
        for name in ["../escape.txt", "..\\..\\escape.txt", "/etc/passwd.txt", "....//x.txt", ".hidden.txt", "a/../../b.md"]:
            r = c.post(
                "/api/documents", headers=AUTH, files={"file": (name, b"Title\n\nSome text that is long enough to index.", "text/plain")}
            )
            assert r.status_code in (201, 422), (name, r.text)
        r = c.post("/api/documents", headers=AUTH, json={"id": "../../../tmp/evil", "title": "Evil", "text": "Text of the evil article."})
        assert r.status_code == 201
        for path in ["/api/documents/..%2F..%2Fetc%2Fpasswd", "/api/documents/%2E%2E/%2E%2E/x"]:
            assert c.get(path).status_code == 404
            assert c.delete(path, headers=AUTH).status_code == 404
    created = set(outside.rglob("*")) - before
    assert all(cfg.corpus.resolve() in p.resolve().parents or str(p.resolve()).startswith(str(cfg.index.resolve())) for p in created), (
        created
    )
    assert not (outside / "escape.txt").exists() and not (outside.parent / "escape.txt").exists()
