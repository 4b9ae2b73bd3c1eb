"""Metrics: the counters kept on the hot path and what a scrape shows."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import mint
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth import reasons
from nanostream.auth.admission import Admission
from nanostream.auth.ledger import MemoryLedger
from nanostream.auth.origins import OriginPolicy
from nanostream.auth.tokens import TokenVerifier
from nanostream.broadcast import Broadcaster, frame
from nanostream.clients import ClientTracker
from nanostream.ops.memory import MemoryTrimmer
from nanostream.ops.metrics import ServiceCollector, service_registry
from nanostream.resume.ids import format_key
from nanostream.sinks import ClientSink
from nanostream.sources import SourceStatus
from nanostream.sources.stream import LineSourceProtocol

SECRET = b"k" * 32


class QuietClient:
    """A connection that takes every write and can be paused."""

    def __init__(self) -> None:
        self.written = 0
        self.dropped = False
        self.sink = ClientSink(self.write, self)

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def dropSlowConsumer(self, unsent: int) -> None:
        self.dropped = True

    def goAway(self) -> None:
        pass


class BroadcasterCounterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.broadcaster = Broadcaster(1024, self.clock)

    def test_counts_per_batch(self) -> None:
        """A batch counts its lines once and its messages and bytes per client."""
        clients = [QuietClient(), QuietClient()]
        for client in clients:
            self.broadcaster.add(client.sink)
        lines = [b"one", b"two", b"\xff"]
        self.broadcaster.broadcast(lines)
        size = sum(len(frame(line)) for line in lines)
        self.assertEqual(self.broadcaster.lines_received, 3)
        self.assertEqual(self.broadcaster.messages_delivered, 6)
        self.assertEqual(self.broadcaster.bytes_delivered, 2 * size)
        self.assertEqual(
            self.broadcaster.bytes_delivered, sum(c.written for c in clients)
        )

    def test_lines_without_clients(self) -> None:
        """Lines read with nobody listening are received but not delivered."""
        self.broadcaster.broadcast([b"a", b"b"])
        self.assertEqual(self.broadcaster.lines_received, 2)
        self.assertEqual(self.broadcaster.messages_delivered, 0)
        self.assertEqual(self.broadcaster.bytes_delivered, 0)

    def test_empty_batch(self) -> None:
        """An empty batch is no line and does not move the last-line time."""
        self.clock.advance(5)
        self.broadcaster.broadcast([])
        self.assertEqual(self.broadcaster.lines_received, 0)
        self.assertEqual(self.broadcaster.last_line_at, 1000)

    def test_last_line_time(self) -> None:
        """The time of the last batch comes from the injected clock."""
        self.clock.advance(7)
        self.broadcaster.broadcast([b"x"])
        self.assertEqual(self.broadcaster.last_line_at, 1007)

    def test_slow_consumers_counted(self) -> None:
        """Each dropped slow consumer is counted once."""
        slow, fast = QuietClient(), QuietClient()
        self.broadcaster.add(slow.sink)
        self.broadcaster.add(fast.sink)
        slow.sink.pauseProducing()
        self.broadcaster.broadcast([b"x" * 2000])
        self.assertTrue(slow.dropped)
        self.assertEqual(self.broadcaster.slow_consumers_dropped, 1)
        self.broadcaster.broadcast([b"y"])
        self.assertEqual(self.broadcaster.slow_consumers_dropped, 1)


class OtherCounterTests(SynchronousTestCase):
    def test_overlong_lines_counted_on_status(self) -> None:
        """Discarded lines are counted on the source status, across producers."""
        status = SourceStatus()
        sink = Broadcaster(clock=Clock())
        for _ in range(2):
            protocol = LineSourceProtocol(sink, 4, "test", status=status)
            protocol.dataReceived(b"toolong\nok\n")
        self.assertEqual(status.lines_discarded, 2)
        self.assertEqual(sink.lines_received, 2)

    def test_tracker_counts_accepted(self) -> None:
        """Every opened connection counts as accepted; closing does not undo it."""
        tracker = ClientTracker()
        tracker.opened()
        tracker.opened()
        tracker.closed()
        self.assertEqual((tracker.open, tracker.accepted), (1, 2))

    def test_admission_counts_each_refusal(self) -> None:
        """Each refusal is counted once under its reason phrase."""
        clock = Clock()
        admission = Admission(
            clock, TokenVerifier(SECRET), MemoryLedger(clock), OriginPolicy(())
        )
        for tokens in ([], [""], ["not-a-token"]):
            self.failureResultOf(
                maybeDeferred(admission.decide, "tcp4:192.0.2.1:1", None, tokens)
            )
        self.assertEqual(admission.refused[reasons.NO_TOKEN], 2)
        self.assertEqual(admission.refused[reasons.INVALID], 1)
        self.assertEqual(admission.refused[reasons.EXPIRED], 0)


def scrape(collector: ServiceCollector) -> dict[str, dict[tuple[str, ...], float]]:
    """Sample values by name and label values, as Prometheus would read them."""
    text = generate_latest(service_registry(collector)).decode("utf-8")
    samples: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sample.labels.values())
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


class BrokenLedger:
    """A shared ledger that cannot answer."""

    def consume(self, token_id: bytes, expires_at: float) -> Deferred[bool]:
        return fail(ConnectionRefusedError("ledger down"))


class LedgerRefusalTests(SynchronousTestCase):
    def test_ledger_failure_counted(self) -> None:
        """A refusal from a failing ledger is counted under its own phrase."""
        clock = Clock()
        admission = Admission(
            clock, TokenVerifier(SECRET), BrokenLedger(), OriginPolicy(())
        )
        token = mint(SECRET, now=0)
        self.failureResultOf(
            maybeDeferred(admission.decide, "tcp4:192.0.2.1:1", None, [token])
        )
        self.assertEqual(admission.refused[reasons.LEDGER_UNAVAILABLE], 1)


class CollectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(500)
        self.broadcaster = Broadcaster(1024, self.clock)
        self.tracker = ClientTracker()
        self.admission = Admission(self.clock, None, None, OriginPolicy(["https://a"]))
        self.status = SourceStatus()
        self.collector = ServiceCollector(
            broadcaster=self.broadcaster,
            tracker=self.tracker,
            admission=self.admission,
            source=self.status,
            clock=self.clock,
        )

    def test_every_reason_starts_at_zero(self) -> None:
        """Each reason phrase is exported with 0 before any refusal."""
        rejected = scrape(self.collector)["nanostream_handshakes_rejected_total"]
        self.assertEqual(rejected, {(reason,): 0.0 for reason in reasons.REASONS})

    def test_refusals_by_reason(self) -> None:
        """A refused origin shows in its own label value."""
        self.failureResultOf(
            maybeDeferred(self.admission.decide, "p", "https://evil", [])
        )
        rejected = scrape(self.collector)["nanostream_handshakes_rejected_total"]
        self.assertEqual(rejected[(reasons.ORIGIN_NOT_ALLOWED,)], 1.0)
        self.assertEqual(rejected[(reasons.NO_TOKEN,)], 0.0)

    def test_phrase_added_later_is_exported(self) -> None:
        """A phrase not in REASONS that Admission counted still shows up."""
        self.admission.refused["some future reason"] = 3
        rejected = scrape(self.collector)["nanostream_handshakes_rejected_total"]
        self.assertEqual(rejected[("some future reason",)], 3.0)

    def test_values_read_at_scrape_time(self) -> None:
        """Each metric reflects the service's counters when scraped."""
        client = QuietClient()
        self.broadcaster.add(client.sink)
        self.tracker.opened()
        self.tracker.handshakes_timed_out = 3
        self.status.up("reading stdin")
        self.status.lines_discarded = 4
        self.broadcaster.broadcast([b"abc", b"def"])
        samples = scrape(self.collector)
        self.assertEqual(samples["nanostream_clients"][()], 1.0)
        self.assertEqual(samples["nanostream_handshakes_accepted_total"][()], 1.0)
        self.assertEqual(samples["nanostream_handshakes_timed_out_total"][()], 3.0)
        self.assertEqual(samples["nanostream_lines_received_total"][()], 2.0)
        self.assertEqual(samples["nanostream_lines_discarded_total"][()], 4.0)
        self.assertEqual(samples["nanostream_messages_delivered_total"][()], 2.0)
        self.assertEqual(
            samples["nanostream_bytes_delivered_total"][()], float(client.written)
        )
        self.assertEqual(samples["nanostream_slow_consumers_dropped_total"][()], 0.0)
        self.assertEqual(samples["nanostream_source_connected"][()], 1.0)

    def test_resume_metrics(self) -> None:
        """History size, resumes by outcome, replayed lines and source gaps."""
        self.broadcaster.broadcast([b"abc", b"defg"])
        first = self.broadcaster.last_key
        assert first is not None
        exact, gap = QuietClient(), QuietClient()
        self.broadcaster.resume(exact.sink, format_key(first - 1))
        self.broadcaster.resume(gap.sink, b"1-1")
        self.clock.advance(0)
        self.broadcaster.source_gap()
        samples = scrape(self.collector)
        self.assertEqual(samples["nanostream_history_lines"][()], 2.0)
        self.assertEqual(samples["nanostream_history_bytes"][()], 7.0)
        resumes = samples["nanostream_resumes_total"]
        self.assertEqual(resumes, {("exact",): 1.0, ("gap",): 1.0})
        self.assertEqual(samples["nanostream_lines_replayed_total"][()], 3.0)
        self.assertEqual(samples["nanostream_source_gaps_total"][()], 1.0)

    def test_source_disconnected(self) -> None:
        """The source gauge is 0 while the source is down."""
        self.status.down("no producer connected")
        samples = scrape(self.collector)
        self.assertEqual(samples["nanostream_source_connected"][()], 0.0)

    def test_seconds_since_last_line(self) -> None:
        """The age of the last line is computed from the clock at scrape time."""
        self.clock.advance(30)
        age = scrape(self.collector)["nanostream_seconds_since_last_line"]
        self.assertEqual(age[()], 30.0)
        self.broadcaster.broadcast([b"x"])
        self.clock.advance(2.5)
        age = scrape(self.collector)["nanostream_seconds_since_last_line"]
        self.assertEqual(age[()], 2.5)

    def test_registries_independent(self) -> None:
        """Two services in one process each get a registry without clashes."""
        other = ServiceCollector(
            broadcaster=Broadcaster(clock=self.clock),
            tracker=ClientTracker(),
            admission=self.admission,
            source=SourceStatus(),
            clock=self.clock,
        )
        self.broadcaster.broadcast([b"x"])
        self.assertEqual(
            scrape(self.collector)["nanostream_lines_received_total"][()], 1.0
        )
        self.assertEqual(scrape(other)["nanostream_lines_received_total"][()], 0.0)

    def test_process_metrics(self) -> None:
        """The registry also carries the standard process metrics."""
        self.assertIn("process_cpu_seconds_total", scrape(self.collector))


class LedgerGaugeTests(SynchronousTestCase):
    def collector(self, ledger: MemoryLedger | None) -> ServiceCollector:
        clock = Clock()
        return ServiceCollector(
            broadcaster=Broadcaster(clock=clock),
            tracker=ClientTracker(),
            admission=Admission(clock, None, None, OriginPolicy(())),
            source=SourceStatus(),
            clock=clock,
            ledger=ledger,
        )

    def test_ledger_entries_follow_the_ledger(self) -> None:
        """The gauge shows the used tokens remembered, and drops as they expire."""
        clock = Clock()
        ledger = MemoryLedger(clock)
        collector = self.collector(ledger)
        ledger.consume_now(b"a", 10)
        ledger.consume_now(b"b", 20)
        self.assertEqual(scrape(collector)["nanostream_ledger_entries"][()], 2.0)
        clock.advance(15)
        ledger.consume_now(b"c", 30)
        self.assertEqual(scrape(collector)["nanostream_ledger_entries"][()], 2.0)
        clock.advance(30)
        ledger.consume_now(b"d", 60)
        self.assertEqual(scrape(collector)["nanostream_ledger_entries"][()], 1.0)

    def test_no_ledger(self) -> None:
        """Without a ledger (--no-auth) the gauge is 0."""
        self.assertEqual(
            scrape(self.collector(None))["nanostream_ledger_entries"][()], 0.0
        )


class MemoryReleaseCounterTests(SynchronousTestCase):
    def test_counts_the_trimmer_releases(self) -> None:
        """The counter shows how often the trimmer gave memory back; 0 without."""
        clock = Clock()
        tracker = ClientTracker()
        trimmer = MemoryTrimmer(tracker, None, lambda: None, clock)

        def collector(trimmer: MemoryTrimmer | None) -> ServiceCollector:
            return ServiceCollector(
                broadcaster=Broadcaster(clock=clock),
                tracker=tracker,
                admission=Admission(clock, None, None, OriginPolicy(())),
                source=SourceStatus(),
                clock=clock,
                trimmer=trimmer,
            )

        name = "nanostream_memory_releases_total"
        self.assertEqual(scrape(collector(None))[name][()], 0.0)
        for _ in range(200):
            tracker.opened()
        trimmer.check()
        for _ in range(200):
            tracker.closed()
        trimmer.check()
        self.assertEqual(scrape(collector(trimmer))[name][()], 1.0)
