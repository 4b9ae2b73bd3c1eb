"""How the process ends: end of stdin, SIGTERM, and usage errors."""

from __future__ import annotations

import signal

from .harness import (
    LISTEN_LOOPBACK,
    ServiceTestCase,
    close_code,
    new_secret,
    receive,
)

GOING_AWAY = 1001
EX_USAGE = 64


class StdinEndTests(ServiceTestCase):
    """End of input on the stdio source ends the service."""

    def test_eof_closes_clients_and_exits_zero(self) -> None:
        """At EOF the final unterminated line is delivered, then 1001, then exit 0."""
        service = self.start()
        clients = [service.connect(service.mint()) for _ in range(2)]
        service.write(b"line\nfinal without newline")
        service.close_stdin()
        for client in clients:
            self.assertEqual(receive(client, 2), ["line", "final without newline"])
            self.assertEqual(close_code(client), GOING_AWAY)
        self.assertEqual(service.wait(), 0)
        service.log.wait_for(r"source ended: end of stdin")


class SignalTests(ServiceTestCase):
    """SIGTERM stops the service in order."""

    def assertOrderlyStop(self, signum: int) -> int:
        """After ``signum`` every client gets 1001 and the process exits
        promptly; the exit status."""
        service = self.start()
        clients = [service.connect(service.mint()) for _ in range(2)]
        service.signal(signum)
        for client in clients:
            self.assertEqual(close_code(client), GOING_AWAY)
        status = service.wait(timeout=5)
        service.log.wait_for(r"stopping: closing 2 clients")
        return status

    def test_sigterm_closes_clients_and_exits_0(self) -> None:
        """On SIGTERM every client gets 1001 and the process exits 0, which
        every supervisor reads as a clean stop."""
        self.assertEqual(self.assertOrderlyStop(signal.SIGTERM), 0)

    def test_sigint_closes_clients_and_exits(self) -> None:
        """SIGINT (Ctrl-C in a terminal) stops the service like SIGTERM."""
        # twistd stops the reactor in order, then re-raises SIGINT so that the
        # shell sees why it ended.
        self.assertIn(self.assertOrderlyStop(signal.SIGINT), (0, -signal.SIGINT))


class UsageErrorTests(ServiceTestCase):
    """A bad command line is one line on stderr and exit status 64."""

    def assertUsageError(self, args: list[str], *phrases: str) -> str:
        """twistd exits 64 with one stderr line naming the problem, no traceback."""
        finished = self.run_twistd(args)
        self.assertEqual(finished.status, EX_USAGE)
        lines = finished.stderr.splitlines()
        self.assertEqual(len(lines), 1, finished.stderr)
        for phrase in phrases:
            self.assertIn(phrase, lines[0])
        self.assertNotIn("Traceback", finished.stdout + finished.stderr)
        return finished.stdout + finished.stderr

    def test_no_secret(self) -> None:
        """Without any secret and without --no-auth the service refuses to start."""
        self.assertUsageError(["-n", "--pidfile=", "nanostream"], "secret", "--no-auth")

    def test_unparsable_listen(self) -> None:
        """A --listen endpoint string Twisted cannot parse is a usage error."""
        self.assertUsageError(
            ["-n", "--pidfile=", "nanostream", "--no-auth", "--listen", "nonsense:1"],
            "--listen",
            "nonsense:1",
        )

    def test_unparsable_source(self) -> None:
        """A --source that is neither stdio nor an endpoint string is a usage error."""
        self.assertUsageError(
            ["-n", "--pidfile=", "nanostream", "--no-auth", "--source", "nonsense:1"],
            "--source",
            "nonsense:1",
        )

    def test_daemon_with_stdio_source(self) -> None:
        """twistd without -n refuses the stdio source: a daemon has no stdin."""
        self.assertUsageError(
            [
                "--pidfile=twistd.pid",
                "--logfile=twistd.log",
                "nanostream",
                "--no-auth",
                "--listen",
                LISTEN_LOOPBACK,
            ],
            "stdio",
            "daemon",
        )

    def test_secret_is_not_echoed(self) -> None:
        """A usage error about the secret names the problem, never the secret."""
        secret = new_secret()
        (self.directory / "secret").write_text(secret)
        output = self.assertUsageError(
            [
                "-n",
                "--pidfile=",
                "nanostream",
                "--secret",
                secret,
                "--secret-file",
                "secret",
            ],
            "--secret",
            "--secret-file",
        )
        self.assertNotIn(secret, output)
