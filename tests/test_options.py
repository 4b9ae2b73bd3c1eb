"""The command line of ``twistd nanostream``: every usage error and default."""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from certificates import self_signed_certificate
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth.secret import ENV_VAR
from nanostream.sources.splitter import DEFAULT_MAX_LINE_BYTES
from nanostream.tap import Options, ServiceOptions

KEY = "distinctive-secret-value-0xC0FFEE"
AUTH = ["--secret", KEY]


def temp_dir(case: SynchronousTestCase) -> str:
    """A fresh directory removed when the test ends."""
    directory = tempfile.mkdtemp(prefix="nanostream-test-")
    case.addCleanup(shutil.rmtree, directory)
    return directory


class OptionsTestCase(SynchronousTestCase):
    def parse(
        self, argv: list[str], environ: dict[str, str] | None = None
    ) -> ServiceOptions:
        options = ServiceOptions(environ={} if environ is None else environ)
        options.parseOptions(argv)
        return options

    def usageError(self, argv: list[str], environ: dict[str, str] | None = None) -> str:
        """The message of the UsageError parsing argv raises; never the key."""
        options = ServiceOptions(environ={} if environ is None else environ)
        e = self.assertRaises(usage.UsageError, options.parseOptions, argv)
        message = str(e)
        self.assertNotIn(KEY, message)
        self.assertNotIn("\n", message)
        return message


class DefaultTests(OptionsTestCase):
    def test_defaults(self) -> None:
        """With only a key, every option has its documented default."""
        options = self.parse(AUTH)
        self.assertEqual(options["listen"], ["tcp:8080"])
        self.assertEqual(options["source"], "stdio")
        self.assertEqual(options["origin"], [])
        self.assertEqual(options["ping-interval"], 30.0)
        self.assertEqual(options["ping-timeout"], 30.0)
        self.assertEqual(options["leeway"], 0.0)
        self.assertEqual(options["max-token-ttl"], 3600.0)
        self.assertEqual(options["max-line-bytes"], DEFAULT_MAX_LINE_BYTES)
        self.assertEqual(options["max-line-bytes"], 1024 * 1024)
        self.assertEqual(options["max-buffer-bytes"], 4 * 1024 * 1024)
        self.assertEqual(options["handshake-timeout"], 5.0)
        self.assertEqual(options["max-handshake-bytes"], 16 * 1024)
        self.assertEqual(options["max-clients"], 0)
        self.assertFalse(options["no-auth"])

    def test_key_from_option(self) -> None:
        """The key is exposed as bytes for makeService."""
        self.assertEqual(self.parse(AUTH)["key"], KEY.encode())

    def test_key_from_environment(self) -> None:
        """The environment variable alone is a valid key source."""
        self.assertEqual(self.parse([], {ENV_VAR: KEY})["key"], KEY.encode())

    def test_key_from_file(self) -> None:
        """--secret-file reads the key and drops its trailing newline."""
        path = os.path.join(temp_dir(self), "key")
        with open(path, "wb") as f:
            f.write(KEY.encode() + b"\n")
        self.assertEqual(self.parse(["--secret-file", path])["key"], KEY.encode())

    def test_no_auth(self) -> None:
        """--no-auth runs without a key."""
        options = self.parse(["--no-auth"])
        self.assertTrue(options["no-auth"])
        self.assertIsNone(options["key"])

    def test_repeatable_listen(self) -> None:
        """--listen may be given several times, replacing the default."""
        options = self.parse(
            AUTH
            + ["--listen", "tcp:0:interface=127.0.0.1", "--listen", "unix:/tmp/ns.sock"]
        )
        self.assertEqual(
            options["listen"], ["tcp:0:interface=127.0.0.1", "unix:/tmp/ns.sock"]
        )

    def test_repeatable_origin(self) -> None:
        """--origin may be given several times, in order."""
        options = self.parse(
            AUTH + ["--origin", "https://a.com", "--origin", "https://*.b.com"]
        )
        self.assertEqual(options["origin"], ["https://a.com", "https://*.b.com"])

    def test_numbers_converted(self) -> None:
        """Numeric options become floats or ints as their meaning needs."""
        options = self.parse(
            AUTH
            + [
                "--ping-interval", "0",
                "--ping-timeout", "2.5",
                "--leeway", "1.5",
                "--max-token-ttl", "60",
                "--max-line-bytes", "1",
                "--max-buffer-bytes", "65536",
            ]
        )  # fmt: skip
        self.assertEqual(options["ping-interval"], 0.0)
        self.assertEqual(options["ping-timeout"], 2.5)
        self.assertEqual(options["leeway"], 1.5)
        self.assertEqual(options["max-token-ttl"], 60.0)
        self.assertEqual(options["max-line-bytes"], 1)
        self.assertIsInstance(options["max-line-bytes"], int)
        self.assertEqual(options["max-buffer-bytes"], 65536)

    def test_endpoint_source(self) -> None:
        """An endpoint string is accepted as the source."""
        options = self.parse(AUTH + ["--source", "tcp:0:interface=127.0.0.1"])
        self.assertEqual(options["source"], "tcp:0:interface=127.0.0.1")

    def test_ssl_listen_with_files(self) -> None:
        """An ssl: endpoint whose key and certificate files exist is accepted."""
        key, cert = self_signed_certificate(Path(temp_dir(self)))
        listen = f"ssl:0:privateKey={key}:certKey={cert}"
        self.assertEqual(self.parse(AUTH + ["--listen", listen])["listen"], [listen])


class SecretErrorTests(OptionsTestCase):
    def test_no_secret(self) -> None:
        """Without any key source the error says how to give one."""
        self.assertEqual(
            self.usageError([]),
            "a secret is required: give --secret-file, --secret or "
            f"{ENV_VAR} (or --no-auth to run without tokens)",
        )

    def test_two_sources(self) -> None:
        """Two key sources at once are refused, naming the sources only."""
        self.assertEqual(
            self.usageError(AUTH, {ENV_VAR: KEY}),
            f"give exactly one secret source, not --secret and {ENV_VAR}",
        )
        self.assertEqual(
            self.usageError(AUTH + ["--secret-file", "/nonexistent"]),
            "give exactly one secret source, not --secret and --secret-file",
        )

    def test_empty_secret(self) -> None:
        """An empty key is refused."""
        self.assertEqual(
            self.usageError(["--secret", ""]), "the secret from --secret is empty"
        )

    def test_empty_secret_file(self) -> None:
        """A key file holding nothing but a newline is refused."""
        path = os.path.join(temp_dir(self), "key")
        with open(path, "wb") as f:
            f.write(b"\n")
        self.assertEqual(
            self.usageError(["--secret-file", path]), f"secret file {path} is empty"
        )

    def test_unreadable_secret_file(self) -> None:
        """A key file that cannot be read is a usage error naming it."""
        directory = temp_dir(self)
        missing = os.path.join(directory, "missing")
        self.assertEqual(
            self.usageError(["--secret-file", missing]),
            f"cannot read secret file {missing}: No such file or directory",
        )
        self.assertEqual(
            self.usageError(["--secret-file", directory]),
            f"cannot read secret file {directory}: Is a directory",
        )

    def test_no_auth_with_secret(self) -> None:
        """--no-auth contradicts a key given on the command line."""
        self.assertEqual(
            self.usageError(["--no-auth"] + AUTH), "--no-auth and --secret contradict"
        )
        self.assertEqual(
            self.usageError(["--no-auth", "--secret-file", "/etc/key"]),
            "--no-auth and --secret-file contradict",
        )

    def test_no_auth_with_secret_in_environment(self) -> None:
        """--no-auth also contradicts a key in the environment, not ignoring it."""
        self.assertEqual(
            self.usageError(["--no-auth"], environ={"NANOSTREAM_SECRET": KEY}),
            "--no-auth and NANOSTREAM_SECRET contradict",
        )

    def test_public_key_as_secret(self) -> None:
        """A PEM public key given as the HS256 secret is a usage error at start."""
        pem = (
            "-----BEGIN PUBLIC KEY-----\n"
            "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n"
            "-----END PUBLIC KEY-----"
        )
        self.assertEqual(
            self.usageError(["--secret", pem]),
            "the secret looks like a public key or certificate; "
            "HS256 needs a random shared secret",
        )


class EndpointErrorTests(OptionsTestCase):
    def test_bad_listen(self) -> None:
        """A --listen string Twisted cannot parse is a usage error naming it."""
        for listen, detail in (
            ("tcp:http", "invalid literal for int() with base 10: 'http'"),
            ("bogus:8080", "Unknown endpoint type: 'bogus'"),
            ("", "Unknown endpoint type: ''"),
        ):
            with self.subTest(listen=listen):
                self.assertEqual(
                    self.usageError(AUTH + ["--listen", listen]),
                    f"--listen {listen!r} is not a usable endpoint: {detail}",
                )

    def test_systemd_without_sockets(self) -> None:
        """A systemd: listener outside socket activation says what is missing."""
        self.assertEqual(
            self.usageError(AUTH + ["--listen", "systemd:domain=INET:index=0"]),
            "--listen 'systemd:domain=INET:index=0' is not a usable endpoint: "
            "systemd passed no socket at that index (LISTEN_FDS)",
        )

    def test_one_bad_listen_of_several(self) -> None:
        """One bad --listen among good ones is still an error."""
        message = self.usageError(
            AUTH + ["--listen", "tcp:0", "--listen", "tcp:x", "--listen", "tcp:1"]
        )
        self.assertTrue(message.startswith("--listen 'tcp:x' "), message)

    def test_bad_source(self) -> None:
        """A --source string that is neither stdio nor an endpoint is an error."""
        for source, detail in (
            ("tcp:x", "invalid literal for int() with base 10: 'x'"),
            ("stdin", "Unknown endpoint type: 'stdin'"),
        ):
            with self.subTest(source=source):
                self.assertEqual(
                    self.usageError(AUTH + ["--source", source]),
                    f"--source {source!r} is not a usable endpoint: {detail}",
                )

    def test_ssl_missing_files(self) -> None:
        """An ssl: endpoint whose key file is missing is a usage error."""
        missing = os.path.join(temp_dir(self), "missing.pem")
        message = self.usageError(
            AUTH + ["--listen", f"ssl:8443:privateKey={missing}:certKey={missing}"]
        )
        self.assertTrue(message.startswith("--listen 'ssl:8443:"), message)
        self.assertIn("No such file or directory", message)

    def test_ssl_default_files_missing(self) -> None:
        """An ssl: endpoint naming no files fails on the default server.pem."""
        cwd = os.getcwd()
        self.addCleanup(os.chdir, cwd)
        os.chdir(temp_dir(self))
        message = self.usageError(AUTH + ["--listen", "ssl:8443"])
        self.assertIn("server.pem", message)


class NumberErrorTests(OptionsTestCase):
    #: Each numeric option, the smallest value it accepts, and whether that
    #: bound itself is excluded.
    NUMERIC = (
        ("--ping-interval", 0, False),
        ("--ping-timeout", 0, True),
        ("--leeway", 0, False),
        ("--max-token-ttl", 0, True),
        ("--max-line-bytes", 1, False),
        ("--max-buffer-bytes", 1, False),
        ("--handshake-timeout", 0, False),
        ("--max-handshake-bytes", 1024, False),
        ("--max-clients", 0, False),
    )

    def test_not_a_number(self) -> None:
        """Text that is not a number is refused by every numeric option."""
        for option, _, _ in self.NUMERIC:
            for text in ("ten", "", "1,5", "0x10"):
                with self.subTest(option=option, text=text):
                    self.assertEqual(
                        self.usageError(AUTH + [option, text]),
                        f"{option} takes a number, not {text!r}",
                    )

    def test_not_finite(self) -> None:
        """NaN and infinities are refused: they would switch a check off."""
        for option, _, _ in self.NUMERIC:
            for text in ("nan", "NaN", "inf", "-inf", "Infinity"):
                with self.subTest(option=option, text=text):
                    self.assertEqual(
                        self.usageError(AUTH + [option, text]),
                        f"{option} takes a number, not {text!r}",
                    )

    def test_negative(self) -> None:
        """A negative value is refused by every numeric option."""
        for option, minimum, above in self.NUMERIC:
            relation = "above" if above else "at least"
            with self.subTest(option=option):
                self.assertEqual(
                    self.usageError(AUTH + [option, "-1"]),
                    f"{option} must be {relation} {minimum}",
                )

    def test_zero(self) -> None:
        """Zero is refused where it makes no sense and accepted where it does."""
        for option, minimum, above in self.NUMERIC:
            with self.subTest(option=option):
                if above or minimum > 0:
                    relation = "above" if above else "at least"
                    self.assertEqual(
                        self.usageError(AUTH + [option, "0"]),
                        f"{option} must be {relation} {minimum}",
                    )
                else:
                    self.assertEqual(self.parse(AUTH + [option, "0"])[option[2:]], 0)

    def test_fraction_for_byte_counts(self) -> None:
        """Byte counts are whole numbers."""
        for option in (
            "--max-line-bytes",
            "--max-buffer-bytes",
            "--max-handshake-bytes",
            "--max-clients",
        ):
            with self.subTest(option=option):
                self.assertEqual(
                    self.usageError(AUTH + [option, "1.5"]),
                    f"{option} takes a number, not '1.5'",
                )

    def test_unknown_option(self) -> None:
        """An unknown option is one line naming it."""
        self.assertEqual(
            self.usageError(AUTH + ["--listn", "tcp:0"]),
            "option --listn not recognized",
        )

    def test_positional_argument(self) -> None:
        """A stray positional argument, such as a misplaced key, is refused."""
        message = self.usageError(["--no-auth", KEY])
        self.assertEqual(message, "Wrong number of arguments.")


class ForegroundTests(OptionsTestCase):
    def serverOptions(self, argv: list[str]) -> ServerOptions:
        """Parse argv as ``twistd`` would, with our plugin as the subcommand."""
        config = ServerOptions()
        config.parseOptions(argv)
        return config

    def test_stdio_refused_for_daemon(self) -> None:
        """Under a twistd config that daemonizes, --source stdio is refused."""
        options = ServiceOptions(environ={})
        options.parent = {"nodaemon": False}
        e = self.assertRaises(usage.UsageError, options.parseOptions, AUTH)
        self.assertEqual(
            str(e),
            "--source stdio needs the foreground (twistd -n): a daemon has no "
            "stdin; use an endpoint source such as "
            "--source unix:/run/nanostream/in.sock",
        )

    def test_stdio_accepted_in_foreground(self) -> None:
        """Under ``twistd -n`` --source stdio is fine."""
        options = ServiceOptions(environ={})
        options.parent = {"nodaemon": True}
        options.parseOptions(AUTH)
        self.assertEqual(options["source"], "stdio")

    def test_stdio_accepted_without_nodaemon_key(self) -> None:
        """Under ``twist`` (no nodaemon key) the service is always in front."""
        options = ServiceOptions(environ={})
        options.parent = usage.Options()
        options.parseOptions(AUTH)
        self.assertTrue(options.foreground)

    def test_stdio_accepted_without_parent(self) -> None:
        """Parsed on its own, the options assume the foreground."""
        self.assertTrue(self.parse(AUTH).foreground)

    def test_endpoint_source_as_daemon(self) -> None:
        """A daemon with an endpoint source is fine."""
        options = ServiceOptions(environ={})
        options.parent = {"nodaemon": False}
        options.parseOptions(AUTH + ["--source", "tcp:0:interface=127.0.0.1"])
        self.assertFalse(options.foreground)

    def test_real_twistd_without_n(self) -> None:
        """``twistd nanostream`` (daemon, stdio) exits 64 with the one line."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        e = self.assertRaises(
            SystemExit, self.serverOptions, ["nanostream", "--no-auth"]
        )
        self.assertEqual(e.code, 64)
        self.assertTrue(
            stderr.getvalue().startswith("nanostream: --source stdio needs the "),
            stderr.getvalue(),
        )

    def test_real_twistd_with_n(self) -> None:
        """``twistd -n nanostream`` accepts the stdio source."""
        config = self.serverOptions(["-n", "nanostream", "--no-auth"])
        self.assertEqual(config.subOptions["source"], "stdio")

    def test_real_twistd_daemon_endpoint_source(self) -> None:
        """``twistd nanostream --source ENDPOINT`` is accepted as a daemon."""
        config = self.serverOptions(
            ["nanostream", "--no-auth", "--source", "unix:/tmp/ns-in.sock"]
        )
        self.assertEqual(config.subOptions["source"], "unix:/tmp/ns-in.sock")


class CommandLineFaceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_one_line_and_exit_64(self) -> None:
        """A usage error is one ``nanostream:`` line on stderr and exit 64."""
        options = Options(environ={})
        e = self.assertRaises(SystemExit, options.parseOptions, ["--listen", "tcp:x"])
        self.assertEqual(e.code, os.EX_USAGE)
        self.assertEqual(e.code, 64)
        self.assertEqual(
            self.stderr.getvalue(),
            "nanostream: a secret is required: give --secret-file, --secret or "
            f"{ENV_VAR} (or --no-auth to run without tokens)\n",
        )

    def test_no_traceback_context(self) -> None:
        """The exit carries no chained exception a runner could print."""
        options = Options(environ={})
        e = self.assertRaises(
            SystemExit, options.parseOptions, AUTH + ["--leeway", "x"]
        )
        self.assertIsNone(e.__cause__)
        self.assertTrue(e.__suppress_context__)
        self.assertEqual(
            self.stderr.getvalue(), "nanostream: --leeway takes a number, not 'x'\n"
        )

    def test_secret_not_echoed(self) -> None:
        """What reaches stderr never carries the key, whatever the mistake."""
        cases = [
            (AUTH + ["--no-auth"], {}),
            (AUTH + ["--listen", "nope"], {}),
            (AUTH + ["--source", "nope"], {}),
            (AUTH + ["--secret-file", "/nonexistent"], {}),
            (AUTH + ["--max-line-bytes", "0"], {}),
            (AUTH + [KEY], {}),
            (AUTH, {ENV_VAR: KEY}),
            (["--ping-timeout", "0"], {ENV_VAR: KEY}),
        ]
        for argv, environ in cases:
            with self.subTest(argv=argv, environ=environ):
                options = Options(environ=environ)
                self.assertRaises(SystemExit, options.parseOptions, argv)
        output = self.stderr.getvalue()
        self.assertEqual(output.count("\n"), len(cases))
        self.assertNotIn(KEY, output)

    def test_valid_options_pass(self) -> None:
        """Valid options parse quietly."""
        options = Options(environ={})
        options.parseOptions(AUTH)
        self.assertEqual(options["key"], KEY.encode())
        self.assertEqual(self.stderr.getvalue(), "")

    def test_help_still_exits_zero(self) -> None:
        """--help is not an error: it prints every option and exits 0."""
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        e = self.assertRaises(SystemExit, Options(environ={}).parseOptions, ["--help"])
        self.assertIn(e.code, (0, None))
        for option in ("--secret-file", "--listen", "--max-buffer-bytes", "--no-auth"):
            self.assertIn(option, stdout.getvalue())


class HelpTextTests(SynchronousTestCase):
    """``twistd nanostream --help`` reads cleanly, whatever the terminal's width."""

    def descriptions(self, help_text: str) -> dict[str, str]:
        """Each option's description in ``help_text``, its wrapped lines joined."""
        lines = help_text.split("Options:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        # The description column starts where the first option's text does.
        column = re.match(r"\s*(-\w, )?--\S+\s+", lines[0])
        assert column is not None, lines[0]
        width = column.end()
        descriptions: dict[str, list[str]] = {}
        for line in lines:
            name = line[:width].strip()
            if name:
                current = descriptions.setdefault(name.split("--", 1)[1], [])
            current.append(line[width:])
        return {name: " ".join(parts) for name, parts in descriptions.items()}

    def assertNoRunsOfSpaces(self, help_text: str) -> None:
        descriptions = self.descriptions(help_text)
        options = {name.rstrip("=") for name in Options().longOpt}
        self.assertEqual({name.rstrip("=") for name in descriptions}, options)
        for name, description in descriptions.items():
            with self.subTest(option=name):
                self.assertTrue(description, f"--{name} has no description")
                self.assertNotRegex(description, r"\s{2}")

    def test_no_runs_of_spaces(self) -> None:
        """No option's description holds a run of two or more spaces."""
        self.assertNoRunsOfSpaces(str(Options()))

    def test_no_runs_of_spaces_unwrapped(self) -> None:
        """Nor does a description wide enough to need no wrapping."""
        self.assertNoRunsOfSpaces(Options().getUsage(width=1000))
