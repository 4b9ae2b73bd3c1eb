"""``--demo`` on the real ``twistd``, without a browser: the one port also
carries ordinary clients, drops slow ones, and keeps tokens out of its log."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import urllib.request

from .harness import (
    EVENT_TIMEOUT,
    ServiceTestCase,
    close_code,
    receive,
    self_signed_certificate,
    trusting,
)

#: More than the server's largest kernel send buffer (tcp_wmem max, 4 MiB)
#: plus the client's receive buffer, so a client that reads nothing must
#: leave bytes queued in the server.
FLOOD_LINES = 24
FLOOD_LINE_BYTES = 512 * 1024


def stalled_client(host: str, port: int, query: str) -> socket.socket:
    """A WebSocket client that completes its handshake and then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(EVENT_TIMEOUT)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET /" + query.encode() + b" HTTP/1.1\r\n"
        b"Host: " + f"{host}:{port}".encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)
        if not chunk:
            raise AssertionError(f"connection closed during handshake: {response!r}")
        response += chunk
    assert response.startswith(b"HTTP/1.1 101 "), response
    return sock


class DemoPortTests(ServiceTestCase):
    """The demo listener keeps every guarantee of the plain one."""

    def page_url(self, path: str = "/") -> str:
        address = self.service.websocket
        return f"http://{address.host}:{address.port}{path}"

    def test_own_tokens_work_on_the_demo_port(self) -> None:
        """A client with a token from the operator's app connects and hears lines;
        reusing that token is refused with 401 and the usual log event."""
        self.service = service = self.start(options=["--demo"])
        token = service.mint()
        client = service.connect(token)
        service.write(b"one\ntwo\n")
        self.assertEqual(receive(client, 2), ["one", "two"])
        self.assertEqual(service.refuse(token).status, 401)
        service.log.wait_for(r"rejected handshake from .*: token already used")

    def test_page_token_is_single_use(self) -> None:
        """The token embedded in a served page opens one connection, not two."""
        self.service = service = self.start(options=["--demo"])
        with urllib.request.urlopen(self.page_url(), timeout=EVENT_TIMEOUT) as page:
            html = page.read().decode()
        match = re.search(r'type="application/json">(.*?)</script>', html, re.S)
        assert match is not None
        token = json.loads(match.group(1))["token"]
        client = service.connect(token)
        self.assertEqual(service.refuse(token).status, 401)
        service.write(b"still here\n")
        self.assertEqual(receive(client, 1), ["still here"])

    def test_slow_consumer_dropped_on_the_demo_port(self) -> None:
        """A client that stops reading is dropped; a reading one gets every line."""
        self.service = service = self.start(
            options=["--demo", "--max-buffer-bytes", str(256 * 1024)]
        )
        address = service.websocket
        token = service.mint()
        service.sent_tokens.append(token)
        stalled = stalled_client(address.host, address.port, f"?t={token}")
        self.addCleanup(stalled.close)
        healthy = service.connect(service.mint())
        mark = service.log.mark()

        lines = [bytes([65 + i]) * FLOOD_LINE_BYTES for i in range(FLOOD_LINES)]
        service.write(b"".join(line + b"\n" for line in lines))
        service.log.wait_for(r"dropping slow consumer", after=mark)
        service.write(b"after the drop\n")
        received = receive(healthy, FLOOD_LINES + 1)
        self.assertEqual(received[-1], "after the drop")
        self.assertEqual(
            [len(m) for m in received[:-1]], [FLOOD_LINE_BYTES] * FLOOD_LINES
        )
        self.assertEqual(
            [m[0] for m in received[:-1]], [chr(65 + i) for i in range(FLOOD_LINES)]
        )

    def test_demo_over_tls(self) -> None:
        """On an ssl: listener the page is served over HTTPS and its WebSocket
        URL is wss://, and a client upgrading through TLS hears the lines."""
        key, cert = self_signed_certificate(self.directory)
        listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        self.service = service = self.start(listen=[listen], options=["--demo"])
        address = service.websocket
        context = trusting(cert)
        url = f"https://localhost:{address.port}/"
        with urllib.request.urlopen(
            url, timeout=EVENT_TIMEOUT, context=context
        ) as page:
            html = page.read().decode()
        match = re.search(r'type="application/json">(.*?)</script>', html, re.S)
        assert match is not None
        config = json.loads(match.group(1))
        self.assertEqual(config["url"], f"wss://localhost:{address.port}/")
        service.sent_tokens.append(config["token"])
        client = service.connect(config["token"], tls=context)
        service.write(b"secure line\n")
        self.assertEqual(receive(client, 1), ["secure line"])

    def test_access_log_redacts_token(self) -> None:
        """A plain GET carrying ?t= is served the page and logged with t redacted."""
        self.service = service = self.start(options=["--demo"])
        token = service.mint()
        service.sent_tokens.append(token)
        url = self.page_url(f"/?t={token}")
        with urllib.request.urlopen(url, timeout=EVENT_TIMEOUT) as page:
            self.assertEqual(page.status, 200)
        service.log.wait_for(r'"GET /\?t=REDACTED HTTP/1.1" 200')

    def test_shutdown_closes_demo_clients_with_1001(self) -> None:
        """SIGTERM closes clients that came in through the demo port with 1001."""
        self.service = service = self.start(options=["--demo"])
        client = service.connect(service.mint())
        service.signal(signal.SIGTERM)
        self.assertEqual(close_code(client), 1001)
        # twistd re-raises the signal after an orderly shutdown.
        self.assertIn(service.wait(), (0, -signal.SIGTERM))

    def test_public_listener_refused(self) -> None:
        """--demo on every interface is a one-line usage error, exit 64."""
        (self.directory / "secret").write_text("x" * 40)
        done = self.run_twistd(
            ["-n", "--pidfile=", "nanostream", "--secret-file", "secret", "--demo"]
        )
        self.assertEqual(done.status, 64)
        [line] = done.stderr.splitlines()
        self.assertIn("is not on a loopback interface", line)

    def test_anywhere_allows_it_with_a_warning(self) -> None:
        """--demo-anywhere starts on a reachable listener and says so in the log."""
        self.service = service = self.start(
            listen=["tcp:0"], options=["--demo", "--demo-anywhere"]
        )
        service.log.wait_for(r"--demo with --demo-anywhere")
        self.assertEqual(service.websocket.host, "0.0.0.0")
