"""The soak scenario of bench/soak.py, short enough for every test run.

The real ``twistd -n nanostream`` comes from the harness; bench/soak.py
drives it from a process of its own (``websockets`` clients here, picows in
the long bench run): 300 clients on a steady feed for 20 seconds while they
come and go, replay used tokens and stall.  Every check of the long run
applies, the server's resident memory returning near its baseline included
(the service runs with ``PYTHONMALLOC=malloc``, as the systemd units run
it); none is about speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .harness import LISTEN_LOOPBACK, STOP_TIMEOUT, Address, ServiceTestCase

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"

#: A bound on the whole run: ramp, 20 s of churn, the drains, a second wave.
RUN_TIMEOUT = 300.0


class SoakTests(ServiceTestCase):
    """Churn, replays and stalled readers against the real service."""

    def soak(self, *args: str) -> dict[str, Any]:
        """Run bench/soak.py against a fresh service; its report."""
        service = self.start(
            source=LISTEN_LOOPBACK,
            # The history keeps lines (and the heap pages they sit on) by
            # design, bounded by --history-bytes; off here, so that what is
            # measured is what clients cost and give back.
            options=[
                "--metrics",
                LISTEN_LOOPBACK,
                "--max-buffer-bytes",
                "65536",
                "--history-lines",
                "0",
            ],
            env={"PYTHONMALLOC": "malloc"},
        )
        metrics = Address.parse(service.log.wait_for(r"metrics listening on (\S+)$")[1])
        report_path = self.directory / "soak.json"
        process = subprocess.Popen(
            [
                sys.executable,
                str(SOAK),
                "--url",
                service.url(),
                "--source-address",
                f"{service.source.host}:{service.source.port}",
                "--metrics-address",
                f"{metrics.host}:{metrics.port}",
                "--secret-file",
                str(self.directory / "secret"),
                "--server-pid",
                str(service.process.pid),
                "--client",
                "websockets",
                "--json",
                str(report_path),
                *args,
            ],
            cwd=SOAK.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(_kill, process)
        output, _ = process.communicate(timeout=RUN_TIMEOUT)
        self.assertTrue(report_path.exists(), output.decode("utf-8", "replace"))
        report: dict[str, Any] = json.loads(report_path.read_text())
        report["server_slow_consumer_lines"] = service.log.text().count(
            "dropping slow consumer"
        )
        return report

    def test_churn_replay_and_stalls(self) -> None:
        """Every soak check holds for 300 clients churning on a 20 s feed."""
        report = self.soak(
            "--clients",
            "300",
            "--duration",
            "20",
            "--rate",
            "20",
            "--churn",
            "10",
            "--line-bytes",
            "2048",
            "--stall-share",
            "0.03",
            "--token-ttl",
            "10",
            "--concurrency",
            "50",
            # 300 clients grow the server by little more than 1 MiB, so the
            # shares are coarser than the long run's: what stays without a
            # release is all of it, and with CPython's allocator about 0.4
            # even after the tokens expired.  The floor keeps a run that
            # grew less than usual from being held to page noise, while
            # staying below the ~1 MiB a run without any release keeps.
            "--rss-left-share",
            "0.6",
            "--rss-expired-share",
            "0.25",
            "--rss-floor-mib",
            "0.5",
        )
        failed = [name for name, passed in report["checks"].items() if not passed]
        self.assertEqual(failed, [], json.dumps(report, indent=1))
        # The scenario really exercised each path it checks.
        self.assertGreater(report["healthy_left_during_run"], 0)
        self.assertGreater(report["reuse"].get("401", 0), 0)
        self.assertGreater(report["stalled"], 0)
        self.assertEqual(report["server_slow_consumer_lines"], report["stalled"])
        self.assertGreater(report["ledger_entries"]["max"], 0)
        self.assertGreater(report["memory_releases"], 0)
        self.assertIn("after_tokens_expired", report["rss_kib"])


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(STOP_TIMEOUT)
