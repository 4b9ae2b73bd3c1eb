"""Lines from stdin reach every client whole, in order, framed by their bytes."""

from __future__ import annotations

from .harness import ServiceTestCase, receive


class StdinBroadcastTests(ServiceTestCase):
    """Lines written to the process's stdin, as two real clients see them."""

    def test_lines_reach_two_clients_in_order(self) -> None:
        """Text as text, other bytes as binary, CRLF stripped, empty lines skipped."""
        service = self.start()
        clients = [service.connect(service.mint()) for _ in range(2)]
        service.write(
            b"first\n"
            b"caf\xc3\xa9 \xe2\x9c\x93\n"
            b"\n"
            b"\xff\xfe not utf-8\n"
            b"\r\n"
            b"windows line\r\n"
            b"inner\rcarriage\n"
            b"end\n"
        )
        expected = [
            "first",
            "café ✓",
            b"\xff\xfe not utf-8",
            "windows line",
            "inner\rcarriage",
            "end",
        ]
        for client in clients:
            self.assertEqual(receive(client, len(expected)), expected)

    def test_lines_split_across_writes_arrive_whole(self) -> None:
        """A line written in pieces is delivered once, whole, after its newline."""
        service = self.start()
        client = service.connect(service.mint())
        service.write(b"one half")
        service.write(b" and the other\nnext\n")
        self.assertEqual(receive(client, 2), ["one half and the other", "next"])

    def test_overlong_line_is_skipped_with_a_warning(self) -> None:
        """A line over --max-line-bytes is dropped with a warning; reading goes on."""
        service = self.start(options=["--max-line-bytes", "16"])
        client = service.connect(service.mint())
        mark = service.log.mark()
        service.write(b"short\n" + b"x" * 100 + b"\n" + b"exactly 16 bytes\nafter\n")
        self.assertEqual(receive(client, 3), ["short", "exactly 16 bytes", "after"])
        service.log.wait_for(r"#warn\] discarded a line .* longer than 16", after=mark)


class NoAuthTests(ServiceTestCase):
    """The explicit open mode of --no-auth."""

    def test_client_without_token_receives_lines(self) -> None:
        """Under --no-auth a client with no token is admitted and gets the lines."""
        service = self.start(auth=False)
        client = service.connect()
        service.write(b"open to all\n")
        self.assertEqual(receive(client, 1), ["open to all"])

    def test_startup_warns(self) -> None:
        """Starting with --no-auth logs a warning that anyone may listen."""
        service = self.start(auth=False)
        service.log.wait_for(r"#warn\] running with --no-auth")
