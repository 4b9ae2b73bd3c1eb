"""An endpoint for Redis client tests that needs no network and no Redis.

Each connection attempt either fails as told or joins the factory's
protocol to a ``StringTransport``; the test reads what the client wrote
and feeds back RESP replies by hand.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from nanostream.redis.url import RedisTarget

TARGET = RedisTarget("127.0.0.1", 6379, channel="feed")


class FakeEndpoint:
    """Connects every attempt to a StringTransport unless ``refusing``."""

    def __init__(self) -> None:
        self.refusing = False
        self.attempts = 0
        self.protocols: list[Any] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts += 1
        if self.refusing:
            return fail(ConnectionRefusedError(string="Connection refused"))
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 6379))
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return succeed(protocol)

    @property
    def last(self) -> Any:
        return self.protocols[-1]


def written(protocol: Any) -> bytes:
    """What the client wrote since the last call, and forget it."""
    data = protocol.transport.value()
    protocol.transport.clear()
    return data


def feed(protocol: Any, data: bytes, clock: Clock) -> None:
    """Deliver ``data`` as one read and let txredisapi's parser finish it.

    Without hiredis the parser continues after each bulk reply on a later
    turn of the (fake) clock, so run the turns due now until none is left.
    """
    protocol.dataReceived(data)
    for _ in range(100_000):
        if not any(
            call.getTime() <= clock.seconds() for call in clock.getDelayedCalls()
        ):
            return
        clock.advance(0)
    raise AssertionError("the parser never finished")


def lose(protocol: Any) -> None:
    """The connection closes under the client."""
    protocol.transport.disconnecting = True
    protocol.connectionLost(Failure(ConnectionDone("closed")))


def message(channel: bytes, payload: bytes) -> bytes:
    """A pub/sub message push as Redis sends it."""
    return b"*3\r\n" + b"".join(bulk(part) for part in (b"message", channel, payload))


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def subscribed(channel: bytes) -> bytes:
    return b"*3\r\n" + bulk(b"subscribe") + bulk(channel) + b":1\r\n"


class FixedRandom:
    """A ``random.random`` stand-in returning the values given, then the last."""

    def __init__(self, *values: float) -> None:
        self._values = list(values)

    def __call__(self) -> float:
        if len(self._values) > 1:
            return self._values.pop(0)
        return self._values[0]
