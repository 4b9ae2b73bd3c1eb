"""``twistd --logger nanostream.ops.logs.json_observer``: JSON Lines."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile

from twisted.logger import Logger, jsonFileLogObserver
from twisted.trial.unittest import SynchronousTestCase

from nanostream.ops.logs import json_observer, open_twistd_log, twistd_log_destination


class DestinationTests(SynchronousTestCase):
    def test_foreground_without_logfile(self) -> None:
        """``twistd -n`` without --logfile logs to stdout."""
        self.assertIsNone(twistd_log_destination(["-n", "nanostream"]))

    def test_daemon_without_logfile(self) -> None:
        """A daemon without --logfile logs to twistd.log, as twistd does."""
        self.assertEqual(twistd_log_destination(["nanostream"]), "twistd.log")

    def test_logfile_spellings(self) -> None:
        """Every spelling twistd accepts for --logfile is understood."""
        for argv in (
            ["--logfile", "/var/log/n.json", "nanostream"],
            ["--logfile=/var/log/n.json", "nanostream"],
            ["-l", "/var/log/n.json", "nanostream"],
            ["-n", "-l/var/log/n.json", "nanostream"],
            ["--logf=/var/log/n.json", "nanostream"],
        ):
            self.assertEqual(twistd_log_destination(argv), "/var/log/n.json", argv)

    def test_logfile_dash(self) -> None:
        """``--logfile -`` means stdout."""
        self.assertIsNone(twistd_log_destination(["-n", "--logfile", "-", "x"]))

    def test_subcommand_options_ignored(self) -> None:
        """Options after the subcommand belong to nanostream, not twistd."""
        argv = ["-n", "nanostream", "--logfile", "elsewhere"]
        self.assertIsNone(twistd_log_destination(argv))

    def test_logger_option_itself(self) -> None:
        """The --logger option that names us does not confuse the parse."""
        argv = ["-n", "--logger", "nanostream.ops.logs.json_observer", "nanostream"]
        self.assertIsNone(twistd_log_destination(argv))


class ObserverTests(SynchronousTestCase):
    def test_stdout_json_lines(self) -> None:
        """Each event is one JSON object on its own line, fields kept apart."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        log = Logger(namespace="test", observer=json_observer(["-n", "nanostream"]))
        log.warn(
            "rejected handshake from {peer}: {reason}",
            reason="token has expired",
            peer="tcp4:192.0.2.1:5000",
            origin="https://example.test",
        )
        log.info("second")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        event = json.loads(lines[0])
        self.assertEqual(event["reason"], "token has expired")
        self.assertEqual(event["peer"], "tcp4:192.0.2.1:5000")
        self.assertEqual(event["origin"], "https://example.test")
        self.assertEqual(event["log_level"]["name"], "warn")
        self.assertNotIn("\x1e", out.getvalue())

    def test_logfile(self) -> None:
        """With twistd's --logfile the log goes to that file, created if missing."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "nanostream.json")
        out = open_twistd_log(["--logfile", path, "nanostream"])
        self.addCleanup(out.close)
        observer = jsonFileLogObserver(out, recordSeparator="")
        Logger(namespace="test", observer=observer).info("hello {who}", who="ops")
        with open(path) as f:
            event = json.loads(f.readline())
        self.assertEqual(event["who"], "ops")

    def test_stdout_when_foreground(self) -> None:
        """In the foreground without --logfile the log is stdout itself."""
        self.assertIs(open_twistd_log(["-n", "nanostream"]), sys.stdout)
