"""``examples/resume_client.py`` against the real service, cut off mid-feed.

The client reaches the service through a :class:`~.cutting.CuttingProxy`
that resets its connection while a feed keeps writing; what it prints on
stdout must be every line once, in order.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from .cutting import CuttingProxy, feed, numbered
from .harness import (
    LISTEN_LOOPBACK,
    STOP_TIMEOUT,
    LogReader,
    Nanostream,
    ServiceTestCase,
    receive,
    stop_process,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "resume_client.py"

#: The continuous feed, and the lines printed before each cut.
FEED_LINES = 3000
FEED_RATE = 500.0
CUTS = (400, 1500)


class ResumeClient:
    """The example client as a process; its stdout and stderr read by line."""

    def __init__(self, url: str, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLE), url, *options],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.lines = LogReader(self.process.stdout, "client stdout")
        self.status = LogReader(self.process.stderr, "client stderr")

    def await_lines(self, count: int) -> list[str]:
        """Its first ``count`` lines, once it printed them."""
        self.lines.find(r"", after=count - 1)
        return self.lines.since(0)[:count]

    def stop(self) -> int:
        """SIGTERM, as an operator stops it; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        status = stop_process(self.process, STOP_TIMEOUT)
        self.lines.join(STOP_TIMEOUT)
        self.status.join(STOP_TIMEOUT)
        return status


class ResumeClientTests(ServiceTestCase):
    """The Python client resumes after each cut and prints every line once."""

    def client(
        self, service: Nanostream, *options: str
    ) -> tuple[ResumeClient, CuttingProxy]:
        proxy = CuttingProxy(service.websocket)
        self.addCleanup(proxy.close)
        client = ResumeClient(f"ws://127.0.0.1:{proxy.port}/", *options)
        self.addCleanup(client.stop)
        client.status.wait_for(r"^connected$")
        return client, proxy

    def test_every_line_once_across_cuts(self) -> None:
        """Cut twice mid-feed, the client resumes with tokens from the app's
        endpoint and prints every line once, in order."""
        service = self.start(source=LISTEN_LOOPBACK, options=["--demo"])
        address = service.websocket
        client, proxy = self.client(
            service, "--token-url", f"http://{address.host}:{address.port}/token"
        )
        producer = feed(service.source, FEED_LINES, FEED_RATE)
        self.addCleanup(stop_process, producer, STOP_TIMEOUT)
        for count in CUTS:
            client.await_lines(count)
            mark = client.status.mark()
            self.assertGreater(proxy.cut(), 0)
            self.assertIsNone(producer.poll(), "the feed ended before the cut")
            client.status.wait_for(r"^connected, resuming after \d+-\d+$", after=mark)
            client.status.wait_for(r"^caught up after \d+-\d+$", after=mark)
        self.assertEqual(client.await_lines(FEED_LINES), numbered(1, FEED_LINES))
        self.assertEqual(producer.wait(STOP_TIMEOUT), 0)
        self.assertEqual(client.stop(), 0)
        last = client.status.wait_for(r"^stopped; last id (\S+)$")
        self.assertRegex(last.group(1), rf"^\d+-{FEED_LINES}$")
        self.assertEqual(len(client.lines.lines), FEED_LINES)
        self.assertNotIn("missed", client.status.text())
        # No token (a JWT starts "eyJ") in what the client prints.
        self.assertNotIn("eyJ", client.status.text())

    def test_gap_then_the_held_lines(self) -> None:
        """Kept away past the history bound, the client reports the gap and
        prints the lines the node still held; it mints its own tokens."""
        service = self.start(options=["--history-lines", "20"])
        witness = service.connect(service.mint())
        secret = str(service.directory / "secret")
        client, proxy = self.client(service, "--secret-file", secret)
        service.write("".join(f"{line}\n" for line in numbered(1, 10)).encode())
        self.assertEqual(client.await_lines(10), numbered(1, 10))
        proxy.hold()
        proxy.cut()
        service.write("".join(f"{line}\n" for line in numbered(11, 100)).encode())
        self.assertEqual(receive(witness, 100)[-1], "line 100")
        client.status.wait_for(r"connection lost")
        proxy.release()
        gap = client.status.wait_for(r"^missed lines after (\S+) \(next held: (\S+)\)$")
        ms = gap.group(1).split("-")[0]
        self.assertEqual(gap.groups(), (f"{ms}-10", f"{ms}-81"))
        service.write(b"line 101\n")
        self.assertEqual(client.await_lines(31), [*numbered(1, 10), *numbered(81, 101)])
