"""The Redis source over a fake connection: batches, limits, loss and recovery.

The protocol is txredisapi's real subscriber; only the socket is replaced
(see :mod:`fake_redis`), and time is a ``Clock``.
"""

from __future__ import annotations

from collections.abc import Sequence

from fake_redis import (
    TARGET,
    FakeEndpoint,
    FixedRandom,
    feed,
    lose,
    message,
    subscribed,
    written,
)
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from nanostream.redis.backoff import Backoff
from nanostream.sources.redis_channel import RedisSource


class RecordingSink:
    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.events: list[str | list[bytes]] = []

    def broadcast(self, lines: Sequence[bytes]) -> None:
        self.batches.append(list(lines))
        self.events.append(list(lines))

    def source_gap(self) -> None:
        self.events.append("gap")


class RedisSourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.endpoint = FakeEndpoint()
        self.sink = RecordingSink()
        self.source = RedisSource(
            self.sink,
            16,
            TARGET,
            self.clock,
            backoff=Backoff(initial=0.1, factor=2, maximum=1, random=FixedRandom(1.0)),
            endpoint=self.endpoint,
        )
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.source.running:
            self.source.stopService()

    def start_subscribed(self) -> None:
        self.source.startService()
        protocol = self.endpoint.last
        self.assertIn(b"SUBSCRIBE", written(protocol))
        feed(protocol, subscribed(b"feed"), self.clock)

    def test_subscribes_and_reports_up(self) -> None:
        """Start-up subscribes to the channel, and only then is the source up."""
        self.source.startService()
        self.assertFalse(self.source.status.connected)
        protocol = self.endpoint.last
        self.assertEqual(written(protocol), b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nfeed\r\n")
        feed(protocol, subscribed(b"feed"), self.clock)
        self.assertTrue(self.source.status.connected)

    def test_one_read_one_batch(self) -> None:
        """All messages parsed from one read reach the broadcaster as one batch."""
        self.start_subscribed()
        data = b"".join(
            message(b"feed", line) for line in (b"a", "é".encode(), b"\xff")
        )
        feed(self.endpoint.last, data, self.clock)
        self.assertEqual(self.sink.batches, [[b"a", "é".encode(), b"\xff"]])

    def test_message_split_across_reads(self) -> None:
        """A message cut between two reads is delivered once, whole."""
        self.start_subscribed()
        data = message(b"feed", b"hello") + message(b"feed", b"world")
        cut = len(data) - 5
        feed(self.endpoint.last, data[:cut], self.clock)
        feed(self.endpoint.last, data[cut:], self.clock)
        self.assertEqual(self.sink.batches, [[b"hello"], [b"world"]])

    def test_numbers_stay_bytes(self) -> None:
        """A message that looks like a number is still the line's bytes."""
        self.start_subscribed()
        feed(self.endpoint.last, message(b"feed", b"42"), self.clock)
        self.assertEqual(self.sink.batches, [[b"42"]])

    def test_overlong_discarded_with_warning(self) -> None:
        """A message over --max-line-bytes is dropped with a warning; others flow."""
        self.start_subscribed()
        data = message(b"feed", b"x" * 17) + message(b"feed", b"y" * 16)
        with capturedLogs() as events:
            feed(self.endpoint.last, data, self.clock)
        self.assertEqual(self.sink.batches, [[b"y" * 16]])
        [warning] = [e for e in events if e.get("length") == 17]
        self.assertEqual(warning["limit"], 16)

    def test_overlong_counted_for_metrics(self) -> None:
        """Each dropped message is counted on the status the metrics read."""
        self.start_subscribed()
        data = message(b"feed", b"x" * 17) + message(b"feed", b"y" * 16)
        feed(self.endpoint.last, data + message(b"feed", b"z" * 20), self.clock)
        self.assertEqual(self.source.status.lines_discarded, 2)

    def test_empty_message_skipped(self) -> None:
        """An empty message is skipped, like an empty line."""
        self.start_subscribed()
        feed(
            self.endpoint.last,
            message(b"feed", b"") + message(b"feed", b"z"),
            self.clock,
        )
        self.assertEqual(self.sink.batches, [[b"z"]])

    def test_loss_reconnects_resubscribes_and_logs_gap(self) -> None:
        """After a loss: down, retry after the backoff, resubscribe, log the gap."""
        self.start_subscribed()
        with capturedLogs() as events:
            lose(self.endpoint.last)
        self.assertFalse(self.source.status.connected)
        [lost] = [e for e in events if "gap_start" in e]
        self.assertEqual(lost["gap_start"], "2023-11-14T22:13:20.000+00:00")
        self.assertEqual(lost["delay"], 0.1)

        self.endpoint.refusing = True
        self.clock.advance(0.1)
        self.assertEqual(self.endpoint.attempts, 2)
        self.clock.advance(0.19)
        self.assertEqual(self.endpoint.attempts, 2, "the second retry waits 0.2 s")
        self.clock.advance(0.01)
        self.assertEqual(self.endpoint.attempts, 3)

        self.endpoint.refusing = False
        self.clock.advance(0.4)
        protocol = self.endpoint.last
        self.assertIn(b"SUBSCRIBE", written(protocol))
        with capturedLogs() as events:
            feed(protocol, subscribed(b"feed"), self.clock)
        self.assertTrue(self.source.status.connected)
        [recovered] = [e for e in events if "gap_end" in e]
        self.assertEqual(recovered["gap_start"], "2023-11-14T22:13:20.000+00:00")
        self.assertEqual(recovered["gap_end"], "2023-11-14T22:13:20.700+00:00")

        feed(protocol, message(b"feed", b"after"), self.clock)
        self.assertEqual(self.sink.batches, [[b"after"]])

    def test_backoff_resets_after_success(self) -> None:
        """A loss after a recovery waits the initial delay again."""
        self.start_subscribed()
        lose(self.endpoint.last)
        self.clock.advance(0.1)
        feed(self.endpoint.last, subscribed(b"feed"), self.clock)
        lose(self.endpoint.last)
        self.clock.advance(0.1)
        self.assertEqual(self.endpoint.attempts, 3)

    def test_unanswered_subscribe_times_out(self) -> None:
        """A Redis that never confirms the subscription is left and retried."""
        self.source.startService()
        first = self.endpoint.last
        self.clock.advance(5)
        self.assertTrue(first.transport.disconnecting or first.transport.disconnected)
        lose(first)
        self.clock.advance(0.1)
        self.assertEqual(self.endpoint.attempts, 2)

    def test_password_never_logged(self) -> None:
        """Start-up and loss are logged with the URL masked."""
        self.source = RedisSource(
            self.sink,
            16,
            TARGET.with_password("hunter2"),
            self.clock,
            endpoint=self.endpoint,
        )
        with capturedLogs() as events:
            self.source.startService()
            protocol = self.endpoint.last
            self.assertIn(b"hunter2", written(protocol), "AUTH is sent")
            feed(protocol, b"+OK\r\n", self.clock)
            feed(protocol, subscribed(b"feed"), self.clock)
            lose(protocol)
        self.assertTrue(events)
        for event in events:
            self.assertNotIn("hunter2", repr(event))

    def test_stop_closes(self) -> None:
        """Stopping closes the connection and schedules no retry."""
        self.start_subscribed()
        protocol = self.endpoint.last
        d = self.source.stopService()
        self.assertTrue(protocol.transport.disconnecting)
        lose(protocol)
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_first_subscription_is_no_gap(self) -> None:
        """Subscribing at start misses nothing, so no source gap is reported."""
        self.start_subscribed()
        feed(self.endpoint.last, message(b"feed", b"a"), self.clock)
        self.assertEqual(self.sink.events, [[b"a"]])
        self.assertEqual(self.source.source_gaps, 0)

    def test_resubscription_is_a_gap(self) -> None:
        """After a loss, the gap is reported once, before the new lines."""
        self.start_subscribed()
        feed(self.endpoint.last, message(b"feed", b"before"), self.clock)
        lose(self.endpoint.last)
        self.endpoint.refusing = True
        self.clock.advance(0.1)
        self.assertEqual(self.sink.events, [[b"before"]], "no gap while down")
        self.endpoint.refusing = False
        self.clock.advance(0.2)
        protocol = self.endpoint.last
        feed(protocol, subscribed(b"feed"), self.clock)
        feed(protocol, message(b"feed", b"after"), self.clock)
        feed(protocol, message(b"feed", b"later"), self.clock)
        self.assertEqual(self.sink.events, [[b"before"], "gap", [b"after"], [b"later"]])
        self.assertEqual(self.source.source_gaps, 1)

    def test_each_loss_counted(self) -> None:
        """Two losses and recoveries are two gaps."""
        self.start_subscribed()
        for _ in range(2):
            lose(self.endpoint.last)
            self.clock.advance(1)
            feed(self.endpoint.last, subscribed(b"feed"), self.clock)
        self.assertEqual(self.sink.events, ["gap", "gap"])
        self.assertEqual(self.source.source_gaps, 2)
