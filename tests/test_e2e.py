"""End to end: `qa serve` as a real process, driven over real HTTP.

An article with a made-up fact is added through the API, answers a question nothing else can,
and is gone again once deleted.
"""

from __future__ import annotations

import shutil

import httpx
import pytest

from qa.index import build_index
from tests.conftest import IBM_QUESTION, SAMPLE, ServeProcess

KEY = "e2e-s3cret"
STARTUP_SECONDS = 60

ARTICLE = {
    "title": "Quillmere Hollow swears in a new mayor",
    "text": (
        "Quillmere Hollow swore in Odalys Brenneke-Fairweather as its new mayor on Monday, "
        "after she won the town's election by forty-one votes.\n\n"
        "Brenneke-Fairweather, a former harbour pilot, promised to reopen the old ferry landing "
        "and to repaint the lighthouse before the winter storms."
    ),
    "source": "Quillmere Gazette",
}
QUESTION = "Who is the new mayor of Quillmere Hollow?"
FACT = "Odalys Brenneke-Fairweather"


@pytest.fixture
def server(config, embedder, tmp_path):
    """`qa serve` on a free loopback port, over a temp corpus holding the indexed sample article."""
    shutil.copy(SAMPLE, config.corpus / SAMPLE.name)
    build_index(config, embedder)
    serve = ServeProcess(config, tmp_path / "serve.log", api_key=KEY)
    try:
        health = serve.wait_ready(STARTUP_SECONDS)
        with httpx.Client(base_url=serve.url, timeout=60) as client:
            yield client, health, config
    finally:
        serve.stop()


def test_add_ask_delete_over_http(server):
    client, health, config = server
    assert health["status"] == "ok" and health["documents"] == 1

    # The sample article answers as usual.
    r = client.get("/api/ask", params={"q": IBM_QUESTION})
    assert r.status_code == 200
    assert "lure away customers" in r.json()["answers"][0]["text"]

    # Writing needs the key.
    r = client.post("/api/documents", json=ARTICLE)
    assert r.status_code == 401, r.text
    assert r.headers.get("www-authenticate") == "Bearer"
    r = client.post("/api/documents", json=ARTICLE, headers={"Authorization": "Bearer wrong-key"})
    assert r.status_code == 403, r.text

    # Nothing was added by the refused requests.
    assert client.get("/api/health").json()["documents"] == 1

    auth = {"Authorization": f"Bearer {KEY}"}
    r = client.post("/api/documents", json=ARTICLE, headers=auth)
    assert r.status_code == 201, r.text
    added = r.json()
    [doc] = added["documents"]
    doc_id = doc["id"]
    assert doc["title"] == ARTICLE["title"]
    assert client.get("/api/health").json()["documents"] == 2
    assert (config.corpus / f"{doc_id}.json").exists()  # kept in the corpus, not only in the index

    r = client.get("/api/ask", params={"q": QUESTION})
    assert r.status_code == 200
    result = r.json()
    assert not result["no_answer"], result
    top = result["answers"][0]
    assert top["document_id"] == doc_id
    assert FACT in top["sentence"], top
    assert top["text"] in top["sentence"] and top["title"] == ARTICLE["title"]
    assert result["index_version"] == added["index_version"]

    # Delete needs the key too.
    assert client.delete(f"/api/documents/{doc_id}").status_code == 401
    r = client.delete(f"/api/documents/{doc_id}", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["deleted"] == doc_id
    assert client.get(f"/api/documents/{doc_id}").status_code == 404
    assert not (config.corpus / f"{doc_id}.json").exists()
    assert client.get("/api/health").json()["documents"] == 1

    result = client.get("/api/ask", params={"q": QUESTION}).json()
    assert all(a["document_id"] != doc_id for a in result["answers"])
    assert all(p["document_id"] != doc_id for p in result["passages"])
    assert FACT not in str(result)

    # Deleting it again is a clean 404.
    assert client.delete(f"/api/documents/{doc_id}", headers=auth).status_code == 404
