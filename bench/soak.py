"""Soak and churn: thousands of clients on a steady feed, coming and going for minutes.

    bench/.venv/bin/python bench/soak.py --clients 5000 --duration 300

Standalone, it starts ``twistd -n nanostream`` itself (pinned to one core,
this process to the other) with an endpoint source it feeds over TCP and
``--metrics``.  With ``--url`` it drives a service someone else started
(tests/e2e/test_soak.py does, through the end-to-end harness).

While a producer writes ``--rate`` numbered lines a second (bench/feed.py's
lines: each starts with its sequence number), ``--clients`` clients listen,
each with a fresh single-use token.  ``--churn`` times a second one of them
leaves and a new one arrives; every ``--reuse-every`` churns a used token is
presented again, and must be refused; a ``--stall-share`` of the newcomers
complete the handshake and then never read again, and must be dropped as
slow consumers while everyone else keeps receiving.  Afterwards it checks:

* every healthy client received every line from the first it saw on,
  in order, exactly once, and that first line was no later than the first
  line written after its handshake; the clients still there at the end
  received the last line;
* no healthy client was disconnected by the server;
* every reused token was refused (401) and every fresh one accepted;
* every stalled client was dropped, and the server counted each as a
  slow consumer;
* at each scrape, the ledger held no more entries than tokens presented
  that had not expired at the last accepted handshake before the scrape;
* the server gave the memory back: once the clients had left (and the
  server had released what they freed, which the counter
  ``nanostream_memory_releases_total`` tells), its resident size was back
  within ``--rss-left-share`` of the growth (peak minus baseline) above the
  baseline; once their tokens had expired too, within
  ``--rss-expired-share``; either way ``--rss-floor-mib`` is allowed, so
  that a run whose growth is small is not held to less than page noise;
* a second wave of as many idle clients took at most ``--rss-slack-mib``
  more resident memory than the first did at its peak.

Standalone, the server runs with ``PYTHONMALLOC=malloc``, as the systemd
units in contrib/systemd run it: CPython's own small-object allocator keeps
a 1 MiB arena while any object in it lives, so with it (``--pymalloc``) much
less memory goes back (docs/reliability.rst has both figures).

The report (JSON) goes to stdout or ``--json``; a summary to stderr.  The
exit status is 1 if any check failed.  No check is about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import json
import os
import random
import re
import resource
import socket
import sys
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import feed
import provenance
import tokens
from clients import Backend, Connection, Rejected, pick_backend

#: The first state field of ``struct tcp_info`` (linux/tcp.h).
_TCP_ESTABLISHED = 1
_METRIC = re.compile(rb"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)", re.MULTILINE)
_NEVER = 1 << 62
RELEASES = "nanostream_memory_releases_total"
#: Seconds to wait for a release once the clients have left: the server
#: checks every 10 s.
RELEASE_TIMEOUT = 30.0
#: Clients of the warm-up wave: enough for the server to release after it.
WARMUP_CLIENTS = 200


# -- what each client saw ----------------------------------------------------


class Soak:
    """What every client and task of one run shares."""

    def __init__(self) -> None:
        self.final_seq = _NEVER
        self.waiting_for_final = 0
        self.all_final: asyncio.Event = asyncio.Event()
        self.latencies = array("q")
        self.unexpected_drops = 0


class Client:
    """One healthy client's record; the backend calls ``on_message``/``on_close``.

    ``last`` starts below -1 so that the first message, whatever its number,
    takes the slow path and is recorded as ``first``.
    """

    __slots__ = (
        "soak",
        "token_exp",
        "opened_seq",
        "first",
        "last",
        "count",
        "gaps",
        "backwards",
        "leaving",
        "ended",
        "timed",
        "conn",
    )

    def __init__(self, soak: Soak, token_exp: int, timed: bool) -> None:
        self.soak = soak
        self.token_exp = token_exp
        self.opened_seq = -1
        self.first = -1
        self.last = -2
        self.count = 0
        self.gaps = 0
        self.backwards = 0
        self.leaving = False
        self.ended = False
        self.timed = timed
        self.conn: Connection | None = None

    def on_message(self, head: bytes) -> None:
        seq = int(head[feed.SEQ_AT : head.index(b",", feed.SEQ_AT)])
        if seq == self.last + 1:
            self.last = seq
            self.count += 1
        else:
            self._unusual(seq)
        if self.timed:
            sent = feed.parse_head(head[: feed.HEAD_BYTES])[1]
            self.soak.latencies.append(time.monotonic_ns() - sent)
        if seq >= self.soak.final_seq and self.soak.waiting_for_final:
            self._reached_final()

    def _unusual(self, seq: int) -> None:
        if self.last == -2:
            self.first = seq
        elif seq <= self.last:
            self.backwards += 1
            return
        else:
            self.gaps += seq - self.last - 1
        self.last = seq
        self.count += 1

    def _reached_final(self) -> None:
        soak = self.soak
        soak.waiting_for_final -= 1
        if soak.waiting_for_final == 0:
            soak.all_final.set()

    def on_close(self) -> None:
        if self.ended:
            return
        self.ended = True
        if not self.leaving:
            self.soak.unexpected_drops += 1
            if self.last < self.soak.final_seq <= _NEVER - 1:
                self._reached_final()

    @property
    def in_order(self) -> bool:
        """No gap, no repeat, and the first line no later than it had to be."""
        return (
            self.gaps == 0
            and self.backwards == 0
            and (self.first == -1 or self.first <= self.opened_seq)
        )


@dataclass
class Stalled:
    """A client that completed its handshake and then never read again."""

    sock: socket.socket
    opened_at: float
    dropped_at: float | None = None


# -- the producer ----------------------------------------------------------------


class Feeder:
    """Writes numbered lines to the endpoint source on a fixed schedule.

    ``next_seq`` is the number of the next line to write: every line below
    it has been handed to the transport, none at or above it has.
    """

    def __init__(self, writer: asyncio.StreamWriter, rate: float, pad: int) -> None:
        self._writer = writer
        self._interval = 1.0 / rate
        self._pad = b',"pad":"' + b"x" * pad + b'"}\n' if pad > 0 else b""
        self.next_seq = 0
        self.stopped = asyncio.Event()

    def line(self, seq: int) -> bytes:
        line = feed.make_line(seq, time.monotonic_ns())
        return line[:-2] + self._pad if self._pad else line

    async def run(self) -> None:
        start = time.monotonic()
        while not self.stopped.is_set():
            due = int((time.monotonic() - start) / self._interval) + 1
            if due > self.next_seq:
                batch = b"".join(self.line(s) for s in range(self.next_seq, due))
                self._writer.write(batch)
                self.next_seq = due
                await self._writer.drain()
            wake = start + self.next_seq * self._interval - time.monotonic()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), max(wake, 0.0))


# -- the run -----------------------------------------------------------------------


@dataclass
class Options:
    url: str
    source: tuple[str, int]
    metrics: tuple[str, int]
    secret: bytes
    server_pid: int | None
    clients: int
    duration: float
    rate: float
    churn: float
    reuse_every: int
    stall_share: float
    token_ttl: int
    pad: int
    concurrency: int
    scrape_every: float
    rss_slack_mib: float
    rss_left_share: float
    rss_expired_share: float
    rss_floor_mib: float
    drain_timeout: float
    backend: str


@dataclass
class Scrape:
    at: float
    values: dict[str, float]
    ledger_bound: int
    rss_kib: int | None


@dataclass
class Run:
    """The state of one soak, and what it found."""

    options: Options
    backend: Backend
    soak: Soak = field(default_factory=Soak)
    live: list[Client] = field(default_factory=list)
    departed: list[Client] = field(default_factory=list)
    stalled: list[Stalled] = field(default_factory=list)
    idle: list[Connection] = field(default_factory=list)
    exps: list[int] = field(default_factory=list)
    used: list[tuple[str, int]] = field(default_factory=list)
    last_accept_sent: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)
    reuse: Counter[str] = field(default_factory=Counter)
    scrapes: list[Scrape] = field(default_factory=list)
    opened: int = 0
    arrivals: int = 0
    feeder: Feeder | None = None
    stopping: bool = False
    stalls_done: asyncio.Event = field(default_factory=asyncio.Event)

    # -- tokens ---------------------------------------------------------------

    def fresh_token(self) -> tuple[str, int]:
        token = tokens.mint(self.options.secret, self.options.token_ttl)
        exp = int(time.time()) + self.options.token_ttl
        self.exps.append(exp)
        return token, exp

    def url(self, token: str) -> str:
        return self.options.url.rstrip("/") + "/?t=" + token

    # -- clients --------------------------------------------------------------

    async def open_healthy(self) -> None:
        token, exp = self.fresh_token()
        client = Client(self.soak, exp, timed=self.opened % 50 == 0)
        sent_at = time.time()
        try:
            conn = await self.backend.open(self.url(token), client, None)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            self.failures[_describe(exc)] += 1
            return
        assert self.feeder is not None
        client.opened_seq = self.feeder.next_seq
        client.conn = conn
        self.opened += 1
        self.last_accept_sent = max(self.last_accept_sent, sent_at)
        self.used.append((token, exp))
        if client.ended:
            self.departed.append(client)
        else:
            self.live.append(client)

    async def open_idle(self) -> None:
        """A client of the second wave: only there to take memory."""
        token, _ = self.fresh_token()
        try:
            self.idle.append(await self.backend.open(self.url(token), None, None))
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            self.failures["second wave " + _describe(exc)] += 1

    async def open_stalled(self) -> None:
        token, exp = self.fresh_token()
        sent_at = time.time()
        try:
            sock = await _stalled_handshake(self.url(token))
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            self.failures["stalled " + _describe(exc)] += 1
            return
        self.opened += 1
        self.last_accept_sent = max(self.last_accept_sent, sent_at)
        self.used.append((token, exp))
        self.stalled.append(Stalled(sock, time.monotonic()))
        self.stalls_done.clear()

    async def open_one(self) -> None:
        """A newcomer: every 1/stall_share-th one stalls, the others listen."""
        self.arrivals += 1
        share = self.options.stall_share
        if share > 0 and self.arrivals % max(1, round(1 / share)) == 0:
            await self.open_stalled()
        else:
            await self.open_healthy()

    def leave_one(self) -> None:
        """A random healthy client closes its connection."""
        if not self.live:
            return
        index = random.randrange(len(self.live))
        client = self.live[index]
        self.live[index] = self.live[-1]
        self.live.pop()
        client.leaving = True
        assert client.conn is not None
        client.conn.close()
        self.departed.append(client)

    async def reuse_one(self) -> None:
        """Present a used token that is still far from expiring: 401 expected."""
        now = time.time()
        candidates = [(t, e) for t, e in self.used[-500:] if e - now > 5]
        if not candidates:
            self.reuse["skipped"] += 1
            return
        token, _ = random.choice(candidates)
        try:
            status = await self.backend.handshake(self.url(token), None)
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            self.reuse[_describe(exc)] += 1
            return
        self.reuse[str(status)] += 1

    # -- background tasks -----------------------------------------------------

    async def churn(self, until: float) -> None:
        interval = 1.0 / self.options.churn
        step = 0
        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        while time.monotonic() < until:
            step += 1
            self.leave_one()
            _spawn(tasks, self.open_one())
            if self.options.reuse_every and step % self.options.reuse_every == 0:
                _spawn(tasks, self.reuse_one())
            await asyncio.sleep(max(0.0, start + step * interval - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=60)

    async def watch_stalls(self) -> None:
        """Notice each stalled client the server dropped; replace it while churning."""
        tasks: set[asyncio.Task[None]] = set()
        while True:
            pending = 0
            for stalled in self.stalled:
                if stalled.dropped_at is not None:
                    continue
                if _tcp_state(stalled.sock) == _TCP_ESTABLISHED:
                    pending += 1
                    continue
                stalled.dropped_at = time.monotonic()
                stalled.sock.close()
                if not self.stopping:
                    _spawn(tasks, self.open_healthy())
            if pending == 0:
                self.stalls_done.set()
            await asyncio.sleep(0.5)

    async def scrape(self) -> Scrape:
        reference = self.last_accept_sent
        text = await _http_get(self.options.metrics, "/metrics")
        values = {
            name.decode(): float(value)
            for name, labels, value in _METRIC.findall(text)
            if not labels or b'reason="token already used"' in labels
        }
        bound = len(self.exps) - bisect.bisect_right(self.exps, reference)
        rss = None
        if self.options.server_pid is not None:
            rss = _rss_kib(self.options.server_pid)
        sample = Scrape(time.time(), values, bound, rss)
        self.scrapes.append(sample)
        return sample

    async def scrape_forever(self) -> None:
        while True:
            try:
                await self.scrape()
            except OSError as exc:
                self.failures["scrape " + _describe(exc)] += 1
            await asyncio.sleep(self.options.scrape_every)

    async def wait_for_release(self, since: float | None, timeout: float) -> Scrape:
        """Poll until the server has released memory more than ``since`` times.

        Gives up after ``timeout`` seconds (a server that cannot release
        memory never does) and returns the last scrape either way.
        """
        deadline = time.monotonic() + timeout
        while True:
            sample = await self.scrape()
            released = sample.values.get(RELEASES)
            if since is None or released is None or released > since:
                return sample
            if time.monotonic() > deadline:
                return sample
            await asyncio.sleep(0.25)

    async def released_after_leaving(self, timeout: float) -> tuple[bool, Scrape]:
        """Wait for no client to be left, then for the release that follows."""
        left = await self.wait_for_clients(0, timeout)
        since = (await self.scrape()).values.get(RELEASES)
        return left, await self.wait_for_release(since, RELEASE_TIMEOUT)

    async def wait_for_ledger(self, count: int, timeout: float) -> bool:
        """Poll the server's ledger gauge until it shows ``count``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sample = await self.scrape()
            if sample.values.get("nanostream_ledger_entries") == count:
                return True
            await asyncio.sleep(0.5)
        return False

    async def wait_for_clients(self, count: int, timeout: float) -> bool:
        """Poll the server's client gauge until it shows ``count``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await self.scrape()).values.get("nanostream_clients") == count:
                return True
            await asyncio.sleep(0.25)
        return False


async def _stalled_handshake(url: str) -> socket.socket:
    """Complete a handshake on a socket with a small receive buffer, then stop."""
    match = re.match(r"ws://([^:/]+):(\d+)(/.*)", url)
    assert match is not None, url
    host, port, path = match[1], int(match[2]), match[3]
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Loopback's 64 KiB segments let the server's kernel buffer grow to
        # megabytes before it holds anything back; a real network's do not.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 30)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1024), 30)
            if not chunk:
                raise ConnectionResetError("closed during the handshake")
            response += chunk
        status = int(response.split(b" ", 2)[1])
        if status != 101:
            raise Rejected(status)
    except BaseException:
        sock.close()
        raise
    return sock


def _tcp_state(sock: socket.socket) -> int:
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    except OSError:
        return 0


async def _http_get(address: tuple[str, int], path: str) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), 10)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {address[0]}\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
        raise OSError(f"GET {path}: {head[:40]!r}")
    return body


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _spawn(tasks: set[asyncio.Task[None]], coro: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, Rejected):
        return f"http-{exc.status}"
    return type(exc).__name__


async def _bounded(
    count: int, concurrency: int, job: Callable[[], Awaitable[None]]
) -> None:
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await job()

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))


# -- the phases ------------------------------------------------------------------


async def soak(options: Options) -> dict[str, Any]:
    run = Run(options, pick_backend(options.backend))
    reader, writer = await asyncio.open_connection(*options.source)
    run.feeder = Feeder(writer, options.rate, options.pad)
    phases: dict[str, float] = {}
    memory: dict[str, int | None] = {}
    t0 = time.monotonic()

    # Warm up (imports, caches), so the baseline is a steady state, the
    # memory of the warm-up's clients given back.
    await _bounded(WARMUP_CLIENTS, options.concurrency, run.open_healthy)
    while run.live:
        run.leave_one()
    _, start = await run.released_after_leaving(60)
    memory["baseline"] = start.rss_kib
    run.departed.clear()
    warmup_opened = run.opened

    feeding = asyncio.ensure_future(run.feeder.run())
    scraping = asyncio.ensure_future(run.scrape_forever())
    watching = asyncio.ensure_future(run.watch_stalls())
    await _bounded(options.clients, options.concurrency, run.open_one)
    phases["ramp_s"] = time.monotonic() - t0

    t1 = time.monotonic()
    await run.churn(until=t1 + options.duration)
    phases["churn_s"] = time.monotonic() - t1
    run.stopping = True

    # Keep feeding until every stalled client is dropped, then finish the feed.
    t2 = time.monotonic()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(run.stalls_done.wait(), options.drain_timeout)
    phases["stall_drain_s"] = time.monotonic() - t2
    run.feeder.stopped.set()
    await feeding
    final = run.feeder.next_seq - 1
    soak_state = run.soak
    soak_state.waiting_for_final = sum(
        1 for c in run.live if not c.ended and c.last < final
    )
    soak_state.final_seq = final
    if soak_state.waiting_for_final == 0:
        soak_state.all_final.set()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(soak_state.all_final.wait(), options.drain_timeout)
    scraping.cancel()
    end = await run.scrape()
    memory["peak"] = max((s.rss_kib or 0 for s in run.scrapes), default=None)

    # Everyone leaves; the memory should follow.
    for client in run.live:
        client.leaving = True
        if client.conn is not None:
            client.conn.close()
    for stalled in run.stalled:
        stalled.sock.close()
    t3 = time.monotonic()
    all_left, after = await run.released_after_leaving(60)
    phases["left_to_release_s"] = time.monotonic() - t3
    memory["after"] = after.rss_kib
    watching.cancel()
    writer.close()

    # A second wave as large: what the first freed must serve it again.
    t4 = time.monotonic()
    await _bounded(options.clients, options.concurrency, run.open_idle)
    memory["second_wave"] = (await run.scrape()).rss_kib
    for conn in run.idle:
        conn.close()
    second_left, after_second = await run.released_after_leaving(60)
    memory["after_second_wave"] = after_second.rss_kib
    phases["second_wave_s"] = time.monotonic() - t4

    # Every token expires; the ledger forgets them and the memory follows.
    t5 = time.monotonic()
    wait = max(run.exps, default=0) - time.time() + 30
    ledger_empty = await run.wait_for_ledger(0, max(wait, 30))
    since = (await run.scrape()).values.get(RELEASES)
    expired = await run.wait_for_release(since, RELEASE_TIMEOUT)
    memory["after_tokens_expired"] = expired.rss_kib
    phases["tokens_expiry_s"] = time.monotonic() - t5
    phases["total_s"] = time.monotonic() - t0
    return report(
        run,
        final=final,
        start=start,
        end=end,
        memory=memory,
        all_left=all_left and second_left,
        ledger_empty=ledger_empty,
        releases=expired.values.get(RELEASES),
        warmup_opened=warmup_opened,
        phases=phases,
    )


def _delta(start: Scrape, end: Scrape, name: str) -> float | None:
    """How much a server counter moved during the run."""
    if name not in end.values:
        return None
    return end.values[name] - start.values.get(name, 0.0)


def report(
    run: Run,
    *,
    final: int,
    start: Scrape,
    end: Scrape,
    memory: dict[str, int | None],
    all_left: bool,
    ledger_empty: bool,
    releases: float | None,
    warmup_opened: int,
    phases: dict[str, float],
) -> dict[str, Any]:
    """The figures of a run and the verdict of each check."""
    healthy = run.live + run.departed
    stayed = run.live
    broken = [c for c in healthy if not c.in_order]
    short = [c for c in stayed if c.last < final]
    stalled_dropped = sum(1 for s in run.stalled if s.dropped_at is not None)
    drop_times = sorted(
        s.dropped_at - s.opened_at for s in run.stalled if s.dropped_at is not None
    )
    over_bound = [
        (s.values.get("nanostream_ledger_entries"), s.ledger_bound)
        for s in run.scrapes
        if s.values.get("nanostream_ledger_entries", 0) > s.ledger_bound
    ]
    reused = sum(run.reuse.values()) - run.reuse["skipped"]
    slow = _delta(start, end, "nanostream_slow_consumers_dropped_total")
    replayed = _delta(start, end, "nanostream_handshakes_rejected_total")
    checks = {
        "healthy clients in order, exactly once": not broken,
        "clients still there got the last line": not short,
        "no healthy client dropped by the server": run.soak.unexpected_drops == 0,
        "every fresh handshake accepted": not run.failures,
        "every reused token refused (401)": run.reuse["401"] == reused,
        "server saw every reuse as 'token already used'": replayed == reused,
        "every stalled client dropped": stalled_dropped == len(run.stalled),
        "server counted each as a slow consumer": slow == len(run.stalled),
        "ledger bounded by unexpired tokens at every scrape": not over_bound,
        "all clients gone at the end": all_left,
        "ledger empty once every token expired": ledger_empty,
    }
    checks.update(memory_checks(run.options, memory))
    ledger = [s.values.get("nanostream_ledger_entries", 0) for s in run.scrapes]
    latencies = sorted(run.soak.latencies)
    return {
        "options": {k: v for k, v in vars(run.options).items() if k not in ("secret",)},
        "backend": run.backend.name,
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "lines_sent": final + 1,
        "peak_clients": max(
            (s.values.get("nanostream_clients", 0) for s in run.scrapes), default=0
        ),
        "handshakes": run.opened - warmup_opened,
        "healthy_clients": len(healthy),
        "healthy_left_during_run": len(run.departed),
        "healthy_at_end": len(stayed),
        "messages_received": sum(c.count for c in healthy),
        "out_of_order_clients": len(broken),
        "short_clients": len(short),
        "unexpected_drops": run.soak.unexpected_drops,
        "open_failures": dict(run.failures),
        "reuse": dict(run.reuse),
        "stalled": len(run.stalled),
        "stalled_dropped": stalled_dropped,
        "stall_to_drop_s": _spread(drop_times),
        "server": {
            "slow_consumers_dropped": slow,
            "token_already_used": replayed,
            "handshakes_accepted": _delta(
                start, end, "nanostream_handshakes_accepted_total"
            ),
            "lines_received": _delta(start, end, "nanostream_lines_received_total"),
        },
        "ledger_entries": {
            "max": max(ledger, default=None),
            "end_of_feed": end.values.get("nanostream_ledger_entries"),
            "end_of_feed_bound": end.ledger_bound,
            "after_second_wave": ledger[-1] if ledger else None,
            "over_bound": over_bound[:10],
        },
        "rss_kib": memory,
        "rss_returned": _returned(memory),
        "memory_releases": releases,
        "latency_ms_sampled": _spread([n / 1e6 for n in latencies]),
        "checks": checks,
        "ok": all(checks.values()),
    }


def memory_checks(options: Options, memory: dict[str, int | None]) -> dict[str, bool]:
    """The resident-size checks, where the server's RSS could be read."""
    baseline, peak = memory.get("baseline"), memory.get("peak")
    if baseline is None or not peak:
        return {}
    growth = max(peak - baseline, 0)
    floor = options.rss_floor_mib * 1024
    checks = {}
    for key, share, name in (
        ("after", options.rss_left_share, "once the clients left"),
        ("after_tokens_expired", options.rss_expired_share, "once tokens expired"),
    ):
        value = memory.get(key)
        if value is not None:
            label = (
                f"RSS within {share:.0%} of its growth "
                f"(at least {options.rss_floor_mib:g} MiB) {name}"
            )
            checks[label] = value - baseline <= max(share * growth, floor)
    wave = memory.get("second_wave")
    if wave is not None:
        checks["a second wave took no more memory than the first"] = (
            wave <= peak + options.rss_slack_mib * 1024
        )
    return checks


def _returned(memory: dict[str, int | None]) -> dict[str, float]:
    """How much of the growth above the baseline stayed, as a share of it."""
    baseline, peak = memory.get("baseline"), memory.get("peak")
    if baseline is None or not peak or peak <= baseline:
        return {}
    return {
        key: round((value - baseline) / (peak - baseline), 3)
        for key, value in memory.items()
        if value is not None and key not in ("baseline", "peak")
    }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "count": len(ordered),
        "p50": at(0.5),
        "p99": at(0.99),
        "max": round(ordered[-1], 3),
    }


# -- the command line ----------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    add = parser.add_argument
    add("--clients", type=int, default=5000, help="concurrent clients (5000)")
    add("--duration", type=float, default=300.0, help="seconds of churn (300)")
    add("--rate", type=float, default=10.0, help="lines per second (10)")
    add(
        "--churn", type=float, default=10.0, help="clients leaving and arriving /s (10)"
    )
    add(
        "--reuse-every", type=int, default=10, help="a reused token every N churns (10)"
    )
    add("--stall-share", type=float, default=0.01, help="share of clients that stall")
    add("--token-ttl", type=int, default=60, help="token lifetime, seconds (60)")
    add("--line-bytes", type=int, default=0, help="pad lines to about this size")
    add("--concurrency", type=int, default=100, help="handshakes in flight (100)")
    add("--scrape-every", type=float, default=2.0, help="seconds between scrapes (2)")
    add(
        "--rss-slack-mib",
        type=float,
        default=4.0,
        help="how much more RSS the second wave may take (4)",
    )
    add(
        "--rss-left-share",
        type=float,
        default=0.35,
        help="share of the RSS growth that may stay once the clients left (0.35)",
    )
    add(
        "--rss-expired-share",
        type=float,
        default=0.15,
        help="share of the RSS growth that may stay once tokens expired (0.15)",
    )
    add(
        "--rss-floor-mib",
        type=float,
        default=0.5,
        help="RSS above the baseline always allowed, whatever the shares (0.5)",
    )
    add("--drain-timeout", type=float, default=180.0, help="bound on each end wait")
    add("--client", default="auto", choices=["auto", "picows", "websockets"])
    add("--json", type=Path, help="write the report here instead of stdout")
    group = parser.add_argument_group("driving a service that is already running")
    group.add_argument("--url", help="ws://HOST:PORT/ of the service")
    group.add_argument("--source-address", help="HOST:PORT of its endpoint source")
    group.add_argument("--metrics-address", help="HOST:PORT of its --metrics")
    group.add_argument("--secret-file", help="the service's secret")
    group.add_argument("--server-pid", type=int, help="its pid, to read its RSS")
    group = parser.add_argument_group("starting the service (when --url is absent)")
    group.add_argument("--twistd", help="the twistd that has the nanostream plugin")
    group.add_argument("--max-buffer-bytes", type=int, default=128 * 1024)
    group.add_argument("--ping-interval", type=float, default=30.0)
    group.add_argument(
        "--pymalloc",
        action="store_true",
        help="run the server with CPython's allocator, not PYTHONMALLOC=malloc",
    )
    group.add_argument(
        "--log",
        type=Path,
        default=Path(__file__).parent / "results" / "soak-server.log",
    )
    return parser.parse_args(argv)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _options(args: argparse.Namespace, secret: bytes, pid: int | None) -> Options:
    base = len(feed.make_line(0, time.monotonic_ns()))
    return Options(
        url=args.url,
        source=_address(args.source_address),
        metrics=_address(args.metrics_address),
        secret=secret,
        server_pid=pid,
        clients=args.clients,
        duration=args.duration,
        rate=args.rate,
        churn=args.churn,
        reuse_every=args.reuse_every,
        stall_share=args.stall_share,
        token_ttl=args.token_ttl,
        pad=max(0, args.line_bytes - base - len(',"pad":""')),
        concurrency=args.concurrency,
        scrape_every=args.scrape_every,
        rss_slack_mib=args.rss_slack_mib,
        rss_left_share=args.rss_left_share,
        rss_expired_share=args.rss_expired_share,
        rss_floor_mib=args.rss_floor_mib,
        drain_timeout=args.drain_timeout,
        backend=args.client,
    )


def raise_fd_limit() -> None:
    """Thousands of sockets need more descriptors than the usual soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_loop(options: Options) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(soak(options))
    return uvloop.run(soak(options))


_LISTENING = re.compile(rb"(websocket|source|metrics) listening on tcp:(\S+)")


def _await_listeners(server: Any, log: Path, timeout: float = 60.0) -> dict[str, str]:
    """The address of each listener, once all three are announced in the log."""
    deadline = time.monotonic() + timeout
    while True:
        server.wait_ready(timeout=timeout)
        found = {
            kind.decode(): address.decode()
            for kind, address in _LISTENING.findall(log.read_bytes())
        }
        if len(found) == 3:
            return found
        if time.monotonic() > deadline or not server.alive():
            raise SystemExit(f"soak: the server did not start; see {log}")
        time.sleep(0.05)


def standalone(args: argparse.Namespace) -> dict[str, Any]:
    """Start nanostream pinned to one core, this process on the other, and soak it."""
    import tempfile

    import processes
    import servers

    twistd = servers.find_twistd(args.twistd)
    if twistd is None:
        raise SystemExit("soak: no twistd with the nanostream plugin found")
    with tempfile.TemporaryDirectory(prefix="nanostream-soak-") as directory:
        secret_file = Path(directory) / "secret"
        secret_file.write_text(os.urandom(32).hex() + "\n")
        loopback = "tcp:0:interface=127.0.0.1"
        argv = [
            twistd,
            "-n",
            "--pidfile=",
            "nanostream",
            "--secret-file",
            str(secret_file),
            "--listen",
            loopback,
            "--source",
            loopback,
            "--metrics",
            loopback,
            "--max-buffer-bytes",
            str(args.max_buffer_bytes),
            # What clients cost and give back, without the history's lines.
            "--history-lines",
            "0",
            "--ping-interval",
            str(args.ping_interval),
            "--max-token-ttl",
            str(max(args.token_ttl + 60, 3600)),
        ]
        mine, theirs = processes.pinning()
        if mine is not None:
            os.sched_setaffinity(0, {mine})
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.pymalloc:
            env.pop("PYTHONMALLOC", None)
        else:
            env["PYTHONMALLOC"] = "malloc"
        with processes.ServerProcess(argv, args.log, theirs, env) as server:
            found = _await_listeners(server, args.log)
            args.url = f"ws://{found['websocket']}/"
            args.source_address = found["source"]
            args.metrics_address = found["metrics"]
            result = run_loop(
                _options(args, tokens.read_secret(secret_file), server.pid)
            )
        result["server_allocator"] = "pymalloc" if args.pymalloc else "malloc"
        log = args.log.read_bytes()
        result["server_log"] = {
            "path": str(args.log),
            "slow_consumer_lines": log.count(b"dropping slow consumer"),
            "tracebacks": log.count(b"Traceback"),
        }
        result["checks"]["no traceback in the server log"] = (
            result["server_log"]["tracebacks"] == 0
        )
        result["ok"] = all(result["checks"].values())
        return result


def main() -> None:
    args = parse_args()
    raise_fd_limit()
    if args.url is None:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        result = standalone(args)
    else:
        missing = [
            name
            for name in ("source_address", "metrics_address", "secret_file")
            if getattr(args, name) is None
        ]
        if missing:
            raise SystemExit(f"soak: --url needs --{missing[0].replace('_', '-')}")
        secret = tokens.read_secret(args.secret_file)
        result = run_loop(_options(args, secret, args.server_pid))
    result["source"] = provenance.current()
    text = json.dumps(result, indent=1)
    if args.json is not None:
        args.json.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    for name, passed in result["checks"].items():
        sys.stderr.write(f"{'ok  ' if passed else 'FAIL'} {name}\n")
    raise SystemExit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
