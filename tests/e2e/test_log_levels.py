"""``--log-level`` on the real twistd: what each level writes, line by line.

At ``warn`` the service announces no listener, so the test hands it a bound
socket as systemd would (``--listen systemd:...``): clients may connect at
once, and the kernel holds them until the service reads.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

from jwt.warnings import InsecureKeyLengthWarning
from twisted.trial.unittest import SynchronousTestCase
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from .harness import (
    EVENT_TIMEOUT,
    LISTEN_LOOPBACK,
    START_TIMEOUT,
    STOP_TIMEOUT,
    TWISTD,
    LogReader,
    ServiceTestCase,
    mint,
    receive,
    stop_process,
)
from .test_metrics import http_get, metrics_address
from .test_systemd import _ACTIVATE

#: Shorter than the recommended 32 bytes: the service warns at start.
SHORT_SECRET = "too-short-but-valid"


def short_token() -> str:
    """A token signed with the short secret, which PyJWT warns of here too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return mint(SHORT_SECRET)


class WarnLevelTests(SynchronousTestCase):
    """At warn, clients come and go silently; refusals and warnings stay."""

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="ns-levels-"))
        self.addCleanup(_remove, self.directory)
        (self.directory / "secret").write_text(SHORT_SECRET + "\n")

    def run_service(self, twistd_options: Sequence[str]) -> tuple[int, list[str]]:
        """Connect three clients, refuse one bad token, SIGTERM: exit status
        and every line the service wrote."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        argv = [
            sys.executable,
            "-c",
            _ACTIVATE,
            str(listener.fileno()),
            TWISTD,
            "-n",
            "--pidfile=",
            *twistd_options,
            "nanostream",
            "--secret-file",
            "secret",
            "--listen",
            "systemd:domain=INET:index=0",
            "--log-level",
            "warn",
        ]
        env = {k: v for k, v in os.environ.items() if k != "NANOSTREAM_SECRET"}
        with listener:
            process = subprocess.Popen(
                argv,
                pass_fds=(listener.fileno(),),
                cwd=self.directory,
                env={**env, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        self.addCleanup(stop_process, process, STOP_TIMEOUT)
        assert process.stdout is not None and process.stdin is not None
        log = LogReader(process.stdout, "twistd")
        url = f"ws://127.0.0.1:{port}/"

        clients = [self.connect(url + "?t=" + short_token()) for _ in range(3)]
        process.stdin.write(b"hello\n")
        process.stdin.flush()
        for client in clients:
            self.assertEqual(receive(client, 1), ["hello"])
        clients[0].close()

        try:
            self.connect(url + "?t=not-a-token")
        except InvalidStatus as e:
            self.assertEqual(e.response.status_code, 401)
        else:
            raise AssertionError("a bad token was admitted")
        log.wait_for("invalid token")

        status = stop_process(process, STOP_TIMEOUT)
        log.join(STOP_TIMEOUT)
        return status, log.lines

    def connect(self, url: str) -> ClientConnection:
        client = connect(
            url,
            open_timeout=START_TIMEOUT,
            close_timeout=EVENT_TIMEOUT,
            ping_interval=None,
            proxy=None,
            legacy=True,
        )
        self.addCleanup(client.close)
        return client

    def test_text_log(self) -> None:
        """twistd's text log holds the start-up warning and the refusal: no
        line for three clients connecting, one leaving and the stop."""
        status, lines = self.run_service([])
        self.assertEqual(status, 0)
        self.assertEqual(len(lines), 2, "\n".join(lines))
        warning, refusal = lines
        self.assertRegex(
            warning, r"\[nanostream\.clients#warn\] the secret is shorter than 32"
        )
        self.assertRegex(
            refusal,
            r"\[nanostream\.auth\.admission#warn\] rejected handshake from "
            r"tcp4:127\.0\.0\.1:\d+ \(origin None\): invalid token$",
        )

    def test_json_log(self) -> None:
        """The JSON observer gets the same two events and nothing else."""
        status, lines = self.run_service(
            ["--logger", "nanostream.ops.logs.json_observer"]
        )
        self.assertEqual(status, 0)
        events = [json.loads(line) for line in lines]
        self.assertEqual(
            [(e["log_namespace"], e["log_level"]["name"]) for e in events],
            [("nanostream.clients", "warn"), ("nanostream.auth.admission", "warn")],
        )
        self.assertEqual(events[1]["reason"], "invalid token")


class ProbeLogTests(ServiceTestCase):
    """Health and metrics probes in the access log, by level."""

    def test_debug_logs_probes(self) -> None:
        """At debug every probe gets its access line."""
        service = self.start(
            options=["--log-level", "debug", "--metrics", LISTEN_LOOPBACK]
        )
        monitor = metrics_address(service)
        self.assertEqual(http_get(monitor, "/healthz"), (200, "ok\n"))
        self.assertEqual(http_get(monitor, "/metrics")[0], 200)
        service.log.wait_for(r'"GET /healthz HTTP/1\.1" 200 ')
        service.log.wait_for(r'"GET /metrics HTTP/1\.1" 200 ')

    def test_info_skips_answered_probes(self) -> None:
        """At the default level an answered probe writes nothing, while any
        other request to the site is logged as usual."""
        service = self.start(options=["--metrics", LISTEN_LOOPBACK])
        monitor = metrics_address(service)
        mark = service.log.mark()
        self.assertEqual(http_get(monitor, "/healthz")[0], 200)
        self.assertEqual(http_get(monitor, "/readyz")[0], 200)
        self.assertEqual(http_get(monitor, "/metrics")[0], 200)
        self.assertEqual(http_get(monitor, "/elsewhere")[0], 404)
        # Requests are answered in order: the 404's line comes after any
        # line the probes would have written.
        last, _ = service.log.find(r'"GET /elsewhere HTTP/1\.1" 404 ', after=mark)
        probes = [
            line for line in service.log.since(mark)[: last - mark] if "GET /" in line
        ]
        self.assertEqual(probes, [])

    def test_failed_probe_is_a_warning(self) -> None:
        """A 503 from /readyz (the Redis ledger is unreachable) is a warn line."""
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        dead.close()
        service = self.start(
            options=[
                "--ledger",
                f"redis://127.0.0.1:{port}/0",
                "--metrics",
                LISTEN_LOOPBACK,
            ]
        )
        monitor = metrics_address(service)
        self.assertEqual(http_get(monitor, "/readyz")[0], 503)
        service.log.wait_for(r"#warn\] probe /readyz answered 503 to ")


def _remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
