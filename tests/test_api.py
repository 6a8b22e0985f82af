"""The JSON API through the real application (TestClient), including every documented error."""

import re
import shutil
import time

import pytest
from fastapi.testclient import TestClient

from qa.index import build_index, current_version
from qa.service import create_app
from tests.conftest import IBM_QUESTION, SAMPLE

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def api_config(sample_config, embedder):
    build_index(sample_config, embedder)
    return sample_config.replace(api_key=KEY, max_body_bytes=200_000)


@pytest.fixture
def client(api_config, embedder):
    with TestClient(create_app(api_config, embedder)) as c:
        yield c


def test_ask_post_and_get_return_the_same_object(client):
    posted = client.post("/api/ask", json={"question": IBM_QUESTION, "top_k": 3}).json()
    got = client.get("/api/ask", params={"q": IBM_QUESTION, "top_k": 3}).json()
    for r in (posted, got):
        assert r["question"] == IBM_QUESTION and not r["no_answer"] and len(r["passages"]) == 3
        assert "lure away customers" in r["answers"][0]["text"]
    assert [a["text"] for a in posted["answers"]] == [a["text"] for a in got["answers"]]


def test_ask_with_filters(client):
    r = client.post("/api/ask", json={"question": IBM_QUESTION, "filters": {"document_id": "missing"}}).json()
    assert r["passages"] == [] and r["no_answer"]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"question": ""}, "empty"),
        ({"question": "   "}, "empty"),
        ({"question": "x" * 1001}, "1000"),
        ({"question": "ok?", "top_k": 0}, "top_k"),
        ({"question": "ok?", "top_k": 51}, "top_k"),
        ({"top_k": 3}, "question"),
        ({"question": "ok?", "top_k": "many"}, "top_k"),
    ],
)
def test_bad_questions_are_422_with_a_message(client, body, fragment):
    r = client.post("/api/ask", json=body)
    assert r.status_code == 422
    assert fragment in r.json()["detail"]


def test_as_of_leaves_out_later_articles_through_post_and_get(client):
    before = client.post("/api/ask", json={"question": IBM_QUESTION, "filters": {"as_of": "2014-08-22"}}).json()
    assert before["passages"] == []  # the only article is dated 2014-08-23
    on_the_day = client.get("/api/ask", params={"q": IBM_QUESTION, "as_of": "2014-08-23"}).json()
    assert on_the_day["passages"] and not on_the_day["no_answer"]


@pytest.mark.parametrize("bad", ["2022-02-30", "yesterday", "05/02/2022"])
def test_a_bad_as_of_is_422_with_a_message(client, bad):
    posted = client.post("/api/ask", json={"question": IBM_QUESTION, "filters": {"as_of": bad}})
    got = client.get("/api/ask", params={"q": IBM_QUESTION, "as_of": bad})
    for r in (posted, got):
        assert r.status_code == 422
        assert "as_of" in r.json()["detail"] and "YYYY-MM-DD" in r.json()["detail"]


def test_the_web_form_asks_as_of_a_day(client):
    page = client.get("/", params={"q": IBM_QUESTION}).text
    assert 'name="as_of" type="date"' in page and "No answer found" not in page
    before = client.get("/", params={"q": IBM_QUESTION, "as_of": "2014-08-22"}).text
    assert "No answer found" in before and 'value="2014-08-22"' in before
    bad = client.get("/", params={"q": IBM_QUESTION, "as_of": "someday"})
    assert bad.status_code == 200 and "YYYY-MM-DD" in bad.text


def test_as_of_is_documented_in_the_openapi_schema(client):
    schema = client.get("/openapi.json").json()
    assert "undated" in schema["components"]["schemas"]["Filters"]["properties"]["as_of"]["description"]
    [param] = [p for p in schema["paths"]["/api/ask"]["get"]["parameters"] if p["name"] == "as_of"]
    assert "undated" in param["description"]


def test_get_ask_validates_too(client):
    assert client.get("/api/ask", params={"q": ""}).status_code == 422
    assert client.get("/api/ask").status_code == 422
    assert client.get("/api/ask", params={"q": "x", "top_k": 99}).status_code == 422


def test_health_and_documents(client):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["documents"] == 1 and h["passages"] >= 8 and h["index_version"] == 1
    assert h["model"] == "all-MiniLM-L6-v2-qa"  # the trained default
    page = client.get("/api/documents", params={"limit": 10}).json()
    assert page["total"] == 1 and page["documents"][0]["id"] == SAMPLE.name
    doc = client.get(f"/api/documents/{SAMPLE.name}").json()
    assert doc["title"].startswith("IBM enters") and doc["date"] == "2014-08-23" and "Power8" in doc["text"]
    r = client.get("/api/documents/nope.txt")
    assert r.status_code == 404 and "nope.txt" in r.json()["detail"]
    assert client.get("/api/documents", params={"limit": 0}).status_code == 422
    assert client.get("/api/documents", params={"offset": 2**63}).status_code == 422  # past SQLite's integers: not a 500
    assert client.get("/api/documents", params={"offset": 2**63 - 1}).json()["documents"] == []


def test_write_endpoints_need_the_key(client):
    article = {"title": "T", "text": "Some text here."}
    r = client.post("/api/documents", json=article)
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    r = client.post("/api/documents", json=article, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403
    assert client.delete(f"/api/documents/{SAMPLE.name}").status_code == 401
    assert client.post("/api/index/rebuild", headers={"Authorization": "Bearer nope"}).status_code == 403


def test_write_endpoints_disabled_without_a_configured_key(sample_config, embedder):
    build_index(sample_config, embedder)
    with TestClient(create_app(sample_config, embedder)) as c:
        r = c.post("/api/documents", json={"title": "T", "text": "x"}, headers=AUTH)
        assert r.status_code == 403 and "QA_API_KEY" in r.json()["detail"]


def test_add_ask_replace_and_delete_an_article(client, api_config):
    fact = "Harriet Okonkwo was elected mayor of Lowmarsh on a promise to rebuild the tidal mill."
    r = client.post(
        "/api/documents",
        headers=AUTH,
        json={"id": "lowmarsh", "title": "Lowmarsh elects a mayor", "text": fact, "date": "2024-03-02", "source": "Marsh Times"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["documents"][0]["id"] == "lowmarsh" and r.json()["index_version"] == 2
    assert (api_config.corpus / "lowmarsh.json").exists()
    answer = client.get("/api/ask", params={"q": "Who was elected mayor of Lowmarsh?"}).json()["answers"][0]
    assert answer["document_id"] == "lowmarsh" and "Okonkwo" in answer["sentence"]
    assert answer["date"] == "2024-03-02"

    r = client.post(
        "/api/documents",
        headers=AUTH,
        json={"id": "lowmarsh", "title": "Lowmarsh elects a mayor", "text": "Peter Quill was elected mayor of Lowmarsh after a recount."},
    )
    assert r.status_code == 201
    assert client.get("/api/health").json()["documents"] == 2
    answer = client.get("/api/ask", params={"q": "Who was elected mayor of Lowmarsh?"}).json()["answers"][0]
    assert "Quill" in answer["sentence"]

    r = client.delete("/api/documents/lowmarsh", headers=AUTH)
    assert r.status_code == 200
    assert not (api_config.corpus / "lowmarsh.json").exists()
    assert client.get("/api/documents/lowmarsh").status_code == 404
    assert client.delete("/api/documents/lowmarsh", headers=AUTH).status_code == 404


def test_upload_a_file(client, api_config):
    text = "Tidal power\n\n5 May 2023\n\nThe Severn tidal lagoon will supply 320 megawatts to Cardiff homes from 2027.\n"
    r = client.post("/api/documents", headers=AUTH, files={"file": ("../../etc/tidal power.txt", text.encode(), "text/plain")})
    assert r.status_code == 201, r.text
    [doc] = r.json()["documents"]
    assert doc["id"] == "tidal-power.txt" and doc["date"] == "2023-05-05"
    assert (api_config.corpus / "tidal-power.txt").exists()  # the path in the name is dropped
    a = client.get("/api/ask", params={"q": "How many megawatts will the Severn lagoon supply?"}).json()["answers"][0]
    assert a["document_id"] == "tidal-power.txt"


def test_uploads_of_bad_files_are_refused_with_the_reason(client):
    r = client.post("/api/documents", headers=AUTH, files={"file": ("x.exe", b"MZ\x00\x00", "application/octet-stream")})
    assert r.status_code == 415
    r = client.post("/api/documents", headers=AUTH, files={"file": ("x.json", b"{broken", "application/json")})
    assert r.status_code == 422 and "invalid JSON" in r.json()["detail"]
    r = client.post("/api/documents", headers=AUTH, json={"title": "", "text": "x"})
    assert r.status_code == 422 and "title" in r.json()["detail"]
    r = client.post("/api/documents", headers={**AUTH, "Content-Type": "text/plain"}, content=b"hello")
    assert r.status_code == 415


def test_bodies_over_the_limit_are_413(client):
    big = {"title": "Big", "text": "word " * 60_000}
    r = client.post("/api/documents", headers=AUTH, json=big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = client.post("/api/documents", headers=AUTH, files={"file": ("big.txt", b"a " * 150_000, "text/plain")})
    assert r.status_code == 413


def test_rebuild_in_the_background_reports_progress(client, api_config):
    assert client.get("/api/index/status").json()["phase"] == "idle"
    shutil.copy(SAMPLE, api_config.corpus / "copy.txt")
    r = client.post("/api/index/rebuild", headers=AUTH, json={"full": True})
    assert r.status_code == 202 and r.json()["full"] is True
    deadline = time.time() + 60
    while time.time() < deadline:
        status = client.get("/api/index/status").json()
        assert status["phase"] in {"reading", "embedding", "publishing", "done"}
        if status["phase"] == "done":
            break
        time.sleep(0.1)
    assert status["phase"] == "done" and status["started"] and status["finished"] and status["error"] is None
    assert status["summary"]["documents"] == 2
    assert client.get("/api/health").json()["index_version"] == current_version(api_config.index) == 2


def test_no_index_is_503(config, embedder):
    with TestClient(create_app(config, embedder)) as c:
        r = c.get("/api/ask", params={"q": IBM_QUESTION})
        assert r.status_code == 503 and r.json()["detail"] == "no index yet: run `qa index`"
        assert c.get("/api/health").json()["status"] == "no index"
        assert "No index yet" in c.get("/", params={"q": IBM_QUESTION}).text


def test_web_page_renders_escaped_answers(client):
    page = client.get("/", params={"q": IBM_QUESTION}).text
    assert re.search(r"<mark>[^<]*lure away customers", page)  # the answer marked inside its sentence
    assert "2014-08-23" in page and "IBM enters into partnership" in page
    page = client.get("/", params={"q": "<script>alert(1)</script>"}).text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    home = client.get("/").text
    assert 'name="q"' in home and "What happened: IBM enters" in home


def test_openapi_documents_the_endpoints_with_examples(client):
    spec = client.get("/openapi.json").json()
    for path in ["/api/ask", "/api/health", "/api/documents", "/api/documents/{doc_id}", "/api/index/rebuild", "/api/index/status"]:
        assert path in spec["paths"], path
    assert "Why did IBM partner with Inspur?" in str(spec["paths"]["/api/ask"])
    assert client.get("/docs").status_code == 200


def test_service_follows_a_version_published_by_another_process(client, api_config, embedder):
    from tests.conftest import write_article

    before = client.get("/api/health").json()["index_version"]
    write_article(
        api_config.corpus, "wharf.txt", "Wharf sold", "The old Pelham wharf was sold to a shipping cooperative for 4 million dollars."
    )
    build_index(api_config, embedder)  # as `qa index` run by hand would
    r = client.get("/api/ask", params={"q": "Who bought the Pelham wharf?"}).json()
    assert r["index_version"] == before + 1
    assert r["passages"][0]["document_id"] == "wharf.txt"
