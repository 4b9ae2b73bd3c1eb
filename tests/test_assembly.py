"""makeService on a MemoryReactor: every listener and the source become ports."""

from __future__ import annotations

import tempfile
from pathlib import Path

import support
from certificates import self_signed_certificate
from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, LogLevel, eventAsText
from twisted.trial.unittest import SynchronousTestCase

from nanostream.ops.collection import TimedFullCollections
from nanostream.ops.dispatch import LeanDispatch
from nanostream.ops.memory import MemoryTrimmer, StartupFreezer, malloc_trim
from nanostream.sources.stdio import StdioSource
from nanostream.sources.stream import LineSourceFactory
from nanostream.tap import ServiceOptions, makeService
from nanostream.websocket import NanostreamServerFactory

SECRET = "assembly-test-secret-long-enough-0123456789"


class MakeServiceTests(SynchronousTestCase):
    """The assembled service listens where the options say, on the given reactor."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.events = support.capture_logs(self)

    def assemble(self, *arguments: str) -> MultiService:
        """Parse the arguments as twistd would and build the service."""
        options = ServiceOptions(environ={})
        options.parseOptions(list(arguments))
        service = makeService(options, reactor=self.reactor)
        self.assertTrue(IService.providedBy(service))
        return service

    def start(self, service: MultiService) -> None:
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)

    def announced(self) -> list[tuple[str, str]]:
        return [
            (event["what"], event["address"])
            for event in self.events
            if event.get("log_namespace") == "nanostream.listening"
        ]

    def test_every_listener_and_endpoint_source_listen(self) -> None:
        """Each --listen (tcp, ssl, unix) and an endpoint --source become ports."""
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        key, cert = self_signed_certificate(Path(directory.name))
        service = self.assemble(
            "--secret",
            SECRET,
            "--listen",
            "tcp:8080:interface=127.0.0.1",
            "--listen",
            f"ssl:8443:privateKey={key}:certKey={cert}",
            "--listen",
            "unix:/run/nanostream/ws.sock",
            "--source",
            "tcp:9000",
        )
        self.start(service)
        reactor = self.reactor
        listening = {port: factory for port, factory, *_ in reactor.tcpServers}
        self.assertEqual(sorted(listening), [8080, 9000])
        [(ssl_port, ssl_factory, *_)] = reactor.sslServers
        [(unix_path, unix_factory, *_)] = reactor.unixServers
        self.assertEqual(ssl_port, 8443)
        self.assertEqual(unix_path, "/run/nanostream/ws.sock")
        # One WebSocket factory, and so one fan-out, behind every listener.
        self.assertIsInstance(listening[8080], NanostreamServerFactory)
        self.assertIs(ssl_factory, listening[8080])
        self.assertIs(unix_factory, listening[8080])
        self.assertIsInstance(listening[9000], LineSourceFactory)
        # Producers are read ahead while the broadcaster lets clients in.
        self.assertIs(listening[9000].ahead, listening[8080].broadcaster.read_ahead)
        self.assertEqual(
            sorted(self.announced()),
            [
                ("source", "tcp:0.0.0.0:9000"),
                ("websocket", "ssl:0.0.0.0:8443"),
                ("websocket", "tcp:0.0.0.0:8080"),
                ("websocket", "unix:/run/nanostream/ws.sock"),
            ],
        )

    def test_default_listener(self) -> None:
        """Without --listen the service listens on tcp:8080."""
        self.start(self.assemble("--secret", SECRET, "--source", "tcp:9000"))
        self.assertEqual(
            sorted(port for port, *_ in self.reactor.tcpServers), [8080, 9000]
        )

    def test_stdio_source_adds_the_stdio_service(self) -> None:
        """--source stdio adds a StdioSource and no source port."""
        service = self.assemble("--secret", SECRET, "--source", "stdio")
        sources = [child for child in service if isinstance(child, StdioSource)]
        self.assertEqual(len(sources), 1)
        # Starting it would read this test process's stdin: start the rest.
        for child in service:
            if child is not sources[0]:
                child.privilegedStartService()
                child.startService()
                self.addCleanup(child.stopService)
        [(port, factory, *_)] = self.reactor.tcpServers
        self.assertEqual(port, 8080)
        # Stdin is read ahead while that factory's broadcaster lets clients in.
        self.assertIs(sources[0].ahead, factory.broadcaster.read_ahead)

    def test_endpoint_source_has_no_stdio(self) -> None:
        """An endpoint --source leaves stdin alone."""
        service = self.assemble("--secret", SECRET, "--source", "tcp:9000")
        self.assertEqual(
            [child for child in service if isinstance(child, StdioSource)], []
        )

    def test_ping_options_reach_the_factory(self) -> None:
        """--ping-interval and --ping-timeout configure Autobahn's auto-ping."""
        self.start(
            self.assemble(
                "--secret",
                SECRET,
                "--source",
                "tcp:9000",
                "--ping-interval",
                "7",
                "--ping-timeout",
                "4",
            )
        )
        factory = {port: f for port, f, *_ in self.reactor.tcpServers}[8080]
        self.assertEqual((factory.autoPingInterval, factory.autoPingTimeout), (7, 4))

    def test_short_secret_warned_at_start(self) -> None:
        """A secret under the recommended length is a warning at start."""
        service = self.assemble("--secret", "k3y-Xq9", "--source", "tcp:9000")
        self.assertEqual(self.warnings(), [])
        self.start(service)
        [event] = self.warnings()
        self.assertIn("shorter than", event["warning"])
        self.assertNotIn("k3y-Xq9", eventAsText(event))

    def test_no_auth_warned_at_start(self) -> None:
        """--no-auth is a warning when the service starts."""
        self.start(self.assemble("--no-auth", "--source", "tcp:9000"))
        [event] = self.warnings()
        self.assertIn("--no-auth", event["warning"])

    def warnings(self) -> list[LogEvent]:
        return [
            event
            for event in self.events
            if event.get("log_namespace") == "nanostream.clients"
            and event["log_level"] == LogLevel.warn
        ]

    def test_reactor_events_go_through_the_lean_dispatch(self) -> None:
        """The dispatch is one of the services, started before the reactor runs."""
        service = self.assemble("--secret", SECRET)
        [dispatch] = [s for s in service if isinstance(s, LeanDispatch)]
        self.start(service)
        self.assertTrue(dispatch.running)
        # A fake reactor is not Twisted's epoll loop: left alone.
        self.assertFalse(dispatch.installed)


class MemoryAssemblyTests(SynchronousTestCase):
    """The assembled service gives memory back and forgets expired tokens."""

    def assemble(self, *arguments: str) -> MultiService:
        options = ServiceOptions(environ={})
        options.parseOptions([*arguments, "--source", "tcp:9000"])
        return makeService(options, reactor=MemoryReactorClock())

    def test_trimmer_where_malloc_trim_exists(self) -> None:
        """A trimmer runs where the C library can trim, and nowhere else."""
        service = self.assemble("--secret", SECRET)
        trimmers = [s for s in service if isinstance(s, MemoryTrimmer)]
        self.assertEqual(len(trimmers), 0 if malloc_trim() is None else 1)

    def test_ledger_pruned_on_a_timer(self) -> None:
        """The in-memory ledger is pruned by a timer of its own."""
        service = self.assemble("--secret", SECRET)
        calls = [s.call[0] for s in service if isinstance(s, TimerService)]
        self.assertIn("prune", [getattr(call, "__name__", None) for call in calls])

    def test_no_pruner_without_tokens(self) -> None:
        """Under --no-auth there is no ledger to prune."""
        service = self.assemble("--no-auth")
        calls = [s.call[0] for s in service if isinstance(s, TimerService)]
        self.assertNotIn("prune", [getattr(call, "__name__", None) for call in calls])

    def test_startup_freezer_starts_last(self) -> None:
        """The heap is frozen only once every other service has started."""
        service = self.assemble("--secret", SECRET)
        self.assertIsInstance(list(service)[-1], StartupFreezer)

    def test_full_collections_timed(self) -> None:
        """The service runs full collections from its timer."""
        service = self.assemble("--secret", SECRET)
        timed = [s for s in service if isinstance(s, TimedFullCollections)]
        self.assertEqual(len(timed), 1)
