"""The cheap formatter of per-connection lines writes exactly what Twisted's
text observer writes, and steps aside wherever it could not."""

from __future__ import annotations

import inspect
import io

from test_levels import beginner
from twisted.logger import (
    FilteringLogObserver,
    LogEvent,
    LogLevel,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.trial.unittest import SynchronousTestCase

import nanostream.websocket
from nanostream.ops.fastlog import PER_CONNECTION, CachedClassicText, speed_up
from nanostream.ops.levels import LevelGate

CONNECTED = "client connected: {peer} ({clients} clients)"
LEFT = "client disconnected: {peer} ({clients} clients)"


def event(when: float, template: str = CONNECTED, **fields: object) -> LogEvent:
    base: LogEvent = {
        "log_format": template,
        "log_namespace": "nanostream.websocket",
        "log_level": LogLevel.info,
        "log_time": when,
        "peer": "tcp:127.0.0.1:51234",
        "clients": 7,
    }
    base.update(fields)
    return base


class FastTextTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.plain = io.StringIO()
        self.fast = io.StringIO()
        self.reference = textFileLogObserver(self.plain)
        self.observer = textFileLogObserver(self.fast)
        self.assertTrue(speed_up(self.observer))

    def both(self, e: LogEvent) -> None:
        self.reference(dict(e))
        self.observer(dict(e))

    def test_same_text(self) -> None:
        """Per-connection lines, across seconds and odd values, match exactly."""
        when = 1_765_000_000.25
        for i in range(5):
            self.both(event(when + i * 0.4, clients=i))
            self.both(event(when + i * 0.4, LEFT, code=1000, clients=i))
        self.both(event(when + 3, peer="a\nb"))
        self.both(event(when + 3, log_system="custom"))
        self.both(event(when + 3, log_level=None))
        self.assertEqual(self.fast.getvalue(), self.plain.getvalue())
        self.assertEqual(self.fast.getvalue().count("\n"), 14)

    def test_other_events_unchanged(self) -> None:
        """Any other event, or one with a failure, takes Twisted's own path."""
        when = 1_765_000_000.0
        self.both(event(when, "rejected {reason!r}", reason="bad"))
        self.both(event(when, "calls {x()}", x=lambda: "ok"))
        self.both(event(when, CONNECTED, peer=None, log_time=None))
        self.assertEqual(self.fast.getvalue(), self.plain.getvalue())

    def test_unformattable_falls_back(self) -> None:
        """A field that is missing gives Twisted's own text, not an exception."""
        broken = event(1_765_000_000.0)
        del broken["clients"]
        self.both(broken)
        self.assertEqual(self.fast.getvalue(), self.plain.getvalue())

    def test_known_templates_are_ours(self) -> None:
        """Each template made cheap is one the protocol writes."""
        source = inspect.getsource(nanostream.websocket)
        for template in PER_CONNECTION:
            self.assertIn(repr(template).strip("'"), source)


class SpeedUpTests(SynchronousTestCase):
    def test_json_left_alone(self) -> None:
        """JSON output is not text of the classic form: no change."""
        observer = jsonFileLogObserver(io.StringIO(), recordSeparator="")
        original = observer.formatEvent
        self.assertFalse(speed_up(observer))
        self.assertIs(observer.formatEvent, original)

    def test_sub_second_stamps_left_alone(self) -> None:
        """A time format with fractions of a second cannot reuse a stamp."""
        observer = textFileLogObserver(io.StringIO(), timeFormat="%H:%M:%S.%f")
        self.assertFalse(speed_up(observer))

    def test_behind_twist_filter(self) -> None:
        """``twist`` wraps its text observer in a filter; it is found there."""
        inner = textFileLogObserver(io.StringIO())
        self.assertTrue(speed_up(FilteringLogObserver(inner, [])))
        self.assertIsInstance(inner.formatEvent, CachedClassicText)

    def test_other_observers(self) -> None:
        """An observer that is no file observer is not touched."""
        self.assertFalse(speed_up(lambda e: None))

    def test_gate_installs_it(self) -> None:
        """The --log-level gate gives the observers it wraps the fast formatter."""
        logBeginner, publisher = beginner()
        out = io.StringIO()
        observer = textFileLogObserver(out)
        LevelGate(logBeginner).set(LogLevel.info)
        logBeginner.beginLoggingTo([observer], redirectStandardIO=False)
        self.assertIsInstance(observer.formatEvent, CachedClassicText)
        publisher(event(1_765_000_000.5))
        self.assertIn(
            "client connected: tcp:127.0.0.1:51234 (7 clients)\n", out.getvalue()
        )
