"""Benchmark nanostream against peer servers, or smoke-test it with --quick.

    bench/setup                               # once: bench/.venv, node modules
    bench/.venv/bin/python bench/run.py       # full run, about 50 minutes
    python bench/run.py --quick               # seconds; correctness only

Each scenario runs against each server as a real process, repetitions
interleaved (rep 1 of every server, then rep 2, ...) so that slow drifts of
the machine hit every server alike. Results go to bench/results/latest.json
and latest.md (quick.json and quick.md for --quick). The exit status is
non-zero when any server lost, duplicated or reordered a line, failed an
authentication check, or a run failed; never because of a time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

import machine
import procfs
import provenance
import report
import scenarios
import servers
from scenarios import Context, Scenario

RESULTS = servers.BENCH / "results"
#: --quick also checks this peer's correctness when it can run here.
QUICK_PEER = "picows-batched"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few clients, a few hundred lines, nanostream only: checks"
        " correctness (no loss, order, 401s) in seconds, never asserts a time",
    )
    parser.add_argument(
        "--servers",
        help=f"comma-separated, from {','.join(servers.ALL)} (default: all;"
        f" --quick: nanostream, and {QUICK_PEER} where installed)",
    )
    parser.add_argument("--reps", type=int, help="repetitions (default 3; --quick: 1)")
    parser.add_argument(
        "--scenarios",
        help="comma-separated: fanout-N, fanout-slow-N, paced-N@RATE,"
        " latency-N@RATE, handshake[-COUNT], memory[-COUNT],"
        " memory-malloc[-COUNT], fanout-v1-N, resume-storm[-COUNT][@RATE],"
        " stream-latency[-N@RATE], handshake-ledger[-COUNT],"
        " handshake-quiet[-COUNT]"
        f" (default: {','.join(scenarios.DEFAULT_SCENARIOS)})",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per latency run (10)"
    )
    parser.add_argument(
        "--lines", type=int, help="lines per fanout run (default ~1M/N)"
    )
    parser.add_argument(
        "--client",
        default="auto",
        choices=["auto", "exact", "picows", "websockets"],
        help="load generator client (auto: exact-bytes for fan-out, else picows"
        " if importable, else websockets)",
    )
    parser.add_argument("--twistd", help="the twistd that has the nanostream plugin")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    return parser.parse_args(argv)


def quick_scenarios() -> list[Scenario]:
    """Small enough for CI: correctness of fan-out, of token checks, of ids
    and of resume."""
    return [
        Scenario("fanout-5", "fanout", clients=5, lines=300),
        Scenario("fanout-slow-5", "fanout-slow", clients=5, lines=300),
        Scenario("paced-5@200", "paced", clients=5, rate=200.0, duration=1.0),
        Scenario("handshake-40", "handshake", count=40, concurrency=8),
        Scenario("memory-malloc-20", "memory", count=20, concurrency=10, shipped=True),
        Scenario("fanout-v1-5", "fanout-v1", clients=5, lines=300),
        Scenario(
            "resume-storm-20",
            "storm",
            clients=5,
            count=20,
            lines=100,
            rate=200.0,
            duration=1.0,
        ),
    ]


def raise_fd_limit() -> None:
    """Servers inherit this: 5000 connections need more than 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def background_busy(seconds: float = 0.3) -> float | None:
    """How busy the machine is before a run: other people's work skews ours."""
    before = procfs.core_jiffies()
    time.sleep(seconds)
    after = procfs.core_jiffies()
    shares = [procfs.busy_share(before, after, c) for c in before]
    known = [s for s in shares if s is not None]
    return round(sum(known) / len(known), 3) if known else None


def headline(run: dict[str, Any]) -> str:
    """One progress line for a finished run."""
    if run["error"]:
        return "ERROR " + run["error"].splitlines()[0]
    if run.get("skipped"):
        return "skipped: " + run["skipped"]
    m = run["metrics"]
    parts = []
    for key in (
        "deliveries_per_s",
        "deliveries_per_cpu_s",
        "server_us_per_delivery",
        "latency_p50_ms",
        "latency_p99_ms",
        "handshakes_per_s",
        "kib_per_connection",
        "cpu_per_delivery_ratio",
        "resume_wall_s",
        "plain_wall_s",
        "resume_plain_cpu_ratio",
        "quiet_p99_ms",
        "resume_p99_ms",
        "stream_p99_ms",
        "pubsub_p99_ms",
        "stream_skipped",
        "file_memory_cpu_ratio",
        "memory_handshakes_per_cpu_s",
        "file_handshakes_per_cpu_s",
        "redis_handshakes_per_cpu_s",
        "server_cpu_share",
        "loadgen_cpu_share",
        "bottleneck",
    ):
        if m.get(key) is not None:
            parts.append(f"{key}={m[key]}")
    problems = report.correctness_problems(run)
    parts.append("PROBLEMS: " + "; ".join(problems) if problems else "correct")
    return " ".join(parts)


def exit_on_signals() -> None:
    """Turn SIGTERM and SIGINT into SystemExit, so every finally block runs
    and no server or load generator outlives the runner (a background job
    inherits SIGINT ignored, and SIGTERM would otherwise end us on the spot)."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    names = (
        args.servers or ("nanostream" if args.quick else ",".join(servers.ALL))
    ).split(",")
    quick_peer = args.quick and not args.servers
    if quick_peer:
        # The peer to beat, checked too where bench/setup has installed it.
        names.append(QUICK_PEER)
    reps = args.reps or (1 if args.quick else 3)
    if args.quick and not args.scenarios:
        plan = quick_scenarios()
    else:
        wanted = (
            args.scenarios.split(",") if args.scenarios else scenarios.DEFAULT_SCENARIOS
        )
        plan = [scenarios.parse_scenario(n, args.duration, args.lines) for n in wanted]

    twistd = servers.find_twistd(args.twistd)
    specs = servers.build(names, twistd)
    usable = []
    for spec in list(specs):
        if spec.problem and quick_peer and spec.name == QUICK_PEER:
            print(
                f"--quick: {spec.name} not installed here (bench/setup)",
                file=sys.stderr,
            )
            specs.remove(spec)
        elif spec.problem:
            print(f"skipping {spec.name}: {spec.problem}", file=sys.stderr)
        else:
            usable.append(spec)
    if not usable:
        print("no server can run here", file=sys.stderr)
        return 2

    raise_fd_limit()
    logdir = args.out / "logs"
    runs: list[dict[str, Any]] = []
    with Context.create(logdir, args.client) as ctx:
        if ctx.loadgen_core is not None:
            # The runner writes the lines: keep it off the server's core.
            os.sched_setaffinity(0, {ctx.loadgen_core})
        for rep in range(1, reps + 1):
            for scenario in plan:
                for spec in usable:
                    if scenario.nanostream_only and spec.name != "nanostream":
                        continue
                    busy = background_busy()
                    run = scenarios.run_one(ctx, spec, scenario, f"rep{rep}")
                    run["rep"] = rep
                    run["background_busy"] = busy
                    runs.append(run)
                    print(
                        f"[rep {rep}/{reps}] {scenario.name} {spec.name}"
                        f" ({run['seconds']}s): {headline(run)}",
                        file=sys.stderr,
                        flush=True,
                    )

        kinds = {s.name: s.kind for s in plan}
        summary = report.summarize(runs, kinds)
        project_python = str(Path(twistd).parent / "python") if twistd else None
        data = {
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "source": provenance.describe(servers.REPO, project_python),
            "machine": machine.describe(
                servers.peer_python(), project_python, servers.PEERS / "node"
            ),
            "config": {
                "quick": args.quick,
                "reps": reps,
                "servers": [s.name for s in usable],
                "skipped": {s.name: s.problem for s in specs if s.problem},
                "scenarios": [s.name for s in plan],
                "client": runs[0]["metrics"].get("client", args.client)
                if runs
                else None,
                "server_core": ctx.server_core,
                "loadgen_core": ctx.loadgen_core,
            },
            "kinds": kinds,
            "nanostream_only": [s.name for s in plan if s.nanostream_only],
            "descriptions": {s.name: s.describe() for s in plan},
            "summary": summary,
            "ratios": report.ratios(summary, kinds),
            "runs": runs,
        }
    json_path, md_path = report.write(
        data, args.out, "quick" if args.quick else "latest"
    )
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    bad = [r for r in runs if report.correctness_problems(r)]
    if bad:
        print(f"{len(bad)} run(s) with problems: see the table", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
