"""``--ledger PATH`` with the real ``twistd``: used tokens survive a kill -9."""

from __future__ import annotations

import signal

from .harness import LISTEN_LOOPBACK, Nanostream, ServiceTestCase, new_secret

LEDGER = "used-tokens"


class FileLedgerTests(ServiceTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.secret = new_secret()
        (self.directory / "secret").write_text(self.secret + "\n")

    def node(self) -> Nanostream:
        """A service with the test's secret and ledger file, stopped in cleanup."""
        args = [
            "--secret-file", "secret",
            "--listen", LISTEN_LOOPBACK,
            "--ledger", LEDGER,
            "--handshake-timeout", "60",
        ]  # fmt: skip
        node = Nanostream(
            self.directory,
            args,
            secret=self.secret,
            listeners=1,
            endpoint_source=False,
        )
        self.addCleanup(node.assert_clean_log)
        self.addCleanup(self._show_log, node)
        self.addCleanup(node.stop)
        return node

    def assert_refused_as_used(self, node: Nanostream, token: str) -> None:
        mark = node.log.mark()
        self.assertEqual(node.refuse(token).status, 401)
        node.log.wait_for("token already used", after=mark)

    def test_used_token_refused_after_kill_9(self) -> None:
        """A token that opened a connection is refused after a kill -9 and restart."""
        first = self.node()
        token = first.mint()
        first.connect(token)
        first.signal(signal.SIGKILL)
        self.assertEqual(first.wait(), -signal.SIGKILL)
        second = self.node()
        self.assert_refused_as_used(second, token)
        second.connect(second.mint())

    def test_starts_despite_a_torn_record(self) -> None:
        """A record cut short at the end of the file is ignored; earlier ones hold."""
        first = self.node()
        token = first.mint()
        first.connect(token)
        self.assertIn(first.stop(), (0, -signal.SIGTERM))
        with open(self.directory / LEDGER, "ab") as f:
            f.write(b"0123456789abcdef0123456789ab")
        second = self.node()
        second.log.wait_for("cut short")
        self.assert_refused_as_used(second, token)
        second.connect(second.mint())

    def test_unwritable_path(self) -> None:
        """A ledger path that cannot be written is one usage line and status 64."""
        done = self.run_twistd(
            [
                "-n", "--pidfile=", "nanostream", "--secret-file", "secret",
                "--ledger", "/sys/nanostream-used-tokens",
            ]
        )  # fmt: skip
        self.assertEqual(done.status, 64)
        self.assertEqual(
            done.stderr,
            "nanostream: --ledger /sys/nanostream-used-tokens: cannot be opened "
            "for writing: Permission denied\n",
        )
