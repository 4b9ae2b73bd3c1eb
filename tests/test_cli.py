"""The ``nanostream`` command: its one parser, ``token`` and ``check``."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import jwt
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth import reasons
from nanostream.auth.secret import ENV_VAR
from nanostream.cli import main as cli
from nanostream.cli.tokens import MAX_TTL

SECRET = "cli-test-secret-0123456789abcdef-0123456789abcdef-0123"


class CommandTestCase(SynchronousTestCase):
    def run_cli(
        self, *argv: str, environ: dict[str, str] | None = None, stdin: str = ""
    ) -> tuple[int, str, str]:
        """Run ``nanostream ARGV``: exit status, stdout, stderr.

        Every run also proves the secret shows in neither stream.
        """
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdin", io.StringIO(stdin))
        with redirect_stdout(out), redirect_stderr(err):
            status = cli.main(list(argv), {} if environ is None else environ)
        self.assertNotIn(SECRET, out.getvalue() + err.getvalue())
        return status, out.getvalue(), err.getvalue()

    def usage_error(self, *argv: str, environ: dict[str, str] | None = None) -> str:
        """Run a command that must fail with one line on stderr and exit 64.

        The line starts with the subcommand it concerns, if any.
        """
        status, out, err = self.run_cli(*argv, environ=environ)
        self.assertEqual((status, out), (64, ""))
        known = argv[:1] if argv[:1] and argv[0] in cli.COMMANDS else []
        prefix = " ".join(["nanostream", *known]) + ": "
        self.assertTrue(err.startswith(prefix), err)
        self.assertEqual(err.count("\n"), 1, err)
        return err

    def mint(self, *argv: str) -> str:
        status, out, err = self.run_cli("token", "--secret", SECRET, *argv)
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.endswith("\n"))
        return out[:-1]


def decode(token: str) -> dict[str, Any]:
    return jwt.decode(token, SECRET, algorithms=["HS256"])


class TokenTests(CommandTestCase):
    def test_prints_only_the_token(self) -> None:
        """The output is one HS256 token and a newline, nothing else."""
        token = self.mint()
        self.assertEqual(token.count("."), 2)
        self.assertNotIn("\n", token)
        self.assertEqual(jwt.get_unverified_header(token)["alg"], "HS256")

    def test_default_lifetime(self) -> None:
        """Without --ttl the token lives 60 seconds from now."""
        before = int(time.time())
        claims = decode(self.mint())
        self.assertEqual(claims["exp"] - claims["iat"], 60)
        self.assertGreaterEqual(claims["iat"], before)

    def test_each_token_unique(self) -> None:
        """Two tokens minted in the same second differ, so both can be used."""
        self.assertNotEqual(self.mint(), self.mint())

    def test_ttl(self) -> None:
        """--ttl sets the lifetime."""
        claims = decode(self.mint("--ttl", "300"))
        self.assertEqual(claims["exp"] - claims["iat"], 300)

    def test_ttl_bounds(self) -> None:
        """A lifetime of 0 or beyond a day is a usage error."""
        self.assertIn(
            "--ttl", self.usage_error("token", "--secret", SECRET, "--ttl", "0")
        )
        self.assertIn(
            f"at most {MAX_TTL}",
            self.usage_error("token", "--secret", SECRET, "--ttl", str(MAX_TTL + 1)),
        )
        self.assertIn(
            "'ten'", self.usage_error("token", "--secret", SECRET, "--ttl", "ten")
        )

    def test_claims_parsed_as_json(self) -> None:
        """Claim values are JSON where they parse and strings otherwise."""
        claims = decode(
            self.mint(
                "--claim",
                "sub=alice",
                "--claim",
                "n=42",
                "--claim",
                "admin=false",
                "--claim",
                'rooms=["a","b"]',
                "--claim",
                "note=a=b",
            )
        )
        self.assertEqual(claims["sub"], "alice")
        self.assertEqual(claims["n"], 42)
        self.assertIs(claims["admin"], False)
        self.assertEqual(claims["rooms"], ["a", "b"])
        self.assertEqual(claims["note"], "a=b")

    def test_bad_claims(self) -> None:
        """A claim without a name or '=', or one overriding exp, is refused."""
        err = self.usage_error("token", "--secret", SECRET, "--claim", "novalue")
        self.assertIn("NAME=VALUE", err)
        self.usage_error("token", "--secret", SECRET, "--claim", "=1")
        err = self.usage_error("token", "--secret", SECRET, "--claim", "exp=1")
        self.assertIn("--ttl", err)


class SecretTests(CommandTestCase):
    def test_secret_file(self) -> None:
        """A secret file is read as the service reads it: without its newline."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "secret")
        with open(path, "w") as f:
            f.write(SECRET + "\n")
        status, out, _ = self.run_cli("token", "--secret-file", path)
        self.assertEqual(status, 0)
        decode(out.strip())

    def test_environment(self) -> None:
        """NANOSTREAM_SECRET is used when no option names a secret."""
        status, out, _ = self.run_cli("token", environ={ENV_VAR: SECRET})
        self.assertEqual(status, 0)
        decode(out.strip())

    def test_no_secret(self) -> None:
        """Without any secret both commands stop with one line."""
        self.assertIn("secret is required", self.usage_error("token"))
        self.assertIn("secret is required", self.usage_error("check", "x.y.z"))

    def test_two_secrets(self) -> None:
        """Two secret sources at once are refused, as by the service."""
        err = self.usage_error("token", "--secret", SECRET, environ={ENV_VAR: SECRET})
        self.assertIn("exactly one", err)

    def test_unreadable_file(self) -> None:
        """A missing secret file is one line naming it."""
        err = self.usage_error("token", "--secret-file", "/nonexistent/secret")
        self.assertIn("/nonexistent/secret", err)


class CheckTests(CommandTestCase):
    def check(self, token: str, *argv: str, secret: str = SECRET) -> tuple[int, str]:
        status, out, err = self.run_cli("check", token, "--secret", secret, *argv)
        self.assertEqual(err, "")
        return status, out

    def test_accepts_a_fresh_token(self) -> None:
        """A token minted with the same secret checks ok."""
        self.assertEqual(self.check(self.mint()), (0, "ok\n"))

    def test_wrong_secret(self) -> None:
        """A token signed with another secret is an invalid token."""
        token = jwt.encode({"exp": time.time() + 60}, "another-secret-" * 3)
        self.assertEqual(self.check(token), (1, reasons.INVALID + "\n"))

    def test_reasons(self) -> None:
        """Each broken rule prints the phrase the server would log."""
        now = time.time()
        cases = {
            reasons.NO_EXPIRATION: {"sub": "x"},
            reasons.EXPIRED: {"exp": now - 10},
            reasons.NOT_YET_VALID: {"exp": now + 60, "nbf": now + 30},
            reasons.TOO_LONG: {"exp": now + 7200},
        }
        for reason, claims in cases.items():
            token = jwt.encode(claims, SECRET, algorithm="HS256")
            self.assertEqual(self.check(token), (1, reason + "\n"), reason)

    def test_other_algorithm(self) -> None:
        """HS384 with the right secret is still an invalid token."""
        token = jwt.encode({"exp": time.time() + 60}, SECRET, algorithm="HS384")
        self.assertEqual(self.check(token), (1, reasons.INVALID + "\n"))

    def test_leeway_and_max_ttl_as_the_server(self) -> None:
        """--leeway and --max-token-ttl change the verdict as on the server."""
        expired = jwt.encode({"exp": time.time() - 5}, SECRET, algorithm="HS256")
        self.assertEqual(self.check(expired, "--leeway", "30"), (0, "ok\n"))
        long = self.mint("--ttl", "600")
        self.assertEqual(
            self.check(long, "--max-token-ttl", "300"),
            (1, reasons.TOO_LONG + "\n"),
        )

    def test_token_from_stdin(self) -> None:
        """TOKEN - reads the token from stdin, keeping it out of ps."""
        status, out, _ = self.run_cli(
            "check", "-", "--secret", SECRET, stdin=self.mint() + "\n"
        )
        self.assertEqual((status, out), (0, "ok\n"))

    def test_empty_token(self) -> None:
        """An empty token is reported as missing."""
        self.assertEqual(self.check(""), (1, reasons.NO_TOKEN + "\n"))

    def test_bad_numbers(self) -> None:
        """A negative leeway or a zero lifetime bound is a usage error."""
        err = self.usage_error("check", "t", "--secret", SECRET, "--leeway", "-1")
        self.assertIn("--leeway", err)
        err = self.usage_error("check", "t", "--secret", SECRET, "--max-token-ttl", "0")
        self.assertIn("--max-token-ttl", err)

    def test_one_token(self) -> None:
        """check without a token, or with two, says it takes one."""
        self.assertIn("one TOKEN", self.usage_error("check", "--secret", SECRET))
        self.assertIn("one TOKEN", self.usage_error("check", "a", "b"))


class CommandLineTests(CommandTestCase):
    def test_no_command(self) -> None:
        """Without a subcommand the error is one line naming the commands."""
        self.assertIn("token, check or publish", self.usage_error())

    def test_unknown_command(self) -> None:
        """An unknown subcommand is one line naming the choices."""
        err = self.usage_error("mint")
        self.assertIn("'mint'", err)
        self.assertIn("token, check or publish", err)

    def test_unknown_option(self) -> None:
        """An option the subcommand does not have is one line naming it."""
        self.assertIn("--bogus", self.usage_error("token", "--bogus"))

    def test_options_around_arguments(self) -> None:
        """Options may come before or after a subcommand's argument."""
        token = self.mint()
        for argv in (
            ("check", "--secret", SECRET, token),
            ("check", token, "--secret", SECRET),
        ):
            self.assertEqual(self.run_cli(*argv), (0, "ok\n", ""))

    def test_help_describes_the_whole_command(self) -> None:
        """nanostream --help lists every subcommand, publishing included."""
        status, out, err = self.run_cli("--help")
        self.assertEqual((status, err), (0, ""))
        for command in ("token", "check", "publish"):
            self.assertIn(f"    {command} ", out)
        self.assertIn("publish lines to Redis", out)

    def test_subcommand_help(self) -> None:
        """Each subcommand's --help shows its own synopsis and options."""
        status, out, _ = self.run_cli("publish", "--help")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("Usage: nanostream publish redis://"), out)
        self.assertIn("--maxlen", out)
        status, out, _ = self.run_cli("token", "--help")
        self.assertEqual(status, 0)
        self.assertIn("--claim", out)

    def test_version(self) -> None:
        """--version prints nanostream's version, at either level."""
        from nanostream import __version__

        for argv in (("--version",), ("publish", "--version")):
            self.assertEqual(
                self.run_cli(*argv), (0, f"nanostream {__version__}\n", "")
            )

    def test_publish_usage_error(self) -> None:
        """publish's usage errors are one line too, before any connection."""
        self.assertIn("?stream=KEY", self.usage_error("publish", "redis://h/0"))
        self.assertIn("one URL", self.usage_error("publish"))

    def test_python_dash_m(self) -> None:
        """``python -m nanostream`` runs the same command."""
        done = subprocess.run(
            [sys.executable, "-m", "nanostream", "token"],
            env={**os.environ, ENV_VAR: SECRET},
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        decode(done.stdout.strip())
