"""Listening services: bound through the given reactor, announced once bound."""

from __future__ import annotations

import support
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, RaisingMemoryReactor
from twisted.logger import LogEvent, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from nanostream.listening import announced_service, describe_address


class BoundPort:
    """Just enough of an IListeningPort to be described."""

    def __init__(self, address: IAddress) -> None:
        self.address = address

    def getHost(self) -> IAddress:
        return self.address


class DescribeAddressTests(SynchronousTestCase):
    """describe_address writes addresses the way the start-up line shows them."""

    def test_ipv4(self) -> None:
        """An IPv4 address is kind:host:port."""
        port = BoundPort(IPv4Address("TCP", "127.0.0.1", 8080))
        self.assertEqual(describe_address("tcp", port), "tcp:127.0.0.1:8080")

    def test_ipv6_bracketed(self) -> None:
        """An IPv6 host is bracketed so the port stays readable."""
        port = BoundPort(IPv6Address("TCP", "::1", 8443))
        self.assertEqual(describe_address("ssl", port), "ssl:[::1]:8443")

    def test_unix_bytes_path(self) -> None:
        """A UNIX socket is named by its path, given as bytes."""
        port = BoundPort(UNIXAddress(b"/run/nanostream.sock"))
        self.assertEqual(describe_address("unix", port), "unix:/run/nanostream.sock")

    def test_unix_text_path(self) -> None:
        """A UNIX socket path given as text is used as it is."""
        port = BoundPort(UNIXAddress("/run/nanostream.sock"))
        self.assertEqual(describe_address("unix", port), "unix:/run/nanostream.sock")


class AnnouncedServiceTests(SynchronousTestCase):
    """announced_service listens on the reactor it is given and says so."""

    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        self.factory = Factory.forProtocol(Protocol)
        self.events = support.capture_logs(self)

    def announcements(self) -> list[LogEvent]:
        return [
            e for e in self.events if e.get("log_namespace") == "nanostream.listening"
        ]

    def start(self, description: str, what: str = "websocket") -> None:
        service = announced_service(description, self.factory, what, self.reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)

    def test_tcp_listens_and_announces(self) -> None:
        """A tcp endpoint listens with our factory and logs its address once."""
        self.start("tcp:8080:interface=\\:\\:1")
        [(port, factory, _, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (8080, "::1"))
        self.assertIs(factory, self.factory)
        [event] = self.announcements()
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["what"], "websocket")
        self.assertEqual(event["address"], "tcp:[::1]:8080")

    def test_unix_listens_and_announces(self) -> None:
        """A unix endpoint listens on its path and names it."""
        self.start("unix:/run/nanostream/in.sock", what="source")
        [(address, factory, *_)] = self.reactor.unixServers
        self.assertEqual(address, "/run/nanostream/in.sock")
        self.assertIs(factory, self.factory)
        [event] = self.announcements()
        self.assertEqual(event["what"], "source")
        self.assertEqual(event["address"], "unix:/run/nanostream/in.sock")

    def test_nothing_announced_before_start(self) -> None:
        """Building the service neither listens nor announces."""
        announced_service("tcp:8080", self.factory, "websocket", self.reactor)
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(self.announcements(), [])

    def test_failed_bind_fails_start(self) -> None:
        """A port that cannot be bound raises at start-up and announces nothing."""
        reactor = RaisingMemoryReactor(
            listenException=CannotListenError("", 8080, OSError("in use"))
        )
        service = announced_service("tcp:8080", self.factory, "websocket", reactor)
        self.assertRaises(CannotListenError, service.privilegedStartService)
        self.assertEqual(self.announcements(), [])
