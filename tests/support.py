"""What the unit tests share: a server on a fake clock, captured logs, tokens.

Tests that check the verifier itself keep minting with ``jwt.encode``, so
that a mistake here cannot hide one there.
"""

from __future__ import annotations

import secrets
from typing import Any, cast

import jwt
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from nanostream.server import Server, make_server

#: The HS256 key of the tests' servers: long enough for HS384 too.
SECRET = b"unit-test-secret-long-enough-for-hs256-and-hs384-0123456789abcdef"
#: The moment a test's Clock is advanced to, so that tokens look current.
NOW = 1_700_000_000.0


def mint(
    key: bytes = SECRET, *, now: float = NOW, ttl: float = 60, **claims: Any
) -> str:
    """An HS256 token for ``key``, expiring ``ttl`` seconds after ``now``.

    Each token gets a fresh ``jti``, so two tokens minted alike still differ.
    A claim given as None is left out (``exp=None``: a token without ``exp``).
    """
    claims = {"exp": now + ttl, "jti": secrets.token_hex(8), **claims}
    present = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(present, key, algorithm="HS256")


def serve(
    clock: IReactorTime,
    key: bytes | None = SECRET,
    *,
    close_handshake_timeout: float | None = 0,
    **options: Any,
) -> Server:
    """:func:`~nanostream.server.make_server` on ``clock``, Autobahn's timers off.

    Auto-ping and the opening and closing handshake timeouts stay off unless
    the test names them: each would leave a timer behind.

    :param close_handshake_timeout: None leaves Autobahn's default.
    :param options: keywords of ``make_server``.
    """
    options.setdefault("ping_interval", 0)
    options.setdefault("handshake_timeout", 0)
    server = make_server(key, reactor=clock, **options)
    if close_handshake_timeout is not None:
        server.factory.setProtocolOptions(closeHandshakeTimeout=close_handshake_timeout)
    return server


def capture_logs(case: SynchronousTestCase) -> list[LogEvent]:
    """Every log event from now until ``case`` ends, for its assertions."""
    captured = capturedLogs()
    events = captured.__enter__()
    case.addCleanup(captured.__exit__, None, None, None)
    return cast(list[LogEvent], events)


def forbid_global_timers(case: SynchronousTestCase) -> None:
    """Fail ``case`` if it leaves a timer on the global reactor.

    Autobahn's client schedules its timers there whatever reactor it is
    given; a test that forgets to switch one off would leak it into the next.
    """
    from twisted.internet import reactor

    before = set(reactor.getDelayedCalls())

    def check() -> None:
        left = [call for call in reactor.getDelayedCalls() if call not in before]
        for call in left:
            call.cancel()
        case.assertEqual(left, [])

    case.addCleanup(check)


def reactor_turn(clock: Clock) -> None:
    """Run the calls due now, as one turn of a real reactor would.

    ``Clock.advance`` also runs what those calls schedule for now; a reactor
    leaves that for its next turn, after the next poll.
    """
    now = clock.seconds()
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= now]
    for call in due:
        if call.active():
            clock.calls.remove(call)
            call.called = True
            call.func(*call.args, **call.kw)
