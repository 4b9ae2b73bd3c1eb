"""An endpoint source: producers connect and write lines, and may come and go."""

from __future__ import annotations

from .harness import LISTEN_LOOPBACK, ServiceTestCase, receive


class EndpointSourceTests(ServiceTestCase):
    """Producers over TCP and Unix sockets feeding one service."""

    def test_producers_one_after_another(self) -> None:
        """A second producer is served after the first one disconnected."""
        service = self.start(source=LISTEN_LOOPBACK)
        self.assertEqual(service.source.kind, "tcp")
        client = service.connect(service.mint())
        for name in ("first", "second"):
            mark = service.log.mark()
            with service.produce() as producer:
                producer.sendall(f"{name} 1\n{name} 2\n".encode())
                self.assertEqual(receive(client, 2), [f"{name} 1", f"{name} 2"])
            service.log.wait_for(r"producer disconnected", after=mark)
        self.assertIsNone(service.process.poll())

    def test_concurrent_producers_keep_lines_whole(self) -> None:
        """Two producers at once: each one's lines arrive whole and in its order."""
        service = self.start(source=LISTEN_LOOPBACK)
        client = service.connect(service.mint())
        with service.produce() as a, service.produce() as b:
            a.sendall(b"a1\na2 begins")
            b.sendall(b"b1\n")
            self.assertEqual(receive(client, 2), ["a1", "b1"])
            b.sendall(b"b2 begins")
            a.sendall(b" and ends\n")
            b.sendall(b" and ends\n")
            self.assertEqual(
                sorted(receive(client, 2)), ["a2 begins and ends", "b2 begins and ends"]
            )
            for i in range(50):
                a.sendall(f"a{i}\n".encode())
                b.sendall(f"b{i}\n".encode())
            received = receive(client, 100)
        self.assertEqual(
            [m for m in received if m[0] == "a"], [f"a{i}" for i in range(50)]
        )
        self.assertEqual(
            [m for m in received if m[0] == "b"], [f"b{i}" for i in range(50)]
        )

    def test_final_line_of_a_producer_without_newline(self) -> None:
        """A producer's last line without a newline is delivered when it disconnects."""
        service = self.start(source=LISTEN_LOOPBACK)
        client = service.connect(service.mint())
        with service.produce() as producer:
            producer.sendall(b"complete\nunterminated")
        self.assertEqual(receive(client, 2), ["complete", "unterminated"])

    def test_unix_socket_source(self) -> None:
        """A producer on a Unix socket source reaches the clients."""
        service = self.start(source="unix:source.sock")
        self.assertEqual(service.source.kind, "unix")
        client = service.connect(service.mint())
        with service.produce() as producer:
            producer.sendall(b"via unix\n")
            self.assertEqual(receive(client, 1), ["via unix"])
