"""Faults on the real service: producers and clients that vanish, shutdown under load.

Each test breaks something the way production does (a killed process, a
TCP reset, the end of stdin, a signal, a scraper in a loop) while lines
are flowing, and checks that the clients still connected see exactly what
they should and that the log has no traceback (the harness checks that in
cleanup).
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from .harness import (
    EVENT_TIMEOUT,
    LISTEN_LOOPBACK,
    STOP_TIMEOUT,
    Address,
    Nanostream,
    ServiceTestCase,
    receive,
)

GOING_AWAY = 1001

#: No proxy from the environment may stand between the test and loopback.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (RST) instead of an orderly FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def raw_client(
    service: Nanostream, *, rcvbuf: int | None = None
) -> tuple[socket.socket, str]:
    """A socket that completed a WebSocket handshake; what it read beyond it.

    Returns the socket and its peer name as the server logs it.
    """
    token = service.mint()
    service.sent_tokens.append(token)
    address = service.websocket
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(EVENT_TIMEOUT)
    sock.connect((address.host, address.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /?t={token} HTTP/1.1\r\nHost: {address.host}:{address.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)
        assert chunk, f"closed during the handshake: {response!r}"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101 "), response
    host, port = sock.getsockname()[:2]
    return sock, f"tcp4:{host}:{port}"


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``sock``, failing if it closes first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def until_close(
    client: ClientConnection, limit: int
) -> tuple[list[str | bytes], int | None]:
    """Every message up to the server's close, and the close code."""
    messages: list[str | bytes] = []
    for _ in range(limit):
        try:
            messages.append(client.recv(timeout=EVENT_TIMEOUT))
        except ConnectionClosed as e:
            return messages, None if e.rcvd is None else e.rcvd.code
    raise AssertionError(f"no close after {limit} messages")


def numbered(messages: list[str | bytes]) -> list[int]:
    """The numbers of ``line N`` messages."""
    return [int(str(message).split()[1]) for message in messages]


class Writer:
    """Writes ``line N`` to a sink from a thread until told to stop."""

    def __init__(self, write: Callable[[bytes], None], per_write: int = 10) -> None:
        self.written = 0
        self._write = write
        self._per_write = per_write
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = self.written
            batch = "".join(
                f"line {n}\n" for n in range(start, start + self._per_write)
            )
            try:
                self._write(batch.encode())
            except OSError:
                return
            self.written += self._per_write
            self._stop.wait(0.005)

    def stop(self) -> int:
        """Stop writing; how many lines went out."""
        self._stop.set()
        self._thread.join(STOP_TIMEOUT)
        return self.written


class ProducerFaultTests(ServiceTestCase):
    """Producers of an endpoint source that end badly (docs/decisions.rst)."""

    def test_killed_producer_then_the_next_one(self) -> None:
        """A killed producer's half line goes out (the kernel closes with FIN);
        the next producer's lines follow."""
        service = self.start(source=LISTEN_LOOPBACK)
        client = service.connect(service.mint())
        source = service.source
        producer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import socket, sys, time\n"
                f"s = socket.create_connection(({source.host!r}, {source.port}))\n"
                "s.sendall(b'complete 1\\nhalf a li')\n"
                "time.sleep(60)\n",
            ]
        )
        self.addCleanup(_kill, producer)
        self.assertEqual(receive(client, 1), ["complete 1"])
        mark = service.log.mark()
        producer.kill()
        producer.wait(STOP_TIMEOUT)
        self.assertEqual(receive(client, 1), ["half a li"])
        service.log.wait_for(r"producer disconnected", after=mark)
        with service.produce() as following:
            following.sendall(b"next 1\nnext 2\n")
            self.assertEqual(receive(client, 2), ["next 1", "next 2"])

    def test_reset_producer_loses_its_half_line_only(self) -> None:
        """A producer's reset discards its unfinished line with a warning;
        its complete lines were delivered and the next producer's flow."""
        service = self.start(source=LISTEN_LOOPBACK)
        client = service.connect(service.mint())
        producer = service.produce()
        producer.sendall(b"whole\nhalf a li")
        self.assertEqual(receive(client, 1), ["whole"])
        mark = service.log.mark()
        reset(producer)
        service.log.wait_for(
            r"#warn\] discarded an unfinished line of 9 bytes .*lost", after=mark
        )
        with service.produce() as following:
            following.sendall(b"next\n")
            self.assertEqual(receive(client, 1), ["next"])


class ClientResetTests(ServiceTestCase):
    """Clients whose TCP connection is reset in the middle of a frame."""

    def test_reset_in_the_middle_of_a_client_frame(self) -> None:
        """A client that resets halfway through sending a frame leaves alone."""
        service = self.start()
        listener = service.connect(service.mint())
        sock, peer = raw_client(service)
        # A masked text frame announcing 100 bytes, of which 10 are sent.
        sock.sendall(bytes([0x81, 0x80 | 100]) + os.urandom(4) + b"0123456789")
        mark = service.log.mark()
        reset(sock)
        service.log.wait_for(rf"client disconnected: {peer} ", after=mark)
        service.write(b"after the reset\n")
        self.assertEqual(receive(listener, 1), ["after the reset"])

    def test_reset_while_the_server_is_mid_frame(self) -> None:
        """A client that resets after receiving the start of a 1 MiB frame
        leaves alone; the others get that line whole, and the server goes on
        serving them and new clients."""
        service = self.start()
        listener = service.connect(service.mint())
        sock, peer = raw_client(service, rcvbuf=4096)
        big = b"x" * (1 << 20)
        service.write(big + b"\nnext\n")
        self.assertEqual(receive(listener, 2), [big.decode(), "next"])
        # The raw client has the start of the frame: an unmasked text frame
        # announcing the whole line (64-bit length), then the line's bytes.
        # It reads only that much, so it holds part of a frame when it resets.
        header = read_exactly(sock, 10)
        self.assertEqual(header[:2], bytes([0x81, 127]))
        self.assertEqual(struct.unpack("!Q", header[2:])[0], len(big))
        self.assertEqual(read_exactly(sock, 1000), big[:1000])
        mark = service.log.mark()
        reset(sock)
        service.log.wait_for(rf"client disconnected: {peer} ", after=mark)
        late = service.connect(service.mint())
        service.write(b"after the reset\n")
        self.assertEqual(receive(listener, 1), ["after the reset"])
        self.assertEqual(receive(late, 1), ["after the reset"])


class EndUnderLoadTests(ServiceTestCase):
    """Stopping while lines flow to many clients: every line, then 1001."""

    CLIENTS = 40

    def test_stdin_closed_while_clients_listen(self) -> None:
        """At the end of stdin mid-stream each client gets every line, then
        1001; the process exits 0."""
        service = self.start()
        clients = [service.connect(service.mint()) for _ in range(self.CLIENTS)]
        writer = Writer(service.write)
        writer.start()
        # Let a few hundred lines through before the end comes.
        early = receive(clients[-1], 300)
        written = writer.stop()
        service.close_stdin()
        for client in clients:
            messages, code = until_close(client, written + 1)
            if client is clients[-1]:
                messages = early + messages
            self.assertEqual(numbered(messages), list(range(written)))
            self.assertEqual(code, GOING_AWAY)
        self.assertEqual(service.wait(), 0)

    def test_sigterm_while_lines_flow(self) -> None:
        """On SIGTERM under load every client gets 1001 after an unbroken run
        of lines, and the process exits in order."""
        service = self.start()
        clients = [service.connect(service.mint()) for _ in range(self.CLIENTS)]
        writer = Writer(service.write)
        writer.start()
        self.addCleanup(writer.stop)
        early = [receive(client, 100) for client in clients]
        mark = service.log.mark()
        service.signal(signal.SIGTERM)
        for client, before in zip(clients, early, strict=True):
            messages, code = until_close(client, 1_000_000)
            lines = numbered(before + messages)
            self.assertEqual(lines, list(range(lines[0], lines[0] + len(lines))))
            self.assertEqual(code, GOING_AWAY)
        # twistd re-raises the signal after an orderly stop, its convention.
        self.assertIn(service.wait(), (0, -signal.SIGTERM))
        service.log.wait_for(rf"stopping: closing {self.CLIENTS} clients", after=mark)


class MetricsUnderLoadTests(ServiceTestCase):
    """Scrapes in a tight loop do not disturb the broadcast."""

    def test_metrics_hammered_while_broadcasting(self) -> None:
        """Four scrapers in a loop: every scrape answers, every line arrives."""
        service = self.start(options=["--metrics", LISTEN_LOOPBACK])
        monitor = Address.parse(service.log.wait_for(r"metrics listening on (\S+)$")[1])
        clients = [service.connect(service.mint()) for _ in range(5)]
        results: list[tuple[str, int, float]] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def scrape() -> None:
            base = f"http://{monitor.host}:{monitor.port}"
            while not stop.is_set():
                try:
                    for path in ("/metrics", "/healthz"):
                        with _opener.open(base + path, timeout=EVENT_TIMEOUT) as got:
                            body = got.read().decode()
                            lines = -1.0
                            if path == "/metrics":
                                lines = _value(body, "nanostream_lines_received_total")
                            results.append((path, got.status, lines))
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)
                    return

        scrapers = [threading.Thread(target=scrape, daemon=True) for _ in range(4)]
        for thread in scrapers:
            thread.start()
        self.addCleanup(stop.set)
        count = 3000
        for start in range(0, count, 100):
            service.write(
                "".join(f"line {n}\n" for n in range(start, start + 100)).encode()
            )
        for client in clients:
            self.assertEqual(numbered(receive(client, count)), list(range(count)))
        stop.set()
        for thread in scrapers:
            thread.join(STOP_TIMEOUT)
        self.assertEqual(errors, [])
        self.assertGreater(len(results), 8)
        self.assertEqual({status for _, status, _ in results}, {200})
        counts = [lines for path, _, lines in results if path == "/metrics"]
        self.assertLessEqual(max(counts), count)


def _value(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} missing from the scrape")


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(STOP_TIMEOUT)
