"""What a fleet asks a replica: liveness, readiness, and Prometheus metrics."""

from __future__ import annotations

import re
import time

from fastapi.testclient import TestClient

from qa.index import build_index
from qa.service import create_app
from tests.conftest import IBM_QUESTION


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus' text format."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})? (\S+)$", line)
        if m and m.group(1) == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(m.group(3))
    return None


def test_live_ready_and_metrics(sample_config, embedder) -> None:
    build_index(sample_config, embedder)
    app = create_app(sample_config.replace(api_key="k"), embedder)
    assert TestClient(app).get("/readyz").status_code == 503  # the models load in the lifespan, not yet run
    with TestClient(app) as client:
        assert client.get("/livez").json() == {"status": "alive"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["index_version"] >= 1

        assert client.get("/api/ask", params={"q": IBM_QUESTION}).status_code == 200
        unanswerable = client.post("/api/ask", json={"question": "Who won the football World Cup in 1930?"}).json()
        assert client.get("/api/ask", params={"q": ""}).status_code == 422
        text = client.get("/metrics").text
        assert metric(text, "qa_requests_total", endpoint="/api/ask", method="GET", status="200") == 1
        assert metric(text, "qa_requests_total", endpoint="/api/ask", method="GET", status="422") == 1
        assert metric(text, "qa_requests_total", endpoint="/api/ask", method="POST", status="200") == 1
        assert metric(text, "qa_request_seconds_count", endpoint="/api/ask", method="GET") == 2
        assert metric(text, "qa_questions_total") == 2
        assert metric(text, "qa_questions_withheld_total") == (1 if unanswerable["no_answer"] else 0)
        assert metric(text, "qa_index_version") == ready.json()["index_version"]
        assert metric(text, "qa_build_phase", phase="idle") == 1

        assert client.post("/api/index/rebuild", json={"full": True}, headers={"Authorization": "Bearer k"}).status_code == 202
        deadline = time.monotonic() + 120
        while client.get("/api/index/status").json()["phase"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        text = client.get("/metrics").text
        assert metric(text, "qa_build_phase", phase="done") == 1 and metric(text, "qa_build_total") > 0
        assert metric(text, "qa_index_version") == ready.json()["index_version"] + 1


def test_not_ready_without_an_index(config, embedder) -> None:
    with TestClient(create_app(config, embedder)) as client:
        assert client.get("/livez").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and not r.json()["ready"] and "qa index" in r.json()["reason"]
        assert metric(client.get("/metrics").text, "qa_index_version") == 0
