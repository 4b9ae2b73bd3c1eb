"""Run ``examples/token_page.py``, the operator's own token-minting web app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .harness import START_TIMEOUT, STOP_TIMEOUT, LogReader, Nanostream

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "token_page.py"


class ExampleApp:
    """The example app serving pages with tokens for ``service``'s secret."""

    def __init__(self, service: Nanostream) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLE),
                *("--secret-file", str(service.directory / "secret")),
                *("--stream", service.url()),
                *("--listen", "tcp:0:interface=127.0.0.1"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        self.log = LogReader(self.process.stdout, "example app")
        try:
            match = self.log.wait_for(
                r"token page listening on (?P<url>\S+)", timeout=START_TIMEOUT
            )
        except BaseException:
            self.stop()
            raise
        self.url = match["url"]

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(STOP_TIMEOUT)
        self.log.join(STOP_TIMEOUT)
