"""Prometheus metrics for node_exporter's textfile collector, computed from the audit log.

Counters survive between runs because they are counted from ``history.jsonl``,
not kept in the (short-lived) process. The file is replaced atomically
(prometheus_client writes a temporary file and renames it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime

import structlog
from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rolling_update._config.settings import Config
from rolling_update._deploy.outcome import Outcome
from rolling_update._observe import measures
from rolling_update._observe.history import HistoryEntry, read


class _FromHistory(Collector):
    def __init__(
        self, service: str, entries: list[HistoryEntry], labels: dict[str, str] | None = None
    ) -> None:
        self.service = service
        self.entries = entries
        self.extra = dict(labels or {})

    def collect(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "rolling_update_runs",
            "Deploys, rollbacks and recoveries of the service on this host, by outcome.",
            labels=["service", "kind", "result", *self.extra],
        )
        for (kind, result), count in sorted(
            Counter((e.kind, e.result) for e in self.entries).items()
        ):
            runs.add_metric([self.service, kind, result, *self.extra.values()], count)
        yield runs
        served = [e for e in self.entries if e.result == Outcome.DEPLOYED]
        if served:
            last = served[-1]
            when = datetime.fromisoformat(last.ended_at).timestamp()
            yield self._gauge("last_success_timestamp_seconds", "End of the last deploy.", when)
            yield self._gauge(
                "last_duration_seconds", "Wall time of the last deploy.", last.seconds
            )
            figures = {
                measures.DOWNTIME_WINDOW: (
                    "last_downtime_window_seconds",
                    "Blue's last answer to production's first, in the last deploy.",
                ),
                measures.HANDOFF_FAILED_REQUESTS: (
                    "last_handoff_failed_requests",
                    "Requests the tool sent through the handoff that failed.",
                ),
                measures.SHIFT_SHARE: (
                    "last_shift_share_percent",
                    "The highest share of new connections green held, gate passed, "
                    "before the handoff (switch.steps).",
                ),
                measures.GREEN_MEMORY_PEAK: (
                    "last_green_memory_peak_bytes",
                    "Green's memory peak.",
                ),
            }
            for key, (name, text) in figures.items():
                value = last.measured.get(key)
                if isinstance(value, int | float):
                    scale = 2**20 if key.endswith("_mb") else 1
                    yield self._gauge(name, text, value * scale)

    def _gauge(self, name: str, text: str, value: float) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(f"rolling_update_{name}", text, labels=["service", *self.extra])
        gauge.add_metric([self.service, *self.extra.values()], value)
        return gauge


def write_metrics(cfg: Config) -> None:
    """Rewrite ``[metrics] textfile`` from the audit log, if one is configured."""
    if cfg.metrics.textfile is None:
        return
    registry = CollectorRegistry()
    registry.register(_FromHistory(cfg.service.name, read(cfg.state_dir), cfg.metrics.labels))
    try:
        write_to_textfile(str(cfg.metrics.textfile), registry)
    except OSError as exc:
        structlog.get_logger().warning("metrics.not_written", error=str(exc))
