"""The client side's lifetime: counting connections, start-up notices, stopping."""

from __future__ import annotations

import support
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from nanostream.broadcast import Broadcaster
from nanostream.clients import CLOSE_GRACE_SECONDS, BroadcastService, ClientTracker
from nanostream.sinks import ClientSink


class ClientTrackerTests(SynchronousTestCase):
    """when_all_closed fires when the last client goes, or when time is up."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.tracker = ClientTracker()

    def test_nothing_open_fires_at_once(self) -> None:
        """With no client open the wait is already over."""
        self.successResultOf(self.tracker.when_all_closed(self.clock, 3))

    def test_fires_when_last_client_closes(self) -> None:
        """The Deferred fires on the close that brings the count to zero."""
        self.tracker.opened()
        self.tracker.opened()
        d = self.tracker.when_all_closed(self.clock, 3)
        self.tracker.closed()
        self.assertNoResult(d)
        self.tracker.closed()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_every_waiter_fires(self) -> None:
        """Two waiters both fire when the last client closes."""
        self.tracker.opened()
        first = self.tracker.when_all_closed(self.clock, 3)
        second = self.tracker.when_all_closed(self.clock, 3)
        self.tracker.closed()
        self.successResultOf(first)
        self.successResultOf(second)

    def test_fires_after_timeout(self) -> None:
        """A client that never closes delays the Deferred only until the timeout."""
        self.tracker.opened()
        d = self.tracker.when_all_closed(self.clock, 3)
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))

    def test_close_after_timeout_is_harmless(self) -> None:
        """A client closing after the wait timed out raises nothing."""
        self.tracker.opened()
        d = self.tracker.when_all_closed(self.clock, 3)
        self.clock.advance(3)
        self.tracker.closed()
        self.successResultOf(d)
        self.assertEqual(self.tracker.open, 0)


class RecordingClient:
    """A broadcaster client that notes being asked to go away."""

    def __init__(self, tracker: ClientTracker, fail: bool = False) -> None:
        self.tracker = tracker
        self.fail = fail
        self.asked_to_go = 0
        tracker.opened()

    def dropSlowConsumer(self, unsent: int) -> None:
        raise AssertionError("not slow")

    def goAway(self) -> None:
        self.asked_to_go += 1
        if self.fail:
            raise RuntimeError("client bug")


class BroadcastServiceTests(SynchronousTestCase):
    """Start-up warnings are logged; stopping sends every client away."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.tracker = ClientTracker()
        self.broadcaster = Broadcaster()
        self.events = support.capture_logs(self)

    def service(self, warnings: list[str] | None = None) -> BroadcastService:
        return BroadcastService(
            self.broadcaster, self.tracker, self.clock, warnings or []
        )

    def client(self, fail: bool = False) -> RecordingClient:
        client = RecordingClient(self.tracker, fail)
        self.broadcaster.add(ClientSink(lambda data: None, client))
        return client

    def from_service(self) -> list[LogEvent]:
        return [
            e for e in self.events if e.get("log_namespace") == "nanostream.clients"
        ]

    def test_startup_warnings_logged(self) -> None:
        """Each start-up warning is one warn-level event."""
        self.service(["first concern", "second concern"]).startService()
        logged = [(e["log_level"], e["warning"]) for e in self.from_service()]
        self.assertEqual(
            logged,
            [(LogLevel.warn, "first concern"), (LogLevel.warn, "second concern")],
        )

    def test_stop_asks_every_client_to_go(self) -> None:
        """stopService calls goAway once on every client and logs how many."""
        service = self.service()
        service.startService()
        clients = [self.client(), self.client(), self.client()]
        d = service.stopService()
        self.assertEqual([c.asked_to_go for c in clients], [1, 1, 1])
        self.assertEqual(len(self.broadcaster), 0)
        [event] = self.from_service()
        self.assertEqual(event["clients"], 3)
        self.assertNoResult(d)
        for _ in clients:
            self.tracker.closed()
        self.successResultOf(d)

    def test_stop_waits_at_most_the_grace_period(self) -> None:
        """Clients that never close hold the stop for CLOSE_GRACE_SECONDS only."""
        service = self.service()
        service.startService()
        self.client()
        d = service.stopService()
        self.clock.advance(CLOSE_GRACE_SECONDS - 0.5)
        self.assertNoResult(d)
        self.clock.advance(0.5)
        self.successResultOf(d)

    def test_stop_without_clients_is_immediate(self) -> None:
        """With nobody connected stopping completes at once."""
        service = self.service()
        service.startService()
        self.successResultOf(service.stopService())
        self.assertFalse(service.running)

    def test_failing_client_does_not_stop_the_others(self) -> None:
        """A client whose goAway raises is logged; the rest are still closed."""
        service = self.service()
        service.startService()
        clients = [self.client(fail=True), self.client(), self.client()]
        service.stopService()
        self.assertEqual([c.asked_to_go for c in clients], [1, 1, 1])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class PeakTests(SynchronousTestCase):
    """take_peak tells the most clients open at once since it was last asked."""

    def test_peak_since_the_last_call(self) -> None:
        """Clients gone before the call still count; the next call starts anew."""
        tracker = ClientTracker()
        for _ in range(3):
            tracker.opened()
        tracker.closed()
        tracker.closed()
        self.assertEqual(tracker.take_peak(), 3)
        self.assertEqual(tracker.take_peak(), 1)
        tracker.opened()
        self.assertEqual(tracker.take_peak(), 2)
