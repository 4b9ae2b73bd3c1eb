"""``twistd --logger nanostream.ops.logs.json_observer``: the real JSON log."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from .harness import (
    EVENT_TIMEOUT,
    LISTEN_LOOPBACK,
    START_TIMEOUT,
    STOP_TIMEOUT,
    TWISTD,
    LogReader,
    mint,
    new_secret,
    stop_process,
)

ORIGIN = "https://app.example.test"


class JSONLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="nanostream-e2e-"))
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.secret = new_secret()
        (self.directory / "secret").write_text(self.secret + "\n")

    def start(self, *twistd_options: str) -> subprocess.Popen[bytes]:
        """twistd with our JSON logger; stopped (TERM, then KILL) in cleanup."""
        process = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "--logger",
                "nanostream.ops.logs.json_observer",
                *twistd_options,
                "nanostream",
                "--secret-file",
                "secret",
                "--listen",
                LISTEN_LOOPBACK,
            ],
            cwd=self.directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(self.stop, process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        stop_process(process, STOP_TIMEOUT)
        assert process.stdin is not None
        process.stdin.close()

    def refuse(self, port: int, token: str) -> int:
        """A handshake with ``token`` and our Origin; the refusal's status."""
        try:
            client = connect(
                f"ws://127.0.0.1:{port}/?t={token}",
                origin=Origin(ORIGIN),
                proxy=None,
                open_timeout=EVENT_TIMEOUT,
            )
        except InvalidStatus as e:
            return e.response.status_code
        client.close()
        raise AssertionError("the handshake was accepted")

    def test_rejection_is_one_json_event_without_secrets(self) -> None:
        """A refused handshake is a JSON event with reason, peer and origin apart."""
        process = self.start()
        assert process.stdout is not None and process.stderr is not None
        log = LogReader(process.stdout, "stdout")
        errors = LogReader(process.stderr, "stderr")
        found = log.wait_for(
            r'"what": "websocket".*"address": "tcp:127\.0\.0\.1:(\d+)"',
            timeout=START_TIMEOUT,
        )
        port = int(found[1])

        expired = mint(self.secret, lifetime=-60)
        self.assertEqual(self.refuse(port, expired), 401)
        log.wait_for(r'"reason": "token has expired"')

        self.stop(process)
        log.join(STOP_TIMEOUT)
        errors.join(STOP_TIMEOUT)
        events: list[dict[str, Any]] = [json.loads(line) for line in log.lines]
        refusals = [event for event in events if "reason" in event]
        self.assertEqual(len(refusals), 1)
        refusal = refusals[0]
        self.assertEqual(refusal["reason"], "token has expired")
        self.assertEqual(refusal["origin"], ORIGIN)
        self.assertRegex(refusal["peer"], r"^tcp4:127\.0\.0\.1:\d+$")
        self.assertEqual(refusal["log_level"]["name"], "warn")

        output = log.text() + errors.text()
        self.assertNotIn(self.secret, output)
        for part in expired.split("."):
            self.assertNotIn(part, output)
