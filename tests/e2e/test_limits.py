"""Slowloris and --max-clients on the real ``twistd -n nanostream``."""

from __future__ import annotations

import contextlib
import re
import socket
import time

from .harness import (
    EVENT_TIMEOUT,
    SharedServiceTestCase,
    receive,
)

HANDSHAKE_TIMEOUT = 1.0


class SlowlorisTests(SharedServiceTestCase):
    """A client that trickles its handshake is dropped at --handshake-timeout."""

    options = {"options": ["--handshake-timeout", str(HANDSHAKE_TIMEOUT)]}

    def trickle_until_dropped(self, partial: bytes) -> tuple[float, str]:
        """Send ``partial`` a byte per 0.1 s until the server drops us.

        Each pause is a wait for the server's close, not a sleep.  Returns
        the seconds from connect to the close, and our peer address.
        """
        address = self.service.websocket
        sock = socket.create_connection((address.host, address.port), EVENT_TIMEOUT)
        self.addCleanup(sock.close)
        peer = "tcp4:{}:{}".format(*sock.getsockname()[:2])
        started = time.monotonic()
        sock.settimeout(0.1)
        for index in range(len(partial)):
            try:
                sock.sendall(partial[index : index + 1])
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
            self.fail("the server answered a request that never ended")
        else:
            self.fail("the server kept a trickling client for the whole request")
        return time.monotonic() - started, peer

    def test_trickling_client_dropped(self) -> None:
        """A partial handshake sent slowly is dropped after the timeout and logged."""
        mark = self.service.log.mark()
        token = self.service.mint()
        self.service.sent_tokens.append(token)
        partial = (
            b"GET /?t=" + token.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Upgrade: websocket\r\n" + b"X-Slow: " + b"z" * 200
        )
        elapsed, peer = self.trickle_until_dropped(partial)
        self.assertGreaterEqual(elapsed, HANDSHAKE_TIMEOUT * 0.9)
        self.assertLess(elapsed, EVENT_TIMEOUT)
        line = self.service.log.wait_for(
            re.escape(f"dropping {peer}: no complete handshake in")
            + r" 1(\.0)? seconds",
            after=mark,
        ).string
        self.assertIn("#info]", line)

    def test_valid_client_unaffected(self) -> None:
        """A client that completes its handshake stays past the timeout."""
        client = self.service.connect(self.service.mint())
        mark = self.service.log.mark()
        # Wait for another client's handshake timeout to pass, as an event.
        address = self.service.websocket
        with socket.create_connection(
            (address.host, address.port), EVENT_TIMEOUT
        ) as idle:
            idle.settimeout(EVENT_TIMEOUT)
            # The server aborts the connection: a reset, or an orderly end.
            with contextlib.suppress(ConnectionResetError):
                self.assertEqual(idle.recv(1), b"")
        self.service.log.wait_for("no complete handshake", after=mark)
        self.service.write(b"after the timeout\n")
        self.assertEqual(receive(client, 1), ["after the timeout"])


class MaxClientsTests(SharedServiceTestCase):
    """--max-clients N refuses the N+1st handshake with 503."""

    options = {"options": ["--max-clients", "2"]}

    def test_refused_beyond_the_bound_then_admitted(self) -> None:
        """The third client gets 503 too many clients; once one leaves it gets in."""
        service = self.service
        first = service.connect(service.mint())
        second = service.connect(service.mint())
        token = service.mint()
        mark = service.log.mark()
        refusal = service.refuse(token)
        self.assertEqual(refusal.status, 503)
        line = service.log.wait_for(
            r"rejected handshake from " + re.escape(refusal.peer) + r"\b", after=mark
        ).string
        self.assertTrue(line.endswith(": too many clients"), line)
        mark = service.log.mark()
        first.close()
        service.log.wait_for(r"client disconnected: .* \(1 clients\)", after=mark)
        third = service.connect(token)
        service.write(b"room again\n")
        self.assertEqual(receive(third, 1), ["room again"])
        self.assertEqual(receive(second, 1), ["room again"])
