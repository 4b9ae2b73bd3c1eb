"""Listeners of every kind: TLS with a certificate made for the test, Unix, several."""

from __future__ import annotations

from .harness import ServiceTestCase, receive, self_signed_certificate, trusting


class TLSTests(ServiceTestCase):
    """A wss:// client that trusts only the test's own certificate."""

    def test_wss_client_receives_lines(self) -> None:
        """A client over TLS completes the handshake and receives a line."""
        key, cert = self_signed_certificate(self.directory)
        service = self.start(
            listen=[
                f"ssl:0:interface=127.0.0.1:privateKey={key.name}:certKey={cert.name}"
            ]
        )
        self.assertEqual(service.websocket.kind, "ssl")
        client = service.connect(service.mint(), tls=trusting(cert))
        service.write(b"over tls\n")
        self.assertEqual(receive(client, 1), ["over tls"])

    def test_plain_and_tls_listeners_together(self) -> None:
        """With a tcp and an ssl --listen, clients on both get the same lines."""
        key, cert = self_signed_certificate(self.directory)
        service = self.start(
            listen=[
                "tcp:0:interface=127.0.0.1",
                f"ssl:0:interface=127.0.0.1:privateKey={key.name}:certKey={cert.name}",
            ]
        )
        by_kind = {address.kind: address for address in service.listening["websocket"]}
        plain = service.connect(service.mint(), address=by_kind["tcp"])
        secure = service.connect(
            service.mint(), tls=trusting(cert), address=by_kind["ssl"]
        )
        service.write(b"both\n")
        self.assertEqual(receive(plain, 1), ["both"])
        self.assertEqual(receive(secure, 1), ["both"])


class UnixListenerTests(ServiceTestCase):
    """A WebSocket listener on a Unix socket, as behind a local proxy."""

    def test_unix_client_receives_lines(self) -> None:
        """A client over a Unix socket listener receives a line."""
        service = self.start(listen=["unix:ws.sock"])
        self.assertEqual(service.websocket.kind, "unix")
        client = service.connect(service.mint())
        service.write(b"over unix\n")
        self.assertEqual(receive(client, 1), ["over unix"])
