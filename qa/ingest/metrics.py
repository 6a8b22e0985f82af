"""Ingest in /metrics, read from the ledger at each scrape: the counts are the same whichever process
polled (`qa feeds` from cron, `qa watch`, or `qa serve --watch`), and survive restarts."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from qa.ingest.ledger import Ledger

#: Seconds from publication (or a file's last change) to being answerable.
LAG_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 86400.0)


class IngestCollector(Collector):
    """qa_ingest_entries{feed,state} (seen, fetched, indexed, duplicate, failed), qa_ingest_lag_seconds{since}
    (published, seen, file), qa_ingest_last_timestamp_seconds and qa_ingest_added_last_hour."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        entries, lag, last, hour = self._families()
        if self.path.exists():
            ledger = Ledger(self.path)
            for url, seen, fetched, indexed, duplicate, failed in ledger.feed_counts():
                for state, n in (("seen", seen), ("fetched", fetched), ("indexed", indexed), ("duplicate", duplicate), ("failed", failed)):
                    entries.add_metric([url, state], n)
            for since, values in ledger.lags().items():
                values = sorted(values)
                buckets = [(str(b), bisect.bisect_right(values, b)) for b in LAG_BUCKETS] + [("+Inf", len(values))]
                lag.add_metric([since], buckets, sum(values))
            status = ledger.status()
            last.add_metric([], status["last_ingest_at"] or 0.0)
            hour.add_metric([], status["added_last_hour"])
        yield from (entries, lag, last, hour)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(
                "qa_ingest_entries", "Feed entries by what happened to them (failed: failed fetches)", labels=["feed", "state"]
            ),
            HistogramMetricFamily(
                "qa_ingest_lag_seconds",
                "Seconds to answerable, since an entry's publication, its sighting, or a file's last change",
                labels=["since"],
            ),
            GaugeMetricFamily("qa_ingest_last_timestamp_seconds", "When an ingest build last changed the index (0: never)"),
            GaugeMetricFamily("qa_ingest_added_last_hour", "Articles added by ingest in the last hour"),
        )
