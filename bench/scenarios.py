"""The scenarios, and how one scenario is run against one server.

A run always has the same shape: start the server (pinned to its core),
wait for its ready line, start the load generator (pinned to the other
core), drive the scenario, read the server's CPU time and memory from
/proc, then stop both. What differs is what is written to the server's
stdin and what the load generator does.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import feed
import procfs
from processes import LoadgenProcess, ProcessFailed, ServerProcess, pinning
from servers import BENCH, SHIPPED_ENV, ServerSpec

#: Clients of ``fanout-slow-N``: a small receive buffer, read once per tick.
SLOW_RCVBUF = 16384
SLOW_TICK_MS = 50.0


@dataclass(frozen=True)
class Scenario:
    """What to do against each server, with the sizes to use."""

    name: str
    kind: str  # fanout | fanout-slow | paced | latency | handshake | memory
    # | fanout-v1 | storm | redis | ledger | quiet
    clients: int = 0
    lines: int = 0
    rate: float = 0.0
    duration: float = 0.0
    count: int = 0
    concurrency: int = 50
    # The server as contrib/systemd runs it: its defaults, PYTHONMALLOC=malloc.
    shipped: bool = False

    def describe(self) -> str:
        """One line for the report saying what was measured."""
        if self.kind == "fanout":
            return f"{self.clients} clients, {self.lines} lines of ~720 B at full speed"
        if self.kind == "fanout-slow":
            return (
                f"{self.clients} slow clients (SO_RCVBUF {SLOW_RCVBUF} B, one read"
                f" per {SLOW_TICK_MS:g} ms), {self.lines} lines of ~720 B at full speed"
            )
        if self.kind == "paced":
            return (
                f"{self.clients} clients, {self.rate:g} lines/s for"
                f" {self.duration:g} s: server CPU per delivery"
            )
        if self.kind == "latency":
            return (
                f"{self.clients} clients, {self.rate:g} lines/s for {self.duration:g} s"
            )
        if self.kind == "handshake":
            return f"{self.count} connections, {self.concurrency} in flight"
        if self.kind == "ledger":
            return (
                f"{self.count} connections, {self.concurrency} in flight, with the"
                " in-memory, file, Redis and Redis Cluster ledgers"
            )
        if self.kind == "quiet":
            return (
                f"{self.count} connections, {self.concurrency} in flight, at"
                " --log-level info and warn"
            )
        if self.kind == "fanout-v1":
            return (
                f"{self.clients} nanostream.v1 clients against {self.clients} raw"
                f" ones, {self.lines} lines of ~720 B at full speed each"
            )
        if self.kind == "storm":
            return (
                f"{self.clients} live clients at {self.rate:g} lines/s; then"
                f" {self.count} clients resume {self.lines} lines back at once,"
                f" against {self.count} plain reconnects"
            )
        if self.kind == "redis":
            return (
                f"{self.clients} clients, {self.rate:g} lines/s for"
                f" {self.duration:g} s from a Redis stream and from pub/sub"
            )
        if self.shipped:
            return (
                f"{self.count} idle authenticated connections, servers as shipped:"
                " PYTHONMALLOC=malloc, default heartbeats"
            )
        return f"{self.count} idle authenticated connections"

    @property
    def nanostream_only(self) -> bool:
        """Resume, the Redis sources and the ledgers are nanostream's alone."""
        return self.kind in NANOSTREAM_ONLY


NANOSTREAM_ONLY = frozenset({"fanout-v1", "storm", "redis", "ledger", "quiet"})


DEFAULT_SCENARIOS = (
    "fanout-100",
    "fanout-1000",
    "fanout-slow-1000",
    "paced-1000@20",
    "latency-100@200",
    "latency-1000@20",
    "handshake",
    "memory",
    "memory-malloc",
    "fanout-v1-1000",
    "resume-storm",
    "stream-latency",
    "handshake-ledger",
)


def parse_scenario(
    name: str, duration: float = 10.0, lines: int | None = None
) -> Scenario:
    """Turn ``fanout-100``, ``fanout-slow-N``, ``paced-N@RATE``,
    ``latency-1000@20``, ``handshake[-K]``, ``memory[-K]``, ``memory-malloc[-K]``,
    ``fanout-v1-N``, ``resume-storm[-K][@RATE]``, ``stream-latency[-N@RATE]`` and
    ``handshake-ledger[-K]`` into a
    Scenario; sizes not in the name take the defaults of the brief."""
    if m := re.fullmatch(r"fanout-v1-(\d+)", name):
        # A ratio of two CPU times wants windows of a second or more each:
        # about five million deliveries.
        clients = int(m[1])
        default = min(20000, max(500, 5_000_000 // max(clients, 1)))
        return Scenario(name, "fanout-v1", clients=clients, lines=lines or default)
    if m := re.fullmatch(r"resume-storm(?:-(\d+))?(?:@(\d+(?:\.\d+)?))?", name):
        # 100 live clients, then K (1000) resume 1000 lines back at once
        # and stay.  The feed's rate is one the machine carries once all
        # are live: 1100 clients at 200 lines/s of ~720 B saturate a core
        # for every server (paced-1000@200: ~5 us per delivery, nanostream
        # and the batched picows peer alike), and the storm would then
        # measure that, not the resumes.
        return Scenario(
            name,
            "storm",
            clients=100,
            count=int(m[1] or 1000),
            lines=lines or 1000,
            rate=float(m[2] or 50),
            duration=duration,
        )
    if m := re.fullmatch(r"stream-latency(?:-(\d+)@(\d+(?:\.\d+)?))?", name):
        return Scenario(
            name,
            "redis",
            clients=int(m[1] or 100),
            rate=float(m[2] or 200),
            duration=duration,
        )
    if m := re.fullmatch(r"fanout-slow-(\d+)", name):
        # Two million deliveries: with 1000 clients 1.4 MiB each, well beyond
        # what the kernel holds for a slow client, so the server must queue.
        clients = int(m[1])
        default = min(5000, max(500, 2_000_000 // max(clients, 1)))
        return Scenario(name, "fanout-slow", clients=clients, lines=lines or default)
    if m := re.fullmatch(r"paced-(\d+)@(\d+(?:\.\d+)?)", name):
        return Scenario(
            name, "paced", clients=int(m[1]), rate=float(m[2]), duration=duration
        )
    if m := re.fullmatch(r"fanout-(\d+)", name):
        clients = int(m[1])
        # About a million deliveries (half a million for few clients).
        default = min(5000, max(500, 1_000_000 // max(clients, 1)))
        return Scenario(name, "fanout", clients=clients, lines=lines or default)
    if m := re.fullmatch(r"latency-(\d+)@(\d+(?:\.\d+)?)", name):
        return Scenario(
            name, "latency", clients=int(m[1]), rate=float(m[2]), duration=duration
        )
    if m := re.fullmatch(r"handshake-quiet(?:-(\d+))?", name):
        return Scenario(name, "quiet", count=int(m[1] or 5000), concurrency=50)
    if m := re.fullmatch(r"handshake-ledger(?:-(\d+))?", name):
        # Three parts whose CPU times are compared: a few seconds each.
        return Scenario(name, "ledger", count=int(m[1] or 5000), concurrency=50)
    if m := re.fullmatch(r"handshake(?:-(\d+))?", name):
        return Scenario(name, "handshake", count=int(m[1] or 2000), concurrency=50)
    if m := re.fullmatch(r"memory(-malloc)?(?:-(\d+))?", name):
        return Scenario(
            name,
            "memory",
            count=int(m[2] or 5000),
            concurrency=100,
            shipped=bool(m[1]),
        )
    raise SystemExit(f"unknown scenario {name!r}")


@dataclass
class Context:
    """What every run shares: where files go, which cores, which client."""

    workdir: Path
    logdir: Path
    secret_file: Path
    client: str = "auto"
    loadgen_core: int | None = None
    server_core: int | None = None
    python: str = sys.executable
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    @contextlib.contextmanager
    def create(cls, logdir: Path, client: str) -> Iterator[Context]:
        """A context with a fresh secret, removed afterwards."""
        import tempfile

        lg_core, srv_core = pinning()
        with tempfile.TemporaryDirectory(prefix="nanostream-bench-") as tmp:
            secret = Path(tmp) / "secret"
            secret.write_text(secrets.token_hex(32) + "\n")
            secret.chmod(0o600)
            yield cls(Path(tmp), logdir, secret, client, lg_core, srv_core)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Run:
    """One scenario against one server: the processes and their files."""

    def __init__(self, ctx: Context, spec: ServerSpec, scenario: Scenario, tag: str):
        self.ctx = ctx
        self.spec = spec
        self.scenario = scenario
        self.tag = tag
        self.port = free_port()
        self.stem = f"{scenario.name}.{spec.name}.{tag}".replace("@", "at")
        self.server_log = ctx.logdir / f"{self.stem}.server.log"
        self.loadgen_log = ctx.logdir / f"{self.stem}.loadgen.log"

    def sub(self, part: str) -> Run:
        """A run of its own (port, logs) for one part of a two-part scenario."""
        return Run(self.ctx, self.spec, self.scenario, f"{self.tag}.{part}")

    def server(
        self, extra: tuple[str, ...] = (), listen_options: str = ""
    ) -> ServerProcess:
        """The server; ``extra`` arguments and ``listen_options`` (such as
        ``:backlog=1024``) are for nanostream only. A shipped scenario runs it
        without the bench's options and with the systemd unit's environment."""
        env = {**os.environ, **self.spec.env}
        argv = self.spec.command(self.port, self.ctx.secret_file)
        if self.scenario.shipped:
            env.update(SHIPPED_ENV)
        else:
            argv += self.spec.bench_options
        if listen_options:
            at = argv.index("--listen") + 1
            argv[at] += listen_options
        argv += extra
        return ServerProcess(argv, self.server_log, self.ctx.server_core, env)

    def loadgen(
        self, mode: str, *args: object, script: str = "loadgen.py", log: str = ""
    ) -> LoadgenProcess:
        """A load generator; a second one in the same run needs its own ``log``."""
        argv = [
            self.ctx.python,
            str(BENCH / script),
            mode,
            "--url",
            f"ws://127.0.0.1:{self.port}/",
            "--secret-file",
            str(self.ctx.secret_file),
            "--client",
            self.ctx.client,
            *(str(a) for a in args),
        ]
        if self.ctx.loadgen_core is not None:
            argv += ["--core", str(self.ctx.loadgen_core)]
        path = self.loadgen_log
        if log:
            path = self.ctx.logdir / f"{self.stem}.{log}.log"
        return LoadgenProcess(argv, path)


def _saturated(share: float, core_busy: float | None) -> bool:
    # A process at 85% of its core is out of CPU; so is one at 60% whose
    # core is otherwise busy with the kernel's network work for it.
    return share >= 0.85 or (share >= 0.6 and (core_busy or 0.0) >= 0.95)


def bottleneck(
    server_share: float,
    loadgen_share: float,
    server_core: float | None = None,
    loadgen_core: float | None = None,
    frames_per_read: float | None = None,
    paced_reads: bool = False,
) -> str:
    """Which side ran out of CPU: ``server``, ``loadgen``, ``both`` or ``neither``
    (``clients`` when neither did and the clients read at a pace of their own).

    A client that keeps up reads each frame as soon as it lands and so may
    spin at full speed while the server sets the pace; one that falls
    behind finds a socket buffer's worth of frames (hundreds) waiting per
    read. So when both processes are busy, a handful of frames per read
    (fewer than 8) means the server was the limit.
    """
    server_busy = _saturated(server_share, server_core)
    loadgen_busy = _saturated(loadgen_share, loadgen_core)
    if server_busy and loadgen_busy:
        if frames_per_read is not None and frames_per_read < 8:
            return "server"
        return "both"
    if server_busy:
        return "server"
    if loadgen_busy:
        return "loadgen"
    if paced_reads:
        # The kernel's sending for the server runs on its core too: a full
        # core that the server kept busy means the clients were not the
        # slower side (a full core with the server nearly idle is someone
        # else's load).
        full = (server_core or 0.0) >= 0.95 and server_share >= 0.3
        return "server" if full else "clients"
    return "neither"


@dataclass
class Snapshot:
    """The server's CPU time and every core's ticks at one moment."""

    server_cpu: float
    cores: dict[int, tuple[int, int]]

    @classmethod
    def take(cls, server: ServerProcess) -> Snapshot:
        return cls(server.cpu(), procfs.core_jiffies())


def usage(
    ctx: Context,
    before: Snapshot,
    after: Snapshot,
    wall: float,
    loadgen_cpu: float,
    frames_per_read: float | None = None,
    paced_reads: bool = False,
) -> dict[str, Any]:
    """CPU figures of a measurement window, and the bottleneck they imply."""
    cpu = after.server_cpu - before.server_cpu
    figures: dict[str, Any] = {
        "wall_s": round(wall, 3),
        "server_cpu_s": round(cpu, 6),
        "server_cpu_share": round(cpu / wall, 3),
        "loadgen_cpu_share": round(loadgen_cpu / wall, 3),
        "server_core_busy": None,
        "loadgen_core_busy": None,
    }
    if ctx.server_core is not None and ctx.loadgen_core is not None:
        figures["server_core_busy"] = procfs.busy_share(
            before.cores, after.cores, ctx.server_core
        )
        figures["loadgen_core_busy"] = procfs.busy_share(
            before.cores, after.cores, ctx.loadgen_core
        )
    figures["bottleneck"] = bottleneck(
        figures["server_cpu_share"],
        figures["loadgen_cpu_share"],
        figures["server_core_busy"],
        figures["loadgen_core_busy"],
        frames_per_read,
        paced_reads,
    )
    return figures


class Writer(threading.Thread):
    """Writes the scenario's lines to the server's stdin in the background."""

    def __init__(self, sink: IO[bytes], write: Callable[..., int], *args: Any):
        super().__init__(daemon=True)
        self._fd, self._write, self._args = sink.fileno(), write, args
        self._stop_flag = threading.Event()
        self.written = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            self.written = self._write(
                self._fd, *self._args, stop=self._stop_flag.is_set
            )
        except (BrokenPipeError, OSError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self._stop_flag.set()


def run_stream(run: Run, v1: bool = False) -> dict[str, Any]:
    """fanout, fanout-slow, paced and latency: lines in on stdin, deliveries
    counted by clients; with ``v1`` the clients speak nanostream.v1 and check
    the ids too."""
    sc = run.scenario
    paced = sc.kind in ("latency", "paced")
    lines = int(sc.rate * sc.duration) if paced else sc.lines
    args: list[object] = ["--clients", sc.clients, "--expect", lines]
    args += ["--concurrency", 100]
    if v1:
        args.append("--v1")
    if sc.kind == "latency":
        # Each line is stamped as it is written: no exact bytes to expect.
        args.append("--latency")
        lines_file = None
    else:
        # Lines known ahead let clients check exact bytes (see rawclient.py).
        lines_file = run.ctx.workdir / f"lines-{lines}.txt"
        if not lines_file.exists():
            feed.write_lines_file(str(lines_file), lines)
        args += ["--expect-file", lines_file]
    if sc.kind == "fanout-slow":
        args += ["--rcvbuf", SLOW_RCVBUF, "--read-tick-ms", SLOW_TICK_MS]
    with run.server() as server:
        server.wait_ready()
        with run.loadgen("stream", *args) as lg:
            ready = lg.wait("ready", timeout=180)
            if ready["connected"] < sc.clients:
                raise ProcessFailed(
                    f"only {ready['connected']} clients connected: {ready}"
                )
            before, t0 = Snapshot.take(server), time.monotonic_ns()
            if lines_file is None:
                writer = Writer(server.stdin, feed.write_paced, lines, sc.rate)
            elif paced:
                writer = Writer(
                    server.stdin,
                    feed.write_paced_data,
                    lines_file.read_bytes(),
                    sc.rate,
                )
            else:
                writer = Writer(
                    server.stdin, feed.write_chunks, lines_file.read_bytes()
                )
            writer.start()
            try:
                res = lg.wait("result", timeout=sc.duration + 600)
                after = Snapshot.take(server)
            finally:
                writer.stop()
                writer.join(10)
            status = server.stop()
            lg.finish()
    wall = max((res["t_last_ns"] - t0) / 1e9, 1e-9)
    metrics: dict[str, Any] = {
        "deliveries": res["delivered"],
        "lost": res["lost"],
        "out_of_order": res["out_of_order"],
        "id_faults": res.get("id_faults", 0) + res.get("notices", 0),
        "incomplete_clients": sc.clients - res["complete_clients"],
        "timed_out": res["timed_out"],
        "lines_written": writer.written,
        "server_exit": status,
        "client": ready["client"],
    }
    if writer.error:
        metrics["writer_error"] = writer.error
    reads = res.get("reads") or 0
    frames_per_read = round(res["delivered"] / reads, 2) if reads else None
    metrics["loadgen_frames_per_read"] = frames_per_read
    metrics.update(
        usage(
            run.ctx,
            before,
            after,
            wall,
            res["cpu_s"],
            frames_per_read,
            paced_reads=sc.kind == "fanout-slow",
        )
    )
    cpu = metrics["server_cpu_s"]
    if sc.kind == "latency":
        lat = res.get("latency_ms", {})
        metrics.update(
            latency_p50_ms=lat.get("p50"),
            latency_p99_ms=lat.get("p99"),
            latency_max_ms=lat.get("max"),
        )
    elif paced:
        delivered = res["delivered"]
        metrics["server_us_per_delivery"] = (
            round(cpu / delivered * 1e6, 3) if delivered else None
        )
    else:
        metrics.update(
            deliveries_per_s=round(res["delivered"] / wall),
            deliveries_per_cpu_s=round(res["delivered"] / cpu) if cpu > 0 else None,
        )
    return metrics


def run_handshake(run: Run, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Connections per second, each with a fresh token; then the 401 checks.

    ``extra`` arguments go to nanostream (a ``--ledger``, say)."""
    sc = run.scenario
    args = ["--count", sc.count, "--concurrency", sc.concurrency]
    quiet = "--log-level" in extra and extra[extra.index("--log-level") + 1] in (
        "warn",
        "error",
    )
    with run.server(extra=extra) as server:
        if quiet:
            # No "listening on" line at warn: the port itself says it.
            server.wait_accepting(run.port)
        else:
            server.wait_ready()
        with run.loadgen("handshake", *args) as lg:
            ready = lg.wait("ready", timeout=60)
            before = Snapshot.take(server)
            lg.send("go")
            res = lg.wait("result", timeout=600)
            after = Snapshot.take(server)
            lg.finish()
        status = server.stop()
    wall = max((res["t_end_ns"] - res["t_start_ns"]) / 1e9, 1e-9)
    checks = res["checks"]
    metrics: dict[str, Any] = {
        "handshakes": res["ok"],
        "failed": sum(res["other"].values()),
        "failures": res["other"],
        "handshakes_per_s": round(res["ok"] / wall, 1),
        "auth_checks": checks,
        "auth_ok": checks.get("fresh_token") == 101
        and all(v == 401 for k, v in checks.items() if k != "fresh_token"),
        "server_exit": status,
        "client": ready["client"],
    }
    metrics.update(usage(run.ctx, before, after, wall, res["cpu_s"]))
    cpu = metrics["server_cpu_s"]
    metrics["handshakes_per_cpu_s"] = round(res["ok"] / cpu, 1) if cpu > 0 else None
    return metrics


def _steady_rss(server: ServerProcess, samples: int = 5, gap: float = 0.2) -> int:
    """The median of a few RSS readings, to ride over short allocation blips."""
    readings = []
    for _ in range(samples):
        readings.append(server.rss_kib())
        time.sleep(gap)
    return sorted(readings)[len(readings) // 2]


def run_memory(run: Run) -> dict[str, Any]:
    """RSS with N idle authenticated connections minus RSS with none."""
    sc = run.scenario
    args = ["--count", sc.count, "--concurrency", sc.concurrency, "--warmup", 20]
    with run.server() as server:
        server.wait_ready()
        with run.loadgen("hold", *args) as lg:
            lg.wait("ready", timeout=60)
            time.sleep(0.5)
            rss0 = _steady_rss(server)
            before = Snapshot.take(server)
            lg.send("go")
            res = lg.wait("result", timeout=600)
            after = Snapshot.take(server)
            time.sleep(1.0)
            rss1 = _steady_rss(server)
            lg.finish()
        status = server.stop()
    connected = res["connected"]
    wall = max((res["t_end_ns"] - res["t_start_ns"]) / 1e9, 1e-9)
    metrics: dict[str, Any] = {
        "connections": connected,
        "failed": sum(res["failed"].values()),
        "rss_idle_mib": round(rss0 / 1024, 1),
        "rss_loaded_mib": round(rss1 / 1024, 1),
        "kib_per_connection": round((rss1 - rss0) / connected, 2)
        if connected
        else None,
        "connects_per_s": round(connected / wall, 1),
        "server_exit": status,
    }
    metrics.update(usage(run.ctx, before, after, wall, res["cpu_s"]))
    return metrics


RUNNERS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "fanout": run_stream,
    "fanout-slow": run_stream,
    "paced": run_stream,
    "latency": run_stream,
    "handshake": run_handshake,
    "memory": run_memory,
}


class Skipped(Exception):
    """A scenario that cannot run here (no Redis, a source not built yet)."""


def _runner(kind: str) -> Callable[[Run], dict[str, Any]]:
    if kind in RUNNERS:
        return RUNNERS[kind]
    if kind == "ledger":
        import ledger_runs

        return ledger_runs.run_ledgers
    if kind == "quiet":
        import ledger_runs

        return ledger_runs.run_log_levels
    import resume_runs  # the nanostream-only scenarios build on this module

    return resume_runs.RUNNERS[kind]


def run_one(
    ctx: Context, spec: ServerSpec, scenario: Scenario, tag: str
) -> dict[str, Any]:
    """Run ``scenario`` against ``spec``; failures become an ``error`` entry."""
    run = Run(ctx, spec, scenario, tag)
    started = time.monotonic()
    skipped = None
    try:
        metrics = _runner(scenario.kind)(run)
        error = None
    except Skipped as exc:
        metrics, error, skipped = {}, None, str(exc)
    except (ProcessFailed, OSError, KeyError, ValueError) as exc:
        metrics, error = {}, f"{type(exc).__name__}: {exc}"
    return {
        "scenario": scenario.name,
        "server": spec.name,
        "tag": tag,
        "seconds": round(time.monotonic() - started, 1),
        "metrics": metrics,
        "error": error,
        "skipped": skipped,
        "logs": sorted(str(p) for p in ctx.logdir.glob(f"{run.stem}.*")),
    }
