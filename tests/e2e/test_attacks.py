"""A handful of the attack corpus against the real ``twistd -n nanostream``.

The unit corpus (``tests/test_attack_corpus.py``) covers every case over an
in-memory connection; these prove the same answers on real sockets, and
that after each attack a valid client still connects and receives a line.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote

from .harness import (
    EVENT_TIMEOUT,
    Address,
    Nanostream,
    SharedServiceTestCase,
    padded,
    receive,
    unsigned,
)

ORIGIN = "https://app.example.com"

#: What an opening request carries besides its request line.
_HEADERS = (
    "Host: {host}:{port}\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Origin: {origin}\r\n"
    "\r\n"
)


def raw_request(address: Address, target: str, origin: str = ORIGIN) -> bytes:
    """A complete opening request for ``target``, as bytes."""
    headers = _HEADERS.format(host=address.host, port=address.port, origin=origin)
    return f"GET {target} HTTP/1.1\r\n{headers}".encode("latin-1")


def send_raw(address: Address, data: bytes) -> tuple[bytes, str]:
    """Send ``data`` while reading the answer; the status line and the peer.

    A server that refuses early stops reading, so the sender runs in a
    thread and may end with a broken pipe while the answer is read here.
    """
    sock = socket.create_connection((address.host, address.port), EVENT_TIMEOUT)
    peer = "tcp4:{}:{}".format(*sock.getsockname()[:2])

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    try:
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    finally:
        sock.close()
        sender.join(EVENT_TIMEOUT)
    return answer.split(b"\r\n", 1)[0], peer


def memory_peak_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None, status
    return int(match[1])


class AttackTests(SharedServiceTestCase):
    """Hostile handshakes on a real service with --origin set."""

    options = {"options": ["--origin", ORIGIN]}

    def assertRefusedInLog(self, mark: int, peer: str, reason: str) -> None:
        """One rejection line names ``reason`` and the peer."""
        line = self.service.log.wait_for(
            r"rejected handshake from " + re.escape(peer) + r"\b", after=mark
        ).string
        self.assertTrue(line.endswith(f": {reason}"), line)

    def assertStillServing(self) -> None:
        """A fresh valid client connects and receives the next line."""
        client = self.service.connect(self.service.mint(), origin=ORIGIN)
        line = f"still serving {time.monotonic_ns()}"
        self.service.write(line.encode() + b"\n")
        self.assertEqual(receive(client, 1), [line])
        client.close()

    def test_alg_none(self) -> None:
        """An unsigned alg=none token gets 401 invalid token."""
        mark = self.service.log.mark()
        refusal = self.service.refuse(
            unsigned(exp=int(time.time()) + 300), origin=ORIGIN
        )
        self.assertEqual(refusal.status, 401)
        self.assertRefusedInLog(mark, refusal.peer, "invalid token")
        self.assertStillServing()

    def test_reencoded_reused_token(self) -> None:
        """A used token with its signature padded and escaped is already used."""
        token = self.service.mint()
        self.service.connect(token, origin=ORIGIN)
        mark = self.service.log.mark()
        refusal = self.service.refuse(query="?t=" + quote(padded(token)), origin=ORIGIN)
        self.assertEqual(refusal.status, 401)
        self.assertRefusedInLog(mark, refusal.peer, "token already used")
        self.assertStillServing()

    def test_missing_origin(self) -> None:
        """Without an Origin header, --origin set, a valid token gets 403."""
        mark = self.service.log.mark()
        refusal = self.service.refuse(self.service.mint())
        self.assertEqual(refusal.status, 403)
        self.assertRefusedInLog(mark, refusal.peer, "origin not allowed")
        self.assertStillServing()

    def test_one_mebibyte_token(self) -> None:
        """A 1 MiB token is answered 414 at once, never buffered; others go on."""
        address = self.service.websocket
        token = self.service.mint(pad="x" * (768 * 1024))
        self.assertGreater(len(token), 1024 * 1024)
        self.service.sent_tokens.append(token)
        request = raw_request(address, "/?t=" + token)
        pid = self.service.process.pid
        peak_before = memory_peak_kib(pid)
        mark = self.service.log.mark()
        # Many at once: buffering them whole would take 32 MiB.
        answers: list[tuple[bytes, str]] = []
        senders = [
            threading.Thread(target=lambda: answers.append(send_raw(address, request)))
            for _ in range(32)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(2 * EVENT_TIMEOUT)
        self.assertEqual(len(answers), 32)
        for status_line, peer in answers:
            self.assertEqual(status_line, b"HTTP/1.1 414 request line too long")
            self.assertRefusedInLog(mark, peer, "request line too long")
        grown = memory_peak_kib(pid) - peak_before
        self.assertLess(grown, 8 * 1024, f"peak RSS grew by {grown} KiB")
        self.assertStillServing()


class AttackFixtureTests(SharedServiceTestCase):
    """The helpers above build requests the real service accepts."""

    def test_raw_request_opens(self) -> None:
        """A raw request with a valid token gets 101, so refusals mean something."""
        service: Nanostream = self.service
        token = service.mint()
        service.sent_tokens.append(token)
        status_line, _ = send_raw(
            service.websocket, raw_request(service.websocket, "/?t=" + token)
        )
        self.assertEqual(status_line, b"HTTP/1.1 101 Switching Protocols")
