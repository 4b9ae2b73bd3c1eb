"""Prometheus metrics read from the counters the service already keeps.

Nothing on the broadcast path calls into ``prometheus_client``: the
broadcaster, the admission gate, the client tracker and the source status
keep plain integers, and :class:`ServiceCollector` turns them into metric
families only when ``/metrics`` is scraped.  Each service gets a registry of
its own, so several can live in one process (tests build many).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.interfaces import IReactorTime

from nanostream.auth import reasons
from nanostream.auth.admission import Admission
from nanostream.auth.ledger import ILedger
from nanostream.broadcast import Broadcaster
from nanostream.clients import ClientTracker
from nanostream.ops.memory import MemoryTrimmer
from nanostream.sources import SourceStatus

PREFIX = "nanostream_"


class ServiceCollector:
    """A custom collector: every value is read at scrape time.

    ``/metrics`` is served from the reactor's thread pool, so ``collect``
    only reads: integers and a copy of the refusal counts.
    """

    def __init__(
        self,
        *,
        broadcaster: Broadcaster,
        tracker: ClientTracker,
        admission: Admission,
        source: SourceStatus,
        clock: IReactorTime,
        ledger: ILedger | None = None,
        trimmer: MemoryTrimmer | None = None,
    ) -> None:
        """
        :param ledger: the used-token ledger, None under ``--no-auth``.
        :param trimmer: what hands freed memory back, None where nothing can.
        """
        self._broadcaster = broadcaster
        self._ledger = ledger
        self._trimmer = trimmer
        self._tracker = tracker
        self._admission = admission
        self._source = source
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so the registry knows the names."""
        for name, kind, documentation in _METRICS:
            yield _family(name, kind, documentation)

    def collect(self) -> Iterator[Metric]:
        broadcaster = self._broadcaster
        source = self._source
        values = {
            "clients": self._tracker.open,
            "handshakes_accepted": self._tracker.accepted,
            "handshakes_timed_out": self._tracker.handshakes_timed_out,
            "lines_received": broadcaster.lines_received,
            "lines_discarded": source.lines_discarded,
            "messages_delivered": broadcaster.messages_delivered,
            "bytes_delivered": broadcaster.bytes_delivered,
            "slow_consumers_dropped": broadcaster.slow_consumers_dropped,
            "source_connected": 1 if source.connected else 0,
            "ledger_entries": 0 if self._ledger is None else self._ledger.size,
            "seconds_since_last_line": max(
                0.0, self._clock.seconds() - broadcaster.last_line_at
            ),
            "memory_releases": 0 if self._trimmer is None else self._trimmer.releases,
            "history_lines": len(broadcaster.history),
            "history_bytes": broadcaster.history.bytes,
            "lines_replayed": broadcaster.lines_replayed,
            "source_gaps": broadcaster.source_gaps,
        }
        for name, kind, documentation in _METRICS:
            family = _family(name, kind, documentation)
            if name == REJECTED:
                for reason, count in self._refusals().items():
                    family.add_metric([reason], count)
            elif name == RESUMES:
                family.add_metric(["exact"], broadcaster.resumes_exact)
                family.add_metric(["gap"], broadcaster.resumes_gap)
            else:
                family.add_metric([], values[name])
            yield family

    def _refusals(self) -> dict[str, int]:
        """Every known phrase (0 until seen), then any phrase added later."""
        counts = dict.fromkeys(reasons.REASONS, 0)
        counts.update(self._admission.refused)
        return counts


REJECTED = "handshakes_rejected"
RESUMES = "resumes"

#: The label of each labelled family.
_LABELS = {REJECTED: ["reason"], RESUMES: ["outcome"]}

#: name, kind, help text; prometheus_client adds ``_total`` to counters.
_METRICS = (
    ("clients", "gauge", "WebSocket clients connected now."),
    ("handshakes_accepted", "counter", "Handshakes that became clients."),
    (REJECTED, "counter", "Handshakes refused, by the reason phrase logged."),
    (
        "handshakes_timed_out",
        "counter",
        "Connections dropped for not completing the opening handshake "
        "within --handshake-timeout.",
    ),
    ("lines_received", "counter", "Lines read from the source."),
    (
        "lines_discarded",
        "counter",
        "Lines discarded for being longer than --max-line-bytes.",
    ),
    (
        "messages_delivered",
        "counter",
        "WebSocket messages handed to client connections.",
    ),
    (
        "bytes_delivered",
        "counter",
        "Bytes handed to client connections, WebSocket framing included.",
    ),
    (
        "slow_consumers_dropped",
        "counter",
        "Clients dropped for having more than --max-buffer-bytes unsent.",
    ),
    ("source_connected", "gauge", "1 while the source can deliver lines, else 0."),
    (
        "ledger_entries",
        "gauge",
        "Used tokens this process remembers until they expire "
        "(0 when a Redis --ledger holds them, or with --no-auth).",
    ),
    (
        "seconds_since_last_line",
        "gauge",
        "Seconds since the source last delivered a line (since start if none).",
    ),
    (
        "memory_releases",
        "counter",
        "Times freed memory was handed back to the system after clients left.",
    ),
    ("history_lines", "gauge", "Lines held for clients that resume."),
    ("history_bytes", "gauge", "Bytes of the lines held for clients that resume."),
    (
        RESUMES,
        "counter",
        "Resumes served, by outcome: exact (every missed line replayed) "
        "or gap (the client was told lines were gone).",
    ),
    ("lines_replayed", "counter", "Lines written to resuming clients."),
    (
        "source_gaps",
        "counter",
        "Times the source lost lines (a trimmed stream, a lost subscription).",
    ),
)


def _family(
    name: str, kind: str, documentation: str
) -> CounterMetricFamily | GaugeMetricFamily:
    labels = _LABELS.get(name, [])
    if kind == "counter":
        return CounterMetricFamily(PREFIX + name, documentation, labels=labels)
    return GaugeMetricFamily(PREFIX + name, documentation, labels=labels)


def service_registry(collector: ServiceCollector) -> CollectorRegistry:
    """A registry of our own: the service's metrics plus the process's."""
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
