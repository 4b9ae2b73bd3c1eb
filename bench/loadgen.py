"""The load generator: a process of its own, pinned to its own core.

It is started by run.py, talks to it with JSON lines on stdout (``ready``,
then ``result``) and takes commands as lines on stdin (``go``; end of input
means stop). Keeping it in a separate process on a separate core from the
server under test is what makes the server's CPU time meaningful, and it
reports its own CPU time so that the runner can tell which side was the
bottleneck.

Modes:

* ``stream``: open N clients, then count what they receive (order, loss,
  optionally latency) until each has ``--expect`` lines; with ``--v1`` they
  speak ``nanostream.v1`` and also check that the ids count up by one; with
  ``--rcvbuf`` and ``--read-tick-ms`` they read slowly (see rawclient.py).
* ``handshake``: connect/101/close ``--count`` times with ``--concurrency``
  in flight, then check that a reused or bad token gets 401.
* ``hold``: open ``--count`` idle connections and keep them until told to stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import threading
import time
from collections import Counter
from typing import Any

import tokens
from clients import (
    Backend,
    Connection,
    Rejected,
    SourceAddr,
    Stream,
    V1Tally,
    bounded,
    new_tally,
    pick_backend,
)
from procfs import self_cpu_seconds
from rawclient import Expected, IdLines, ReadPacer, open_exact

#: The subprotocol whose clients get ``<id> <line>`` and notices.
SUBPROTOCOL = "nanostream.v1"

# Ephemeral ports per source address that we allow ourselves to use.
_PORTS_PER_ADDRESS = 20000


def emit(event: str, **fields: Any) -> None:
    """Tell the runner something, as one JSON line on stdout."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def source_for(i: int, total: int) -> SourceAddr:
    """Spread connections over 127.0.0.x when one address lacks the ports."""
    addresses = -(-total // _PORTS_PER_ADDRESS)
    if addresses <= 1:
        return None
    return (f"127.0.0.{1 + i % addresses}", 0)


class Commands:
    """Lines from the runner on stdin, read by a daemon thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._loop = loop
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line.strip())
        self._loop.call_soon_threadsafe(self._queue.put_nowait, "stop")

    async def wait_for(self, *words: str, timeout: float) -> str:
        """Return the first command among ``words`` (or ``stop``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            word = await asyncio.wait_for(self._queue.get(), max(left, 0.001))
            if word in words or word == "stop":
                return word


class Session:
    """Tokens, URLs and the backend of one load generator run."""

    def __init__(self, args: argparse.Namespace, backend: Backend) -> None:
        self.secret = tokens.read_secret(args.secret_file)
        self.base = args.url.rstrip("/") + "/?t="
        self.backend = backend

    def url(self) -> str:
        """A URL with a fresh token: every connection gets its own."""
        return self.base + tokens.mint(self.secret)


async def run_stream(
    args: argparse.Namespace, session: Session, commands: Commands
) -> None:
    expected: Expected | IdLines | None = None
    if args.v1:
        # Ids are learnt from the first message: only the exact client can.
        if not args.expect_file:
            raise SystemExit("--v1 needs --expect-file")
        expected = IdLines.from_file(args.expect_file)
        args.expect = len(expected.lines)
    elif args.expect_file:
        expected = Expected.from_file(args.expect_file)
        args.expect = len(expected.ends)
    slow = args.rcvbuf is not None or args.read_tick_ms is not None
    exact = expected is not None and (
        args.v1 or slow or args.client in ("auto", "exact")
    )
    if slow and not exact:
        raise SystemExit("slow clients need --expect-file")
    pacer = ReadPacer(args.read_tick_ms / 1000) if args.read_tick_ms else None
    stream = Stream(args.clients, args.expect, args.latency)
    conns: list[Connection] = []
    failures: Counter[str] = Counter()

    async def connect(i: int) -> None:
        tally = V1Tally(stream) if args.v1 else new_tally(stream)
        url, source = session.url(), source_for(i, args.clients)
        try:
            if exact:
                assert expected is not None
                protocol = SUBPROTOCOL if args.v1 else None
                conns.append(
                    await open_exact(
                        url, expected, tally, source, protocol, args.rcvbuf, pacer
                    )
                )
            else:
                conns.append(await session.backend.open(url, tally, source))
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            failures[_describe(exc)] += 1
            tally.on_close()

    t0 = time.monotonic()
    await asyncio.wait_for(
        bounded(args.clients, args.concurrency, connect), args.deadline
    )
    cpu_ready = self_cpu_seconds()
    emit(
        "ready",
        connected=len(conns),
        failed=dict(failures),
        connect_s=round(time.monotonic() - t0, 3),
        client="exact-bytes" if exact else session.backend.name,
    )
    timed_out = not await _await_progress(stream, args.idle_timeout, args.deadline)
    cpu_done = self_cpu_seconds()
    if pacer is not None:
        pacer.stop()
    tallies = stream.tallies
    result: dict[str, Any] = {
        "clients": args.clients,
        "connected": len(conns),
        "expect": args.expect,
        "delivered": sum(t.received for t in tallies),
        "complete_clients": sum(t.next >= args.expect and t.lost == 0 for t in tallies),
        "lost": sum(t.lost + max(0, args.expect - t.next) for t in tallies),
        "out_of_order": sum(t.backwards for t in tallies),
        "extra": sum(t.extra for t in tallies),
        "id_faults": sum(getattr(t, "id_faults", 0) for t in tallies),
        "notices": sum(getattr(t, "notices", 0) for t in tallies),
        "timed_out": timed_out,
        "t_last_ns": stream.t_last_ns,
        "cpu_s": round(cpu_done - cpu_ready, 6),
        "reads": stream.reads,
        "paused_reads": pacer.holds if pacer is not None else None,
        "failed": dict(failures),
    }
    if stream.latencies is not None:
        result["latency_ms"] = _percentiles(stream.latencies)
    emit("result", **result)
    await commands.wait_for("stop", timeout=args.deadline)
    for conn in conns:
        conn.close()
    await asyncio.sleep(0.2)


async def _await_progress(stream: Stream, idle_timeout: float, deadline: float) -> bool:
    """Wait until every client is done; False if progress stalls or time is up."""
    end = time.monotonic() + deadline
    last_total, last_change = -1, time.monotonic()
    while not stream.done.done():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(stream.done), 0.5)
        now = time.monotonic()
        total = sum(t.received for t in stream.tallies)
        if total != last_total:
            last_total, last_change = total, now
        elif now - last_change > idle_timeout or now > end:
            return False
    return True


def _percentiles(samples_ns: Any) -> dict[str, float | int]:
    ordered = sorted(samples_ns)
    if not ordered:
        return {"count": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)

    return {
        "count": len(ordered),
        "p50": at(0.50),
        "p99": at(0.99),
        "max": round(ordered[-1] / 1e6, 3),
    }


def _describe(exc: BaseException) -> str:
    if isinstance(exc, Rejected):
        return f"http-{exc.status}" + (f" ({exc.why})" if exc.why else "")
    return type(exc).__name__


async def run_handshake(
    args: argparse.Namespace, session: Session, commands: Commands
) -> None:
    statuses: Counter[str] = Counter()

    async def one(i: int) -> None:
        try:
            status = await session.backend.handshake(
                session.url(), source_for(i, args.count)
            )
            statuses[str(status)] += 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            statuses[_describe(exc)] += 1

    emit("ready", client=session.backend.name)
    if await commands.wait_for("go", timeout=args.deadline) != "go":
        return
    cpu0, t0 = self_cpu_seconds(), time.monotonic_ns()
    await asyncio.wait_for(bounded(args.count, args.concurrency, one), args.deadline)
    t1, cpu1 = time.monotonic_ns(), self_cpu_seconds()
    emit(
        "result",
        count=args.count,
        ok=statuses.pop("101", 0),
        other=dict(statuses),
        t_start_ns=t0,
        t_end_ns=t1,
        cpu_s=round(cpu1 - cpu0, 6),
        checks=await auth_checks(session),
    )
    await commands.wait_for("stop", timeout=args.deadline)


async def auth_checks(session: Session) -> dict[str, int]:
    """The HTTP status each kind of bad token gets (all must be 401)."""
    backend, secret = session.backend, session.secret
    token = tokens.mint(secret)
    first = await backend.handshake(session.base + token, None)
    checks = {
        "fresh_token": first,
        "reused_token": await backend.handshake(session.base + token, None),
        "bad_signature": await backend.handshake(
            session.base + tokens.mint(secret + b"x"), None
        ),
        "no_exp": await backend.handshake(
            session.base + tokens.mint_without_exp(secret), None
        ),
        "no_token": await backend.handshake(session.base[: -len("?t=")], None),
    }
    return checks


async def run_hold(
    args: argparse.Namespace, session: Session, commands: Commands
) -> None:
    conns: list[Connection] = []
    failures: Counter[str] = Counter()

    async def connect(i: int) -> None:
        try:
            conns.append(
                await session.backend.open(
                    session.url(), None, source_for(i, args.count)
                )
            )
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            failures[_describe(exc)] += 1

    # Warm the server up (imports, caches) so the baseline is a steady state.
    await bounded(args.warmup, args.concurrency, connect)
    for conn in conns:
        conn.close()
    conns.clear()
    await asyncio.sleep(0.5)
    emit("ready", client=session.backend.name, warmup_failed=dict(failures))
    failures.clear()
    if await commands.wait_for("go", timeout=args.deadline) != "go":
        return
    cpu0, t0 = self_cpu_seconds(), time.monotonic_ns()
    await asyncio.wait_for(
        bounded(args.count, args.concurrency, connect), args.deadline
    )
    t1, cpu1 = time.monotonic_ns(), self_cpu_seconds()
    emit(
        "result",
        count=args.count,
        connected=len(conns),
        failed=dict(failures),
        t_start_ns=t0,
        t_end_ns=t1,
        cpu_s=round(cpu1 - cpu0, 6),
    )
    await commands.wait_for("stop", timeout=args.deadline)
    for conn in conns:
        conn.close()
    await asyncio.sleep(0.5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; run.py builds it, people rarely need to."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["stream", "handshake", "hold"])
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/")
    parser.add_argument("--secret-file", required=True)
    parser.add_argument(
        "--client", default="auto", choices=["auto", "exact", "picows", "websockets"]
    )
    parser.add_argument(
        "--expect-file",
        help="stream: the lines the server is fed; clients then check exact bytes",
    )
    parser.add_argument("--core", type=int, help="pin this process to one CPU")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--expect", type=int, default=100)
    parser.add_argument("--latency", action="store_true")
    parser.add_argument(
        "--v1",
        action="store_true",
        help="stream: offer nanostream.v1 and check <id> <line> (exact client)",
    )
    parser.add_argument(
        "--rcvbuf", type=int, help="stream: SO_RCVBUF of each client (slow clients)"
    )
    parser.add_argument(
        "--read-tick-ms",
        type=float,
        help="stream: each client reads at most once per tick (slow clients)",
    )
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--idle-timeout", type=float, default=15.0)
    parser.add_argument("--deadline", type=float, default=600.0)
    return parser.parse_args(argv)


def raise_fd_limit() -> None:
    """Thousands of sockets need more descriptors than the usual soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def amain(args: argparse.Namespace) -> None:
    session = Session(
        args, pick_backend("auto" if args.client == "exact" else args.client)
    )
    commands = Commands(asyncio.get_running_loop())
    mode = {"stream": run_stream, "handshake": run_handshake, "hold": run_hold}[
        args.mode
    ]
    await mode(args, session, commands)


def main() -> None:
    args = parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(amain(args))
    else:
        uvloop.run(amain(args))


if __name__ == "__main__":
    main()
