"""Resume against the real service: ids, ``since``, ``!gap`` and ``!live``.

Lines go in through the service's stdin or an endpoint source, so their ids
are ``<start ms>-<n>`` with ``n`` counting lines from 1.  A raw client that
stays connected is the witness that the node has read a line: a line reaches
clients only after it is in the history.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import cycle

from .harness import (
    EVENT_TIMEOUT,
    LISTEN_LOOPBACK,
    STOP_TIMEOUT,
    V1,
    Nanostream,
    ServiceTestCase,
    id_parts,
    receive,
    split_id,
    stop_process,
)

#: Lines the continuous feed writes, in batches of FEED_BATCH with a pause of
#: FEED_PAUSE seconds after each: paced so that clients drop and resume many
#: times while it runs, with lines arriving at every moment of a resume.
FEED_LINES = 8000
FEED_BATCH = 4
FEED_PAUSE = 0.0005

#: The feed: a process of its own, so that its pace does not depend on the
#: test's threads (which share one interpreter lock with a thread feeding).
FEED = """
import socket, sys, time
host, port, total, batch, pause = sys.argv[1:]
total, batch, pause = int(total), int(batch), float(pause)
with socket.create_connection((host, int(port)), timeout=10) as producer:
    for first in range(1, total + 1, batch):
        last = min(first + batch, total + 1)
        producer.sendall(b"".join(b"%d\\n" % n for n in range(first, last)))
        time.sleep(pause)
"""

#: How many live lines a client of the seam test reads after ``!live``
#: before it drops; 0 drops at the seam itself.
LIVE_READS = (1, 137, 0, 412, 23, 250, 3, 600, 64, 9)


def lines(first: int, last: int) -> bytes:
    """Lines ``line first`` .. ``line last`` as the source writes them."""
    return b"".join(b"line %d\n" % n for n in range(first, last + 1))


def expected(ms: int, first: int, last: int) -> list[str]:
    """The same lines as a ``nanostream.v1`` client receives them."""
    return [f"{ms}-{n} line {n}" for n in range(first, last + 1)]


class SeamTests(ServiceTestCase):
    """Clients drop and resume while lines keep coming: none lost or repeated."""

    def feed(self, service: Nanostream) -> subprocess.Popen[bytes]:
        """Start the feed into ``service``'s endpoint source; stopped in cleanup."""
        source = service.source
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                FEED,
                source.host,
                str(source.port),
                str(FEED_LINES),
                str(FEED_BATCH),
                str(FEED_PAUSE),
            ]
        )
        self.addCleanup(stop_process, process, STOP_TIMEOUT)
        return process

    def test_drop_and_resume_under_a_continuous_feed(self) -> None:
        """Across many drops and resumes every line arrives exactly once, in order."""
        service = self.start(source=LISTEN_LOOPBACK)
        # Unbounded client queues: websockets stops reading a connection
        # whose queue is full, and its clean close would then wait in vain.
        client = service.connect_v1(service.mint(), max_queue=None)
        feed = self.feed(service)
        plan: Iterator[int] = cycle(LIVE_READS)
        # The number of the last line received.
        seen = 0
        ms: int | None = None
        last_id: str | None = None
        # The first client did not resume: it is live from the start.
        live, budget = True, next(plan)
        drops = resumes_mid_feed = 0
        feeding = False
        while seen < FEED_LINES:
            if live and budget <= 0:
                drops += 1
                # Every other drop is abrupt: the TCP connection just ends.
                if drops % 2:
                    client.close_socket()
                else:
                    client.close()
                feeding = feed.poll() is None
                client = service.connect_v1(
                    service.mint(), since=last_id, max_queue=None
                )
                live, budget = False, next(plan)
                continue
            message = client.recv(timeout=EVENT_TIMEOUT)
            if message == "!live":
                self.assertFalse(live, "a second !live on one connection")
                live = True
                # The feed ran from before the handshake until after the seam.
                resumes_mid_feed += feeding and feed.poll() is None
                continue
            line_id, line = split_id(message)
            line_ms, seq = id_parts(line_id)
            ms = line_ms if ms is None else ms
            self.assertEqual((line_ms, seq), (ms, int(line)), message)
            # Nothing lost, nothing repeated: each line is the next one.
            where = "live" if live else "replayed"
            self.assertEqual(
                seq, seen + 1, f"{where} after {last_id} on connection {drops}"
            )
            seen = seq
            last_id = line_id
            if live:
                budget -= 1
        self.assertEqual(feed.wait(EVENT_TIMEOUT), 0)
        self.assertGreaterEqual(resumes_mid_feed, 5, f"{drops} resumes in all")


class ResumeTests(ServiceTestCase):
    """A resume gets what it missed, the notices, then the live lines."""

    def test_exact_resume_after_a_drop(self) -> None:
        """After a drop a resume gets the lines after since, !live, then live ones."""
        before = time.time()
        service = self.start()
        after = time.time()
        witness = service.connect(service.mint())
        first = service.connect_v1(service.mint())
        service.write(lines(1, 5))
        got = [split_id(message) for message in receive(first, 3)]
        ms = id_parts(got[0][0])[0]
        # With stdin as the source, <ms> is the node's start time.
        self.assertGreaterEqual(ms, int(before * 1000) - 1000)
        self.assertLessEqual(ms, int(after * 1000) + 1000)
        self.assertEqual(
            [f"{line_id} {line!s}" for line_id, line in got], expected(ms, 1, 3)
        )
        first.close()
        service.write(lines(6, 8))
        receive(witness, 8)
        resumed = service.connect_v1(service.mint(), since=f"{ms}-3")
        self.assertEqual(receive(resumed, 6), [*expected(ms, 4, 8), "!live"])
        service.write(lines(9, 10))
        self.assertEqual(receive(resumed, 2), expected(ms, 9, 10))

    def test_resume_at_the_newest_line(self) -> None:
        """Resuming at the newest line gets !live at once, then the next line."""
        service = self.start()
        witness = service.connect(service.mint())
        first = service.connect_v1(service.mint())
        service.write(lines(1, 2))
        [_, (last_id, _)] = [split_id(m) for m in receive(first, 2)]
        receive(witness, 2)
        resumed = service.connect_v1(service.mint(), since=last_id)
        self.assertEqual(resumed.recv(timeout=EVENT_TIMEOUT), "!live")
        service.write(lines(3, 3))
        ms = id_parts(last_id)[0]
        self.assertEqual(receive(resumed, 1), expected(ms, 3, 3))

    def test_backlog_beyond_the_buffer_bound(self) -> None:
        """A resume with more to catch up than --max-buffer-bytes is not dropped."""
        service = self.start(options=["--max-buffer-bytes", "16384"])
        witness = service.connect(service.mint())
        # It reads on while closing, so that its close is not held up.
        first = service.connect_v1(service.mint(), max_queue=None)
        service.write(
            b"".join(b"%04d " % n + b"x" * 1995 + b"\n" for n in range(1, 201))
        )
        since, _ = split_id(first.recv(timeout=EVENT_TIMEOUT))
        first.close()
        self.assertEqual(len(receive(witness, 200)), 200)
        resumed = service.connect_v1(service.mint(), since=since)
        messages = receive(resumed, 200)
        self.assertEqual(messages[-1], "!live")
        self.assertEqual(
            [int(line[:4]) for _, line in map(split_id, messages[:-1])],
            list(range(2, 201)),
        )
        self.assertNotIn("slow consumer", service.log.text())

    def test_gap_past_the_history_bound(self) -> None:
        """A since older than the history: !gap since oldest, the held lines, !live."""
        service = self.start(options=["--history-lines", "100"])
        witness = service.connect(service.mint())
        early = service.connect_v1(service.mint())
        service.write(lines(1, 10))
        since, _ = split_id(receive(early, 10)[-1])
        early.close()
        ms = id_parts(since)[0]
        service.write(lines(11, 250))
        self.assertEqual(receive(witness, 250)[-1], "line 250")
        resumed = service.connect_v1(service.mint(), since=since)
        self.assertEqual(
            receive(resumed, 102),
            [f"!gap {since} {ms}-151", *expected(ms, 151, 250), "!live"],
        )
        service.write(lines(251, 251))
        self.assertEqual(receive(resumed, 1), expected(ms, 251, 251))

    def test_id_from_an_earlier_run(self) -> None:
        """After a restart an old id is not held: !gap, the new run's lines, !live."""
        old = self.start()
        client = old.connect_v1(old.mint())
        old.write(b"old run\n")
        old_id, line = split_id(client.recv(timeout=EVENT_TIMEOUT))
        self.assertEqual(line, "old run")
        old.stop()
        new = self.start()
        witness = new.connect(new.mint())
        new.write(lines(1, 2))
        receive(witness, 2)
        resumed = new.connect_v1(new.mint(), since=old_id)
        messages = receive(resumed, 4)
        ms = id_parts(split_id(messages[1])[0])[0]
        self.assertGreater(ms, id_parts(old_id)[0])
        self.assertEqual(
            messages, [f"!gap {old_id} {ms}-1", *expected(ms, 1, 2), "!live"]
        )
        new.write(lines(3, 3))
        self.assertEqual(receive(resumed, 1), expected(ms, 3, 3))


class BadResumeTests(ServiceTestCase):
    """A bad ``since`` is refused with 400 and leaves the token unused."""

    def test_refused_with_400_token_still_usable(self) -> None:
        """Each bad since is a 400 logged once; the same token then opens."""
        service = self.start()
        cases = [
            ("abc", [V1]),
            ("", [V1]),
            ("1-", [V1]),
            (f"{2**64}-1", [V1]),
            ("%D9%A1-1", [V1]),
            ("1-1&since=1-1", [V1]),
            ("1-1", []),
            ("1-1", ["chat"]),
        ]
        for since, subprotocols in cases:
            with self.subTest(since=since, subprotocols=subprotocols):
                token = service.mint()
                mark = service.log.mark()
                refusal = service.refuse(token, since=since, subprotocols=subprotocols)
                self.assertEqual(refusal.status, 400)
                client = service.connect_v1(token)
                end, _ = service.log.find(r"client connected", after=mark)
                refused = [
                    line
                    for line in service.log.since(mark)[: end - mark]
                    if "rejected handshake" in line
                ]
                self.assertEqual(len(refused), 1, refused)
                self.assertIn(f"from {refusal.peer} ", refused[0])
                self.assertTrue(refused[0].endswith(": bad resume position"))
                client.close()

    def test_checked_before_the_token(self) -> None:
        """A bad since without any token is 400, not 401."""
        service = self.start()
        refusal = service.refuse(since="x", subprotocols=[V1])
        self.assertEqual(refusal.status, 400)
        service.log.wait_for(r"rejected handshake .*: bad resume position$")


class RawClientTests(ServiceTestCase):
    """A client without the subprotocol sees what it always saw."""

    def test_raw_client_unchanged_beside_v1_clients(self) -> None:
        """Beside live and resuming v1 clients a raw client gets the bare lines only."""
        service = self.start()
        raw = service.connect(service.mint())
        v1 = service.connect_v1(service.mint())
        service.write(
            b"plain\n\xc3\xa9t\xc3\xa9\n\xff\xfe binary\ncrlf\r\n\n!live\n1-1 x\n"
        )
        sent: list[str | bytes] = [
            "plain",
            "\u00e9t\u00e9",
            b"\xff\xfe binary",
            "crlf",
            "!live",
            "1-1 x",
        ]
        self.assertEqual(receive(raw, 6), sent)
        received = [split_id(message) for message in receive(v1, 6)]
        self.assertEqual([line for _, line in received], sent)
        ms = id_parts(received[0][0])[0]
        self.assertEqual(
            [line_id for line_id, _ in received], [f"{ms}-{n}" for n in range(1, 7)]
        )
        resumed = service.connect_v1(service.mint(), since=f"{ms}-4")
        self.assertEqual(
            receive(resumed, 3), [f"{ms}-5 !live", f"{ms}-6 1-1 x", "!live"]
        )
        service.write(b"sentinel\n")
        # Nothing came between: no id, no notice for the raw client.
        self.assertEqual(receive(raw, 1), ["sentinel"])
        for client in (v1, resumed):
            self.assertEqual(receive(client, 1), [f"{ms}-7 sentinel"])
        self.assertIsNone(raw.subprotocol)
