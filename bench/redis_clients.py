"""Which Redis client should read a stream into the reactor?

    .venv/bin/python bench/redis_clients.py                  # about 2 minutes
    .venv/bin/python bench/redis_clients.py --quick          # seconds, a smoke run
    .venv/bin/python bench/redis_clients.py --url redis://127.0.0.1:6379/0 \\
        --clients txredisapi,redis-py,hiredis --rate 200 --seconds 20

Three ways to read a Redis stream with ``XREAD BLOCK`` and hand each reply to
the Twisted reactor, each on a connection of its own:

``txredisapi``
    ``execute_command("XREAD", "BLOCK", ...)`` on a txredisapi connection
    (the library nanostream already uses for pub/sub and the ledger).
``redis-py``
    ``Redis.xread`` in a dedicated reader thread, each reply handed over with
    ``reactor.callFromThread``.
``hiredis``
    a small Twisted protocol that writes ``XREAD`` itself and parses with
    ``hiredis.Reader``.

Two runs per client, each reader in a process of its own (started by this
script, which is the producer):

latency
    the producer ``XADD``\\ s ``--rate`` lines/s for ``--seconds`` s, each
    line carrying the producer's ``CLOCK_MONOTONIC`` (shared by all processes
    on Linux); the reader notes the clock when the line is in the reactor
    thread.  Reported: p50, p99 and max of the difference.
throughput
    the producer pipelines ``XADD``\\ s (``--batch`` per round trip) as fast
    as it can for ``--burst`` s while the reader reads with ``COUNT 1000``;
    reported: lines/s the reader delivered into the reactor thread (from its
    first line to the last) beside the rate the producer managed.  On a
    small machine the producer, Redis and the reader share the cores, and a
    reader that keeps up reads exactly as fast as the producer writes.
drain
    the same burst is written first, then the reader starts and reads the
    backlog: the lines/s one reader reaches when Redis always has more.

Each run uses a fresh key and deletes it afterwards.  The figures and the
commit measured are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

CLIENTS = ("txredisapi", "redis-py", "hiredis")
END = b"end"
COUNT = 1000
PADDING = b"x" * 80


# -- the producer (plain sockets, so no client is favoured) -------------------


def command(*args: bytes | str | int) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(
        b"$%d\r\n%s\r\n" % (len(p), p) for p in parts
    )


class Producer:
    """A blocking connection that writes commands and counts the replies."""

    def __init__(self, host: str, port: int, db: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = 0
        self.buffer = b""
        self.call(b"SELECT", db)

    def send(self, data: bytes, replies: int) -> None:
        self.sock.sendall(data)
        self.pending += replies

    def drain(self, until: int = 0) -> None:
        """Read replies until at most ``until`` are outstanding.

        The replies here are simple: ``+OK``, ``:N``, ``-ERR`` or one bulk
        string (an entry id), so each reply starts a line with ``+:-$``.
        """
        while self.pending > until:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            self.buffer += chunk
            lines = self.buffer.split(b"\r\n")
            self.buffer = lines.pop()
            for line in lines:
                if line.startswith(b"-"):
                    raise RuntimeError(line.decode())
                if line[:1] in (b"+", b":", b"-", b"$"):
                    self.pending -= 1

    def call(self, *args: bytes | str | int) -> None:
        self.send(command(*args), 1)
        self.drain()


def xadd(key: bytes, line: bytes) -> bytes:
    return command(b"XADD", key, b"*", b"line", line)


def stamped() -> bytes:
    return b"%d %s" % (time.monotonic_ns(), PADDING)


def produce_paced(producer: Producer, key: bytes, rate: float, seconds: float) -> int:
    total = int(rate * seconds)
    start = time.monotonic()
    for n in range(total):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        producer.send(xadd(key, stamped()), 1)
        if producer.pending > 100:
            producer.drain()
    producer.drain()
    return total


def produce_burst(
    producer: Producer, key: bytes, seconds: float, batch: int
) -> tuple[int, float]:
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        producer.send(b"".join(xadd(key, stamped()) for _ in range(batch)), batch)
        sent += batch
        # Keep one batch in flight: pipelined, yet bounded in Redis's buffers.
        producer.drain(until=batch)
    producer.drain()
    return sent, time.monotonic() - start


# -- the readers (one per child process) --------------------------------------


class Results:
    """Collects what reaches the reactor thread; stops the reactor at the end."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.latencies: list[int] = []
        self.count = 0
        self.first: float | None = None
        self.last = 0.0
        self.done = False

    def deliver(self, lines: list[bytes]) -> None:
        now = time.monotonic_ns()
        for line in lines:
            if line == END:
                self.done = True
                self.reactor.stop()
                return
            if self.first is None:
                self.first = time.monotonic()
            self.count += 1
            self.latencies.append(now - int(line.split(b" ", 1)[0]))
        self.last = time.monotonic()


def lines_of(reply: Any) -> tuple[list[bytes], bytes | None]:
    """Lines and the last id from a RESP2 XREAD reply (flat field lists)."""
    if not reply:
        return [], None
    [[_key, entries]] = reply
    lines = []
    for _id, fields in entries:
        lines.append(fields[fields.index(b"line") + 1])
    return lines, entries[-1][0]


def read_txredisapi(
    reactor: Any, url: str, key: bytes, start: bytes, results: Results
) -> None:
    from nanostream.redis.client import ClientProtocol, RedisClientFactory, connect
    from nanostream.redis.url import parse_redis_url

    target = parse_redis_url(url, channel=False)
    factory = RedisClientFactory(ClientProtocol, target, reactor)

    def loop(protocol: Any, last: bytes) -> None:
        d = protocol.execute_command(
            "XREAD", "BLOCK", 0, "COUNT", COUNT, "STREAMS", key, last
        )

        def got(reply: Any) -> None:
            lines, newest = lines_of(reply)
            results.deliver(lines)
            if not results.done:
                loop(protocol, newest or last)

        # The connection is lost when the reader exits: not worth a traceback.
        d.addCallbacks(got, lambda _: None)

    connect(factory, reactor).addCallback(loop, start)


def read_redis_py(
    reactor: Any, url: str, key: bytes, start: bytes, results: Results
) -> None:
    import redis

    client = redis.Redis.from_url(url)

    def run() -> None:
        last = start
        while True:
            reply = client.xread({key: last}, count=COUNT, block=0)
            [[_key, entries]] = reply
            last = entries[-1][0]
            lines = [fields[b"line"] for _id, fields in entries]
            reactor.callFromThread(results.deliver, lines)
            if END in lines:
                return

    threading.Thread(target=run, daemon=True).start()


def read_hiredis(
    reactor: Any, url: str, key: bytes, start: bytes, results: Results
) -> None:
    import hiredis
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    parts = urlsplit(url)
    db = int((parts.path or "/0")[1:] or 0)

    class StreamReader(Protocol):
        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)
            self.reader = hiredis.Reader()
            self.last = start
            self.transport.write(command(b"SELECT", db) + self.xread())
            self.selecting = True

        def xread(self) -> bytes:
            return command(
                b"XREAD", b"BLOCK", 0, b"COUNT", COUNT, b"STREAMS", key, self.last
            )

        def dataReceived(self, data: bytes) -> None:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                if self.selecting:
                    self.selecting = False
                    continue
                lines, newest = lines_of(reply)
                self.last = newest or self.last
                results.deliver(lines)
                if results.done:
                    return
                self.transport.write(self.xread())

    endpoint = TCP4ClientEndpoint(
        reactor, parts.hostname or "127.0.0.1", parts.port or 6379
    )
    connectProtocol(endpoint, StreamReader())


READERS = {
    "txredisapi": read_txredisapi,
    "redis-py": read_redis_py,
    "hiredis": read_hiredis,
}


def child(client: str, url: str, key: bytes, start: bytes) -> None:
    from twisted.internet import reactor

    results = Results(reactor)
    reactor.callWhenRunning(READERS[client], reactor, url, key, start, results)
    reactor.callWhenRunning(lambda: print("ready", flush=True))
    reactor.run()
    latencies = sorted(results.latencies) or [0]
    elapsed = results.last - (results.first or results.last)
    json.dump(
        {
            "count": results.count,
            "elapsed": elapsed,
            "p50_ms": statistics.median(latencies) / 1e6 if latencies else None,
            "p99_ms": latencies[int(len(latencies) * 0.99)] / 1e6
            if latencies
            else None,
            "max_ms": latencies[-1] / 1e6 if latencies else None,
        },
        sys.stdout,
    )


# -- the orchestration --------------------------------------------------------


def last_id(producer: Producer, key: bytes) -> bytes:
    """The id to read after: the stream's last, so nothing added later is missed."""
    producer.sock.sendall(command(b"XADD", key, b"*", b"line", b"0 start"))
    reply = b""
    while not reply.endswith(b"\r\n") or reply.count(b"\r\n") < 2:
        reply += producer.sock.recv(4096)
    return reply.split(b"\r\n")[1]


def run_one(args: argparse.Namespace, client: str, mode: str) -> dict[str, Any]:
    parts = urlsplit(args.url)
    db = int((parts.path or "/0")[1:] or 0)
    producer = Producer(parts.hostname or "127.0.0.1", parts.port or 6379, db)
    key = b"nanostream-bench:%s:%s:%d" % (client.encode(), mode.encode(), os.getpid())
    start = last_id(producer, key)
    if mode == "drain":
        sent, took = produce_burst(producer, key, args.burst, args.batch)
        produced = sent / took
    reader = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--child",
            client,
            "--url",
            args.url,
            "--key",
            key.decode(),
            "--start",
            start.decode(),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # let the reader's first XREAD reach Redis
    if mode == "latency":
        sent = produce_paced(producer, key, args.rate, args.seconds)
        produced = float(args.rate)
    elif mode == "throughput":
        sent, took = produce_burst(producer, key, args.burst, args.batch)
        produced = sent / took
    producer.call(b"XADD", key, b"*", b"line", END)
    out, _ = reader.communicate(timeout=600)
    producer.call(b"DEL", key)
    result = json.loads(out)
    assert result["count"] == sent, (client, mode, result["count"], sent)
    result["produced_per_s"] = produced
    result["read_per_s"] = (
        result["count"] / result["elapsed"] if result["elapsed"] else None
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--burst", type=float, default=10)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--start", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.key.encode(), args.start.encode())
        return
    if args.quick:
        args.seconds, args.burst = 1.0, 1.0
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    ).stdout.strip()
    print(f"commit {commit}, {os.cpu_count()} cores, {args.url}, {args.reps} rep(s)")
    print()
    print(
        "| client | p50 ms | p99 ms | max ms | lines/s read while produced "
        "| lines/s produced | lines/s from a backlog |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for client in args.clients.split(","):
        for _ in range(args.reps):
            latency = run_one(args, client, "latency")
            burst = run_one(args, client, "throughput")
            drain = run_one(args, client, "drain")
            print(
                f"| {client} | {latency['p50_ms']:.2f} | {latency['p99_ms']:.2f} "
                f"| {latency['max_ms']:.2f} | {burst['read_per_s']:,.0f} "
                f"| {burst['produced_per_s']:,.0f} | {drain['read_per_s']:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
