"""The installed ``nanostream`` command: ``token`` and ``check`` against the
real service, and its usage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .harness import START_TIMEOUT, ServiceTestCase, receive

#: The console script installed next to the interpreter running the tests.
NANOSTREAM = str(Path(sys.executable).with_name("nanostream"))


class TokenToolTests(ServiceTestCase):
    def nanostream(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run the ``nanostream`` command in the service's directory."""
        return subprocess.run(
            [NANOSTREAM, *argv],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )

    def test_minted_token_opens_once(self) -> None:
        """A minted token connects once; check says ok before and after reuse."""
        service = self.start()
        minted = self.nanostream("token", "--secret-file", "secret", "--ttl", "120")
        self.assertEqual((minted.returncode, minted.stderr), (0, ""))
        token = minted.stdout.removesuffix("\n")
        self.assertEqual(minted.stdout, token + "\n")

        checked = self.nanostream("check", token, "--secret-file", "secret")
        self.assertEqual((checked.returncode, checked.stdout), (0, "ok\n"))

        client = service.connect(token)
        service.write(b"hello\n")
        self.assertEqual(receive(client, 1), ["hello"])

        mark = service.log.mark()
        self.assertEqual(service.refuse(token).status, 401)
        service.log.wait_for(r"token already used", after=mark)
        # Single use is the server's memory; the tool cannot see it.
        again = self.nanostream("check", token, "--secret-file", "secret")
        self.assertEqual((again.returncode, again.stdout), (0, "ok\n"))
        self.assertNotIn(service.secret, minted.stdout + checked.stdout + again.stdout)


class CommandLineTests(ServiceTestCase):
    """The installed ``nanostream`` script's one parser."""

    def nanostream(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [NANOSTREAM, *argv],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )

    def test_help_names_every_command(self) -> None:
        """--help describes token, check and publish, and exits 0."""
        done = self.nanostream("--help")
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        for command in ("token", "check", "publish"):
            self.assertIn(f"    {command} ", done.stdout)

    def test_usage_error_is_one_line(self) -> None:
        """A publish URL naming neither a channel nor a stream: 64, one line."""
        done = self.nanostream("publish", "redis://127.0.0.1:1/0")
        self.assertEqual((done.returncode, done.stdout), (64, ""))
        self.assertEqual(done.stderr.count("\n"), 1, done.stderr)
        self.assertTrue(done.stderr.startswith("nanostream publish: "), done.stderr)
        self.assertIn("?stream=KEY", done.stderr)
