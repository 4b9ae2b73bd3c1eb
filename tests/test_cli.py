"""The ``nanostream`` command: ``token``, ``check`` and the ``publish`` hand-off."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import jwt
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth import reasons
from nanostream.auth.secret import ENV_VAR
from nanostream.cli import main as cli

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
        """Run a command that must fail with one line on stderr and exit 64."""
        status, out, err = self.run_cli(*argv, environ=environ)
        self.assertEqual((status, out), (64, ""))
        self.assertTrue(err.startswith("nanostream: "), err)
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
        self.usage_error("token", "--secret", SECRET, "--ttl", str(cli.MAX_TTL + 1))
        self.usage_error("token", "--secret", SECRET, "--ttl", "ten")

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
        self.usage_error("token", "--secret", SECRET, "--claim", "novalue")
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
        self.usage_error("check", "t", "--secret", SECRET, "--leeway", "-1")
        self.usage_error("check", "t", "--secret", SECRET, "--max-token-ttl", "0")


class PublishFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import nanostream.cli.publish`` fail as a missing dependency would."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name == "nanostream.cli.publish":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        raise ModuleNotFoundError("No module named 'redislib'", name="redislib")


class CommandLineTests(CommandTestCase):
    def without_publish(self) -> None:
        """Forget any imported nanostream.cli.publish for this test."""
        saved = sys.modules.pop("nanostream.cli.publish", None)
        if saved is not None:
            self.addCleanup(sys.modules.__setitem__, "nanostream.cli.publish", saved)

    def test_no_command(self) -> None:
        """Without a subcommand the error is one line."""
        self.usage_error()

    def test_unknown_command(self) -> None:
        """An unknown subcommand is one line naming the choices."""
        self.assertIn("token", self.usage_error("mint"))

    def test_publish_handed_its_arguments(self) -> None:
        """``publish`` calls nanostream.cli.publish.main with the rest of argv."""
        self.without_publish()
        calls: list[list[str]] = []
        fake = types.ModuleType("nanostream.cli.publish")
        fake.main = lambda argv: calls.append(argv) or 7  # type: ignore[attr-defined]
        sys.modules["nanostream.cli.publish"] = fake
        self.addCleanup(sys.modules.pop, "nanostream.cli.publish", None)
        status, _, _ = self.run_cli("publish", "--help", "redis://h/0?channel=c")
        self.assertEqual((status, calls), (7, [["--help", "redis://h/0?channel=c"]]))

    def test_publish_missing(self) -> None:
        """Without nanostream.cli.publish the command says so in one line."""
        self.without_publish()
        sys.modules["nanostream.cli.publish"] = None  # type: ignore[assignment]
        self.addCleanup(sys.modules.pop, "nanostream.cli.publish", None)
        self.assertIn("publish", self.usage_error("publish", "x"))

    def test_publish_dependency_missing_is_not_hidden(self) -> None:
        """A missing dependency of nanostream.cli.publish is raised, not reworded."""
        self.without_publish()
        finder = PublishFinder()
        sys.meta_path.insert(0, finder)
        self.addCleanup(sys.meta_path.remove, finder)
        self.addCleanup(sys.modules.pop, "nanostream.cli.publish", None)
        e = self.assertRaises(ModuleNotFoundError, cli.main, ["publish"], {})
        self.assertEqual(e.name, "redislib")

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
