"""The fleet scenario: K nanostream nodes fed by one publisher through Redis.

    bench/.venv/bin/python bench/fleet.py           # about 5 minutes
    .venv/bin/python bench/fleet.py --quick         # seconds; correctness only

Three set-ups run in turn, with the same N clients and the same lines:

``single``
    one node, lines on its stdin (the default deployment; the figure the
    fleet is compared with);
``single-redis``
    one node with ``--source redis://...`` and ``--ledger``, lines through
    ``nanostream publish`` (what Redis costs on its own);
``fleet-K``
    K nodes (2 on this 2-core machine) on the same channel and ledger, the
    N clients split evenly over them by one load generator per node.

Each set-up measures fan-out (M lines at full speed: deliveries per second,
every client must get every line once, in order) and latency (lines at a
fixed rate: p50 and p99 from the publisher's stdin to the client, p99
being the worse of the load generators'). CPU seconds of every process
(nodes, Redis, publisher) are recorded per delivery and per line, which is
what docs/scaling.rst builds its model on. ``--micro`` adds redis-benchmark
figures for the ledger's SET NX PXAT and for PUBLISH to S subscribers.

Nothing is pinned to a core: with K nodes, K load generators, the publisher
and Redis on two cores, every process competes, in every set-up alike. So
on one machine the fleet shows Redis's overhead, not scale-out; the
per-node costs are what carry over to a real fleet. The Redis is a private
redis-server on a free port (or ``--redis URL``). Results go to
bench/results/fleet.json and fleet.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import feed
import procfs
import provenance
from processes import LoadgenProcess, ProcessFailed, ServerProcess
from scenarios import Writer, free_port
from servers import BENCH, NANOSTREAM_BUFFER_BYTES, find_twistd

RESULTS = BENCH / "results"


@dataclass
class Setup:
    name: str
    nodes: int
    redis: bool


@dataclass
class Sizes:
    clients: int
    lines: int
    rate: float
    duration: float


class Redis:
    """A private redis-server for the run, or one given by URL."""

    def __init__(self, workdir: Path, url: str | None) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        if url is not None:
            self.url = url
            self.port = int(url.rsplit(":", 1)[1].split("/")[0])
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed; give --redis URL")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while self.cli("PING") != "PONG":
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip()

    def connected_clients(self) -> int:
        for line in self.cli("INFO", "clients").splitlines():
            if line.startswith("connected_clients:"):
                return int(line.split(":")[1])
        return 0

    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid
        info = self.cli("INFO", "server")
        for line in info.splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":")[1])
        return None

    def cpu(self) -> float:
        pid = self.pid()
        return procfs.cpu_seconds(pid) if pid else 0.0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class Fleet:
    """The processes of one measurement: nodes, publisher, load generators."""

    def __init__(
        self,
        args: argparse.Namespace,
        setup: Setup,
        redis: Redis,
        workdir: Path,
        tag: str,
    ) -> None:
        self.args = args
        self.setup = setup
        self.redis = redis
        self.workdir = workdir
        self.tag = tag
        self.secret = workdir / "secret"
        self.channel = f"bench-{tag}"
        self.ports = [free_port() for _ in range(setup.nodes)]
        self.logdir = RESULTS / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)

    def node_argv(self, port: int) -> list[str]:
        argv = [
            self.args.twistd, "-n", "--pidfile=", "nanostream",
            "--secret-file", str(self.secret),
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--ping-interval", "0",
            "--max-buffer-bytes", str(NANOSTREAM_BUFFER_BYTES),
        ]  # fmt: skip
        if self.setup.redis:
            argv += [
                "--source", f"{self.redis.url}?channel={self.channel}",
                "--ledger", self.redis.url,
                "--ledger-prefix", f"bench:{self.tag}:",
            ]  # fmt: skip
        return argv

    @contextlib.contextmanager
    def nodes(self) -> Iterator[list[ServerProcess]]:
        with contextlib.ExitStack() as stack:
            nodes = []
            for index, port in enumerate(self.ports):
                log = self.logdir / f"fleet.{self.tag}.node{index}.log"
                node = stack.enter_context(
                    ServerProcess(
                        self.node_argv(port),
                        log,
                        None,
                        {**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                )
                marker = b"subscribed to Redis" if self.setup.redis else b"listening on"
                node.wait_ready(marker=marker)
                if self.setup.redis:
                    node.wait_ready(marker=b"ledger connected")
                nodes.append(node)
            yield nodes
            for node in nodes:
                node.stop(timeout=1 if self.setup.redis else 10)

    @contextlib.contextmanager
    def publisher(self) -> Iterator[ServerProcess]:
        python = str(Path(self.args.twistd).with_name("python"))
        argv = [
            python, "-m", "nanostream.cli.publish",
            f"{self.redis.url}?channel={self.channel}", "--window", "1000",
        ]  # fmt: skip
        log = self.logdir / f"fleet.{self.tag}.publish.log"
        before = self.redis.connected_clients()
        with ServerProcess(argv, log, None, dict(os.environ)) as publisher:
            # Lines written before it is connected would wait for its start-up
            # and show as latency that production never sees.
            deadline = time.monotonic() + 60
            while self.redis.connected_clients() <= before:
                if time.monotonic() > deadline or not publisher.alive():
                    raise ProcessFailed("the publisher did not connect to Redis")
                time.sleep(0.02)
            yield publisher

    def loadgens(self, per_node: list[int], *args: object) -> list[LoadgenProcess]:
        result = []
        for index, (port, clients) in enumerate(zip(self.ports, per_node, strict=True)):
            argv = [
                sys.executable, str(BENCH / "loadgen.py"), "stream",
                "--url", f"ws://127.0.0.1:{port}/",
                "--secret-file", str(self.secret),
                "--client", self.args.client,
                "--clients", str(clients),
                "--concurrency", "100",
                *(str(a) for a in args),
            ]  # fmt: skip
            log = self.logdir / f"fleet.{self.tag}.loadgen{index}.log"
            result.append(LoadgenProcess(argv, log))
        return result


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def measure(
    args: argparse.Namespace,
    setup: Setup,
    redis: Redis,
    workdir: Path,
    sizes: Sizes,
    kind: str,
    rep: int,
) -> dict[str, Any]:
    """One fan-out or latency measurement of one set-up."""
    fleet = Fleet(args, setup, redis, workdir, f"{setup.name}.{kind}.{rep}")
    paced = kind == "latency"
    lines = int(sizes.rate * sizes.duration) if paced else sizes.lines
    extra: list[object] = ["--expect", lines]
    if paced:
        extra.append("--latency")
    else:
        lines_file = workdir / f"lines-{lines}.txt"
        if not lines_file.exists():
            feed.write_lines_file(str(lines_file), lines)
    per_node = split(sizes.clients, setup.nodes)
    with contextlib.ExitStack() as stack:
        nodes = stack.enter_context(fleet.nodes())
        publisher = stack.enter_context(fleet.publisher()) if setup.redis else None
        loadgens = [stack.enter_context(lg) for lg in fleet.loadgens(per_node, *extra)]
        for lg, clients in zip(loadgens, per_node, strict=True):
            ready = lg.wait("ready", timeout=300)
            if ready["connected"] < clients:
                raise ProcessFailed(
                    f"only {ready['connected']} clients connected: {ready}"
                )
        sink = publisher.stdin if publisher is not None else nodes[0].stdin
        cpu_before = [n.cpu() for n in nodes]
        pub_before = publisher.cpu() if publisher is not None else 0.0
        redis_before = redis.cpu() if setup.redis else 0.0
        t0 = time.monotonic_ns()
        if paced:
            writer = Writer(sink, feed.write_paced, lines, sizes.rate)
        else:
            writer = Writer(sink, feed.write_chunks, lines_file.read_bytes())
        writer.start()
        try:
            results = [
                lg.wait("result", timeout=sizes.duration + 600) for lg in loadgens
            ]
        finally:
            writer.stop()
            writer.join(10)
        node_cpu = sum(n.cpu() - b for n, b in zip(nodes, cpu_before, strict=True))
        pub_cpu = publisher.cpu() - pub_before if publisher is not None else 0.0
        redis_cpu = redis.cpu() - redis_before if setup.redis else 0.0
        publish_status = publisher.stop(timeout=30) if publisher is not None else None
        for lg in loadgens:
            lg.finish()
    wall = max((max(r["t_last_ns"] for r in results) - t0) / 1e9, 1e-9)
    delivered = sum(r["delivered"] for r in results)
    metrics: dict[str, Any] = {
        "setup": setup.name,
        "nodes": setup.nodes,
        "kind": kind,
        "rep": rep,
        "clients": sizes.clients,
        "lines": lines,
        "delivered": delivered,
        "lost": sum(r["lost"] for r in results),
        "out_of_order": sum(r["out_of_order"] for r in results),
        "wall_s": round(wall, 3),
        "node_cpu_s": round(node_cpu, 3),
        "publisher_cpu_s": round(pub_cpu, 3),
        "redis_cpu_s": round(redis_cpu, 3),
        "publisher_exit": publish_status,
        "node_cpu_us_per_delivery": round(node_cpu / max(delivered, 1) * 1e6, 3),
        "redis_cpu_us_per_line": round(redis_cpu / max(lines, 1) * 1e6, 2),
        "publisher_cpu_us_per_line": round(pub_cpu / max(lines, 1) * 1e6, 2),
    }
    if writer.error:
        metrics["writer_error"] = writer.error
    if paced:
        p = [r.get("latency_ms", {}) for r in results]
        metrics["latency_p50_ms"] = max((x.get("p50") or 0) for x in p)
        metrics["latency_p99_ms"] = max((x.get("p99") or 0) for x in p)
        metrics["latency_max_ms"] = max((x.get("max") or 0) for x in p)
    else:
        metrics["deliveries_per_s"] = round(delivered / wall)
    return metrics


def measure_handshakes(
    args: argparse.Namespace,
    setup: Setup,
    redis: Redis,
    workdir: Path,
    count: int,
    rep: int,
) -> dict[str, Any]:
    """Handshakes per second on one node, memory ledger or Redis ledger."""
    fleet = Fleet(args, setup, redis, workdir, f"{setup.name}.handshake.{rep}")
    argv = [
        sys.executable, str(BENCH / "loadgen.py"), "handshake",
        "--url", f"ws://127.0.0.1:{fleet.ports[0]}/",
        "--secret-file", str(fleet.secret),
        "--client", args.client,
        "--count", str(count), "--concurrency", "50",
    ]  # fmt: skip
    log = fleet.logdir / f"fleet.{fleet.tag}.loadgen0.log"
    with fleet.nodes() as nodes, LoadgenProcess(argv, log) as lg:
        lg.wait("ready", timeout=60)
        node_before = nodes[0].cpu()
        redis_before = redis.cpu() if setup.redis else 0.0
        lg.send("go")
        res = lg.wait("result", timeout=600)
        node_cpu = nodes[0].cpu() - node_before
        redis_cpu = redis.cpu() - redis_before if setup.redis else 0.0
        lg.finish()
    wall = max((res["t_end_ns"] - res["t_start_ns"]) / 1e9, 1e-9)
    ok = res["ok"]
    checks = res["checks"]
    return {
        "setup": setup.name,
        "kind": "handshake",
        "rep": rep,
        "ledger": "redis" if setup.redis else "memory",
        "handshakes": ok,
        "failed": res["other"],
        "handshakes_per_s": round(ok / wall, 1),
        "node_cpu_us_per_handshake": round(node_cpu / max(ok, 1) * 1e6, 1),
        "redis_cpu_us_per_handshake": round(redis_cpu / max(ok, 1) * 1e6, 2),
        "auth_ok": checks.get("fresh_token") == 101
        and all(v == 401 for k, v in checks.items() if k != "fresh_token"),
    }


def redis_micro(redis: Redis, workdir: Path, quick: bool) -> dict[str, Any]:
    """redis-benchmark figures the scaling model needs, with Redis's CPU."""
    if shutil.which("redis-benchmark") is None:
        return {"skipped": "redis-benchmark is not installed"}
    count = 20_000 if quick else 200_000
    payload = feed.make_line(0, 0).rstrip(b"\n").decode()
    figures: dict[str, Any] = {}

    def bench(name: str, *command: str, clients: int = 50, pipeline: int = 1) -> None:
        before = redis.cpu()
        started = time.monotonic()
        subprocess.run(
            ["redis-benchmark", "-p", str(redis.port), "-n", str(count),
             "-c", str(clients), "-P", str(pipeline), "-r", "100000000", "-q",
             *command],
            capture_output=True, timeout=600, check=True,
        )  # fmt: skip
        wall = time.monotonic() - started
        cpu = redis.cpu() - before
        figures[name] = {
            "ops": count,
            "ops_per_s": round(count / wall),
            "redis_cpu_us_per_op": round(cpu / count * 1e6, 2),
        }

    bench(
        "ledger_set_nx_pxat",
        "SET", "bench:used:__rand_int__", "1", "NX", "PXAT", "4102444800000",
    )  # fmt: skip
    for subscribers in (0, 1, 8, 32) if not quick else (0, 2):
        listeners = [
            subprocess.Popen(
                ["redis-cli", "-p", str(redis.port), "SUBSCRIBE", "micro"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            for _ in range(subscribers)
        ]
        try:
            deadline = time.monotonic() + 10
            while int(redis.cli("PUBSUB", "NUMSUB", "micro").split()[-1]) < subscribers:
                if time.monotonic() > deadline:
                    raise ProcessFailed("redis-cli subscribers did not subscribe")
                time.sleep(0.05)
            bench(
                f"publish_720B_to_{subscribers}_subscribers",
                "PUBLISH", "micro", payload, clients=1, pipeline=64,
            )  # fmt: skip
        finally:
            for listener in listeners:
                listener.terminate()
                listener.wait(10)
    return figures


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def report(
    results: list[dict[str, Any]],
    handshakes: list[dict[str, Any]],
    micro: dict[str, Any],
) -> str:
    rows = [
        "| set-up | nodes | deliveries/s | node CPU µs/delivery | Redis CPU µs/line"
        " | p50 ms | p99 ms | lost | out of order |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_setup: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_setup.setdefault(r["setup"], []).append(r)
    base = None
    for name, runs in by_setup.items():
        fan = [r for r in runs if r["kind"] == "fanout"]
        lat = [r for r in runs if r["kind"] == "latency"]
        dps = median([r["deliveries_per_s"] for r in fan]) if fan else 0
        base = base or dps
        ratio = f"{dps:,.0f} ({dps / base:.2f}×)" if dps else "-"
        rows.append(
            f"| {name} | {runs[0]['nodes']} | {ratio} "
            f"| {median([r['node_cpu_us_per_delivery'] for r in fan]) if fan else '-'} "
            f"| {median([r['redis_cpu_us_per_line'] for r in fan]) if fan else '-'} "
            f"| {median([r['latency_p50_ms'] for r in lat]) if lat else '-'} "
            f"| {median([r['latency_p99_ms'] for r in lat]) if lat else '-'} "
            f"| {sum(r['lost'] for r in runs)} "
            f"| {sum(r['out_of_order'] for r in runs)} |"
        )
    lines = ["# Fleet scenario", "", *rows, ""]
    if handshakes:
        lines += ["## Handshakes on one node", ""]
        lines += [
            "| ledger | handshakes/s | node CPU µs/handshake"
            " | Redis CPU µs/handshake | 401 checks |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for ledger in ("memory", "redis"):
            runs = [h for h in handshakes if h["ledger"] == ledger]
            if runs:
                lines.append(
                    f"| {ledger} | {median([h['handshakes_per_s'] for h in runs]):,.0f}"
                    f" | {median([h['node_cpu_us_per_handshake'] for h in runs])}"
                    f" | {median([h['redis_cpu_us_per_handshake'] for h in runs])}"
                    f" | {'ok' if all(h['auth_ok'] for h in runs) else 'FAILED'} |"
                )
        lines.append("")
    if micro:
        lines += ["## Redis micro-measurements (redis-benchmark)", ""]
        lines += ["| operation | ops/s | Redis CPU µs/op |", "| --- | ---: | ---: |"]
        for name, fig in micro.items():
            if isinstance(fig, dict):
                lines.append(
                    f"| {name} | {fig['ops_per_s']:,} | {fig['redis_cpu_us_per_op']} |"
                )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds; correctness")
    parser.add_argument("--nodes", type=int, default=2, help="K (default 2)")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--redis", help="use this Redis instead of a private one")
    parser.add_argument("--micro", action="store_true", help="add redis-benchmark")
    parser.add_argument(
        "--handshakes", type=int, default=0, help="also time this many handshakes"
    )
    parser.add_argument(
        "--name", default="fleet", help="results file stem (default: fleet)"
    )
    parser.add_argument("--client", default="auto")
    parser.add_argument("--twistd", default=find_twistd())
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.twistd is None:
        raise SystemExit("twistd not found: install the project in .venv")
    if args.quick:
        sizes = Sizes(clients=10, lines=300, rate=50, duration=2)
        args.handshakes = args.handshakes or 40
    else:
        sizes = Sizes(args.clients, args.lines, args.rate, args.duration)
    setups = [
        Setup("single", 1, False),
        Setup("single-redis", 1, True),
        Setup(f"fleet-{args.nodes}", args.nodes, True),
    ]
    results: list[dict[str, Any]] = []
    handshakes: list[dict[str, Any]] = []
    micro: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nanostream-fleet-") as tmp:
        workdir = Path(tmp)
        (workdir / "secret").write_text(secrets.token_hex(32) + "\n")
        redis = Redis(workdir, args.redis)
        try:
            for rep in range(1, args.reps + 1):
                for setup in setups:
                    for kind in ("fanout", "latency"):
                        if kind == "fanout" and args.lines == 0:
                            continue
                        result = measure(args, setup, redis, workdir, sizes, kind, rep)
                        print(json.dumps(result), flush=True)
                        results.append(result)
                if args.handshakes:
                    for setup in setups[:2]:
                        result = measure_handshakes(
                            args, setup, redis, workdir, args.handshakes, rep
                        )
                        print(json.dumps(result), flush=True)
                        handshakes.append(result)
            if args.micro or args.quick:
                micro = redis_micro(redis, workdir, args.quick)
                print(json.dumps(micro), flush=True)
        finally:
            redis.stop()
    stem = "fleet-quick" if args.quick else args.name
    RESULTS.mkdir(exist_ok=True)
    document = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        },
        "sizes": sizes.__dict__,
        "results": results,
        "handshakes": handshakes,
        "redis_micro": micro,
        "source": provenance.current(),
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    text = report(results, handshakes, micro)
    text += "\n" + provenance.summary_line(document["source"]) + "\n"
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)
    bad = [r for r in results if r["lost"] or r["out_of_order"] or r["publisher_exit"]]
    bad += [h for h in handshakes if not h["auth_ok"]]
    return 1 if bad else 0


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
