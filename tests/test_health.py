"""Liveness, readiness and the ``--metrics`` site that serves them."""

from __future__ import annotations

import io

from prometheus_client import CollectorRegistry
from twisted.internet import endpoints, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nanostream.auth.admission import Admission
from nanostream.auth.origins import OriginPolicy
from nanostream.broadcast import Broadcaster
from nanostream.clients import ClientTracker
from nanostream.listening import announced_service
from nanostream.ops.access_log import redacting_site
from nanostream.ops.health import Readiness
from nanostream.ops.site import MonitorSite, monitor_resource, monitor_site
from nanostream.sources import SourceStatus
from nanostream.tap import ServiceOptions, makeService


def get(site: Factory, path: bytes) -> tuple[int, str]:
    """GET ``path`` from ``site`` over a fake transport: status and body."""
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: monitor\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    channel.connectionLost(None)
    return status, body.decode("utf-8")


class ReadinessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.source = SourceStatus()
        self.source.up("reading stdin")
        self.listener = announced_service(
            "tcp:8080", Factory(), "websocket", MemoryReactor()
        )
        self.readiness = Readiness(self.source, [("tcp:8080", self.listener)])

    def test_ready(self) -> None:
        """A connected source and a bound listener make the node ready."""
        self.listener.startService()
        self.assertEqual(self.readiness.problems(), [])

    def test_listener_not_started(self) -> None:
        """A listener that is not bound yet is named."""
        self.assertEqual(self.readiness.problems(), ["listener tcp:8080 is not up"])

    def test_listener_stopped(self) -> None:
        """A listener stops counting as up once it stops."""
        self.listener.startService()
        self.listener.stopService()
        self.assertEqual(self.readiness.problems(), ["listener tcp:8080 is not up"])

    def test_source_down(self) -> None:
        """A source that cannot deliver gives its own detail."""
        self.listener.startService()
        self.source.down("no producer connected")
        self.assertEqual(
            self.readiness.problems(),
            ["source not connected: no producer connected"],
        )


class PageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.source = SourceStatus()
        registry = CollectorRegistry()
        resource = monitor_resource(registry, Readiness(self.source, []))
        self.site = redacting_site(resource, reactor=Clock())

    def test_healthz(self) -> None:
        """/healthz answers 200 ok whatever the source does."""
        self.assertEqual(get(self.site, b"/healthz"), (200, "ok\n"))

    def test_readyz_unavailable_with_reason(self) -> None:
        """/readyz answers 503 with the source's detail while it is down."""
        self.source.down("stdin closed")
        self.assertEqual(
            get(self.site, b"/readyz"), (503, "source not connected: stdin closed\n")
        )

    def test_readyz_ready(self) -> None:
        """/readyz answers 200 once the source is up."""
        self.source.up("1 producers connected")
        self.assertEqual(get(self.site, b"/readyz"), (200, "ready\n"))

    def test_unknown_path(self) -> None:
        """Anything else is 404."""
        self.assertEqual(get(self.site, b"/nothing")[0], 404)


class ProbeLogTests(SynchronousTestCase):
    """Probes are access-logged only at debug; a failed one always, at warn."""

    def site(self, *, probes_logged: bool) -> tuple[MonitorSite, io.StringIO]:
        self.source = SourceStatus()
        self.source.up("reading stdin")
        resource = monitor_resource(CollectorRegistry(), Readiness(self.source, []))
        site = redacting_site(resource, reactor=Clock(), site_class=MonitorSite)
        assert isinstance(site, MonitorSite)
        site.probes_logged = probes_logged
        site.startFactory()
        self.addCleanup(site.stopFactory)
        access = io.StringIO()
        site.logFile = access
        return site, access

    def test_answered_probe_not_logged(self) -> None:
        """A 200 from /healthz or /readyz writes no access line and no event."""
        site, access = self.site(probes_logged=False)
        with capturedLogs() as events:
            self.assertEqual(get(site, b"/healthz")[0], 200)
            self.assertEqual(get(site, b"/readyz")[0], 200)
        self.assertEqual((access.getvalue(), events), ("", []))

    def test_answered_probe_logged_at_debug(self) -> None:
        """With probes logged, each gets its usual access line."""
        site, access = self.site(probes_logged=True)
        get(site, b"/healthz")
        self.assertIn('"GET /healthz HTTP/1.1" 200', access.getvalue())

    def test_failed_probe_is_a_warning(self) -> None:
        """A 503 from /readyz is one warn event naming the path and the status."""
        site, access = self.site(probes_logged=False)
        self.source.down("stdin closed")
        with capturedLogs() as events:
            self.assertEqual(get(site, b"/readyz")[0], 503)
        self.assertEqual(access.getvalue(), "")
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertEqual((events[0]["path"], events[0]["code"]), ("/readyz", 503))
        self.assertRegex(events[0]["peer"], r"^tcp4:[0-9.]+:[0-9]+$")

    def test_other_paths_logged(self) -> None:
        """A request for anything but a probe is access-logged as on any site."""
        site, access = self.site(probes_logged=False)
        get(site, b"/nothing")
        self.assertIn('"GET /nothing HTTP/1.1" 404', access.getvalue())


class Response(Protocol):
    """Sends one HTTP/1.0 GET of /metrics and collects the whole response."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET /metrics HTTP/1.0\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(b"".join(self.received))


class MetricsPageTests(TestCase):
    """``/metrics`` runs prometheus_client's WSGI app in the reactor's threads."""

    def test_scrape_over_http(self) -> None:
        """A real HTTP GET of /metrics returns the service's metrics."""
        clock = Clock()
        broadcaster = Broadcaster(clock=clock)
        broadcaster.broadcast([b"one", b"two"])
        source = SourceStatus()
        site = monitor_site(
            broadcaster=broadcaster,
            tracker=ClientTracker(),
            admission=Admission(clock, None, None, OriginPolicy(())),
            source=source,
            listeners=[],
            reactor=reactor,
        )
        endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        d = endpoint.listen(site)

        def listening(port: IListeningPort) -> Deferred[bytes]:
            self.addCleanup(port.stopListening)
            client = endpoints.TCP4ClientEndpoint(
                reactor, "127.0.0.1", port.getHost().port
            )
            response = Response()
            connected = endpoints.connectProtocol(client, response)
            connected.addCallback(lambda _: response.done)
            return connected

        def read(response: bytes) -> None:
            head, _, body = response.partition(b"\r\n\r\n")
            self.assertIn(b" 200 ", head.split(b"\r\n", 1)[0])
            text = body.decode("utf-8")
            self.assertIn("nanostream_lines_received_total 2.0\n", text)
            self.assertIn("nanostream_source_connected 0.0\n", text)

        d.addCallback(listening)
        d.addCallback(read)
        return d


class MetricsOptionTests(SynchronousTestCase):
    def parse(self, argv: list[str]) -> ServiceOptions:
        options = ServiceOptions(environ={})
        options.parseOptions(["--secret", "s" * 32, *argv])
        return options

    def test_off_by_default(self) -> None:
        """Without --metrics no monitoring listener is made."""
        self.assertIsNone(self.parse([])["metrics"])

    def test_bad_endpoint(self) -> None:
        """A --metrics endpoint that does not parse is a usage error naming it."""
        options = ServiceOptions(environ={})
        e = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--secret", "s" * 32, "--metrics", "nonsense:1"],
        )
        self.assertIn("--metrics 'nonsense:1'", str(e))

    def test_adds_one_listener(self) -> None:
        """--metrics adds exactly one more listening service."""
        plain = makeService(self.parse(["--source", "tcp:0"]))
        monitored = makeService(self.parse(["--source", "tcp:0", "--metrics", "tcp:0"]))
        self.assertEqual(len(list(monitored)), len(list(plain)) + 1)
