"""The resume storm's two load generators, each a process pinned to the
load generator's core.

* ``live``: N ``nanostream.v1`` clients that stay connected throughout and
  record every line's latency; told the time windows of the run at the end
  (``report {"quiet": [[t0, t1]], "resume": [[t0, t1], ...], ...}`` on
  stdin), it answers with p50, p99 and max over each kind's windows.
* ``storm``: a recorder client from the start (see v1client.py); on
  ``storm resume`` it opens K clients at once, each with a fresh token and
  ``since`` the id ``--back`` lines before the newest recorded, and reports
  when every one has received ``!live`` and the line after it; on ``storm
  plain`` the same without ``since``, until each has its first line.

The two are separate processes so that the storm's bulk of replayed bytes,
read by the storm process, does not queue behind it the live clients'
receipts, whose timestamps are the latency measurement; the storm process
also lowers its own priority (``--nice``) so that the kernel runs the live
process first whenever both are ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter

import tokens
from clients import Rejected, bounded
from loadgen import emit, raise_fd_limit
from procfs import self_cpu_seconds
from v1client import (
    SUBPROTOCOL,
    Client,
    Follower,
    Latencies,
    LiveClient,
    Recorder,
    connect,
)


class Commands:
    """Lines from the runner on stdin; end of input reads as ``stop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._loop = loop
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line.strip())
        self._loop.call_soon_threadsafe(self._queue.put_nowait, "stop")

    async def next(self) -> str:
        return await self._queue.get()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, Rejected):
        return f"http-{exc.status}" + (f" ({exc.why})" if exc.why else "")
    return type(exc).__name__


class Urls:
    def __init__(self, args: argparse.Namespace) -> None:
        self._secret = tokens.read_secret(args.secret_file)
        self._base = args.url.rstrip("/") + "/?t="

    def fresh(self, query: str = "") -> str:
        """A URL with a token of its own: every connection needs one."""
        return self._base + tokens.mint(self._secret) + query


async def run_live(args: argparse.Namespace, commands: Commands) -> None:
    urls = Urls(args)
    book = Latencies()
    clients: list[Client] = []
    failed: Counter[str] = Counter()

    async def one(i: int) -> None:
        try:
            clients.append(
                await connect(
                    lambda r, u: LiveClient(r, u, book), urls.fresh(), SUBPROTOCOL
                )
            )
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            failed[_describe(exc)] += 1

    await bounded(args.clients, 100, one)
    emit("ready", connected=len(clients), failed=dict(failed))
    while (command := await commands.next()) != "stop":
        if command.startswith("report "):
            windows = json.loads(command[len("report ") :])
            emit(
                "result",
                windows={k: book.window(v) for k, v in windows.items()},
                lines=len(book.at),
                id_faults=book.id_faults,
                notices=book.notices,
                closed=book.closed,
            )
    for client in clients:
        client.close()
    await asyncio.sleep(0.2)


def _quantiles(values: list[int], scale: float = 1.0) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] / scale, 3)

    return {
        "min": round(ordered[0] / scale, 3),
        "p50": q(0.5),
        "p99": q(0.99),
        "max": round(ordered[-1] / scale, 3),
    }


async def storm(
    args: argparse.Namespace, urls: Urls, recorder: Recorder, kind: str
) -> list[Follower]:
    """Open ``--storm`` followers at once; report once every one is done."""
    deadline = time.monotonic() + 60
    while recorder.newest <= args.back and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    newest = recorder.newest
    since = newest - args.back if kind == "resume" else None
    if since is not None and since < 1:
        raise SystemExit(f"only {recorder.newest} lines recorded, need {args.back}")
    query = f"&since={recorder.ms.decode()}-{since}" if since and recorder.ms else ""
    url_list = [urls.fresh(query) for _ in range(args.storm)]
    loop = asyncio.get_running_loop()
    all_done: asyncio.Future[None] = loop.create_future()
    finished: list[Follower] = []

    def done(follower: Follower) -> None:
        finished.append(follower)
        if len(finished) + len(failed_list) >= args.storm and not all_done.done():
            all_done.set_result(None)

    followers: list[Follower] = []
    failed_list: list[str] = []

    async def one(url: str) -> None:
        try:
            client = await connect(
                lambda r, u: Follower(r, u, recorder, since, done), url, SUBPROTOCOL
            )
            followers.append(client)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            failed_list.append(_describe(exc))
            if len(finished) + len(failed_list) >= args.storm and not all_done.done():
                all_done.set_result(None)

    cpu0, t0 = self_cpu_seconds(), time.monotonic_ns()
    await asyncio.gather(*(one(url) for url in url_list))
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(all_done), args.deadline)
    except asyncio.TimeoutError:
        timed_out = True
    t_done, cpu1 = time.monotonic_ns(), self_cpu_seconds()
    good = [f for f in finished if f.fault is None]
    faults = [f.fault for f in finished if f.fault is not None]
    unfinished = len(followers) - len(finished)
    t_live = [f.t_live for f in good]
    replayed = [f.replayed for f in good if f.replayed is not None]
    emit(
        "storm",
        kind=kind,
        since=since,
        back=args.back,
        newest_at_start=newest,
        clients=args.storm,
        connected=len(followers),
        failed=dict(Counter(failed_list)),
        live=len(good),
        faults=len(faults) + unfinished,
        fault_examples=faults[:5]
        + ([f"{unfinished} never finished"] if unfinished else []),
        short_replays=sum(1 for r in replayed if r < args.back),
        replayed=_quantiles(replayed),
        replayed_total=sum(replayed),
        t_start_ns=t0,
        t_all_open_ns=max((f.t_open for f in followers), default=t0),
        t_all_live_ns=max(t_live, default=t0),
        t_done_ns=t_done,
        to_live_ms=_quantiles([t - t0 for t in t_live], 1e6),
        timed_out=timed_out,
        cpu_s=round(cpu1 - cpu0, 6),
        recorder_faults=recorder.faults[:5],
    )
    return followers


async def run_storm(args: argparse.Namespace, commands: Commands) -> None:
    urls = Urls(args)
    recorder = await connect(Recorder, urls.fresh(), SUBPROTOCOL)
    assert isinstance(recorder, Recorder)
    emit("ready", connected=1)
    while (command := await commands.next()) != "stop":
        if command.startswith("storm "):
            followers = await storm(args, urls, recorder, command.split()[1])
            for follower in followers:
                follower.close()
            await asyncio.sleep(0.5)
            emit("closed", count=len(followers))
    recorder.close()
    await asyncio.sleep(0.2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["live", "storm"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--core", type=int)
    parser.add_argument("--clients", type=int, default=100, help="live clients")
    parser.add_argument("--storm", type=int, default=1000, help="storm clients")
    parser.add_argument("--back", type=int, default=1000, help="lines resumed")
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument("--client", help="ignored: these clients are our own")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    if args.nice:
        os.nice(args.nice)
    raise_fd_limit()

    async def amain() -> None:
        commands = Commands(asyncio.get_running_loop())
        await (run_live if args.mode == "live" else run_storm)(args, commands)

    try:
        import uvloop
    except ImportError:
        asyncio.run(amain())
    else:
        uvloop.run(amain())


if __name__ == "__main__":
    main()
