"""``--log-level``: what is dropped, that it is dropped before formatting, and
that Autobahn's debug-only work stops when debug is off."""

from __future__ import annotations

import ast
import inspect
import io
import pprint
import types
from typing import Any

import txaio
from autobahn.twisted import websocket as adapter
from autobahn.util import hltype, hlval
from autobahn.websocket import protocol
from support import mint
from test_websocket import WebSocketTestCase
from twisted.logger import (
    LogBeginner,
    LogEvent,
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
)
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth import reasons
from nanostream.ops.levels import (
    AtLeast,
    LevelGate,
    apply_log_level,
    level_option,
    logged,
    quiet_autobahn_debug,
)
from nanostream.tap import ServiceOptions


class CountingObserver:
    """Formats every event it gets, as a file observer would, and counts them."""

    def __init__(self) -> None:
        self.formatted: list[str] = []

    def __call__(self, event: LogEvent) -> None:
        self.formatted.append(formatEvent(event))


def beginner() -> tuple[LogBeginner, LogPublisher]:
    """A LogBeginner of the test's own, as twistd's global one before start."""
    publisher = LogPublisher()
    warnings = types.SimpleNamespace(showwarning=lambda *a, **k: None)
    stdio = types.SimpleNamespace(stdout=io.StringIO(), stderr=io.StringIO())
    return LogBeginner(publisher, io.StringIO(), stdio, warnings), publisher


class LevelOptionTests(SynchronousTestCase):
    def test_choices(self) -> None:
        """The four levels twist names are taken as they are spelled."""
        for name in ("debug", "info", "warn", "error"):
            self.assertEqual(level_option(name), name)

    def test_other_names_refused(self) -> None:
        """Anything else is a usage error listing the choices."""
        e = self.assertRaises(usage.UsageError, level_option, "warning")
        self.assertIn("debug, info, warn, error", str(e))

    def test_default_is_info(self) -> None:
        """Without the option the service logs at info."""
        options = ServiceOptions(environ={})
        options.parseOptions(["--no-auth"])
        self.assertEqual(options["log-level"], "info")


class AtLeastTests(SynchronousTestCase):
    def test_drops_below(self) -> None:
        """Events below the level are refused; at it and above they pass."""
        predicate = AtLeast(LogLevel.warn)
        verdicts = {
            level: predicate({"log_level": level}) for level in LogLevel.iterconstants()
        }
        self.assertEqual(
            [level.name for level, verdict in verdicts.items() if verdict.name == "no"],
            ["debug", "info"],
        )

    def test_level_changes(self) -> None:
        """A new level holds for the next event."""
        predicate = AtLeast(LogLevel.error)
        predicate.level = LogLevel.debug
        self.assertEqual(predicate({"log_level": LogLevel.debug}).name, "maybe")


class LevelGateTests(SynchronousTestCase):
    def begin(self, level: str) -> tuple[CountingObserver, Logger]:
        log_beginner, publisher = beginner()
        gate = LevelGate(log_beginner)
        gate.set(LogLevel.levelWithName(level))
        observer = CountingObserver()
        log_beginner.beginLoggingTo([observer], redirectStandardIO=False)
        return observer, Logger(namespace="test", observer=publisher)

    def test_warn_drops_info_unformatted(self) -> None:
        """At warn an info event never reaches the observer that would format it."""
        observer, log = self.begin("warn")
        log.info("client connected: {peer}", peer="tcp4:127.0.0.1:1")
        log.warn("rejected handshake: {reason}", reason="invalid token")
        log.error("broken")
        self.assertEqual(
            observer.formatted, ["rejected handshake: invalid token", "broken"]
        )

    def test_info_drops_debug(self) -> None:
        """The default drops only debug events."""
        observer, log = self.begin("info")
        log.debug("chatter")
        log.info("client connected")
        self.assertEqual(observer.formatted, ["client connected"])

    def test_set_twice_wraps_once(self) -> None:
        """A second set changes the level of the one filter, not adds another."""
        log_beginner, publisher = beginner()
        gate = LevelGate(log_beginner)
        gate.set(LogLevel.error)
        gate.set(LogLevel.debug)
        observer = CountingObserver()
        log_beginner.beginLoggingTo([observer], redirectStandardIO=False)
        Logger(namespace="test", observer=publisher).debug("seen")
        self.assertEqual(observer.formatted, ["seen"])


def _highlighter_calls(module: types.ModuleType) -> list[tuple[ast.Call, bool]]:
    """Every call of hltype/hlval in ``module``, and whether a log call holds it."""
    tree = ast.parse(inspect.getsource(module))
    found: list[tuple[ast.Call, bool]] = []

    def visit(node: ast.AST, in_log: bool) -> None:
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("hltype", "hlval"):
                found.append((node, in_log))
            logging = isinstance(func, ast.Attribute) and (
                isinstance(func.value, ast.Attribute) and func.value.attr == "log"
            )
            if logging:
                in_log = True
        for child in ast.iter_child_nodes(node):
            visit(child, in_log)

    visit(tree, False)
    return found


class AutobahnTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(apply_log_level, "info", LevelGate(beginner()[0]))

    def test_highlighters_only_feed_debug_lines(self) -> None:
        """Replacing Autobahn's highlighters can change nothing but log text."""
        for module in (adapter, protocol):
            calls = _highlighter_calls(module)
            self.assertTrue(calls)
            outside = [call.lineno for call, in_log in calls if not in_log]
            self.assertEqual(outside, [], module.__name__)

    def test_debug_off_makes_highlighters_plain(self) -> None:
        """Above debug the colouring functions return their argument untouched."""
        quiet_autobahn_debug(True)
        value: Any = object()
        self.assertIs(protocol.hltype(value), value)
        self.assertIs(adapter.hlval(value), value)

    def test_debug_restores_them(self) -> None:
        """At debug Autobahn formats its lines as it always did."""
        quiet_autobahn_debug(True)
        quiet_autobahn_debug(False)
        self.assertIs(protocol.hltype, hltype)
        self.assertIs(adapter.hlval, hlval)
        self.assertIs(protocol.pformat, pprint.pformat)

    def test_debug_off_prints_options_on_one_line(self) -> None:
        """Still a string of the same value, for the few uses outside a log line."""
        quiet_autobahn_debug(True)
        options = [("a", 1, "Factory"), ("b", [2, 3], "Factory")] * 10
        self.assertEqual(eval(protocol.pformat(options)), options)
        self.assertNotIn("\n", protocol.pformat(options))

    def test_txaio_follows(self) -> None:
        """Autobahn's txaio loggers take the same level, so their calls are no-ops."""
        apply_log_level("warn", LevelGate(beginner()[0]))
        self.assertEqual(txaio.get_global_log_level(), "warn")  # type: ignore[attr-defined]
        logger = txaio.make_logger()  # type: ignore[attr-defined]
        self.assertIs(logger.info, logger.debug)


class QuietConnectionTests(WebSocketTestCase):
    """At warn a connection's own lines are not even emitted."""

    def setUp(self) -> None:
        super().setUp()
        apply_log_level("warn")
        self.addCleanup(apply_log_level, "info")

    def test_no_events_for_clients_coming_and_going(self) -> None:
        """A client opening and closing emits nothing; a refusal still does."""
        self.assertFalse(logged(LogLevel.info))
        connection = self.connect("t=" + mint())
        self.assertTrue(connection.client.opened)
        connection.client.sendClose()
        connection.flush()
        self.assertEqual(self.factory.tracker.open, 0)
        self.assertEqual(self.mentioning("client "), [])
        self.assertFalse(self.connect("t=bad").client.opened)
        self.assertEqual(len(self.mentioning(reasons.INVALID)), 1)
