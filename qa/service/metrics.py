"""Prometheus metrics for a fleet of replicas: requests and latency by endpoint and status, answers
withheld, the index version served, and build progress. Each app has its own registry, so several
apps in one process (the tests) do not share counts."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("qa_requests", "HTTP requests", ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "qa_request_seconds", "HTTP request latency", ["endpoint", "method"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.questions = Counter("qa_questions", "Questions answered (API and web form)", registry=self.registry)
        self.withheld = Counter(
            "qa_questions_withheld", "Questions whose every answer scored below the threshold (no_answer)", registry=self.registry
        )
        self.index_version = Gauge("qa_index_version", "The index version this replica serves (0: none)", registry=self.registry)
        self.build_done = Gauge("qa_build_done", "Work units done by the running or last background build", registry=self.registry)
        self.build_total = Gauge("qa_build_total", "Work units of the running or last background build", registry=self.registry)
        self.build_phase = Gauge("qa_build_phase", "1 for the phase the background build is in", ["phase"], registry=self.registry)

    def answered(self, no_answer: bool) -> None:
        self.questions.inc()
        if no_answer:
            self.withheld.inc()


class RequestMetrics:
    """Counts and times every request under its route's path template (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
            self.metrics.latency.labels(endpoint, method).observe(time.perf_counter() - started)
