"""``handshake-ledger``: token-checked handshakes with each used-token ledger.

nanostream alone, in four parts, each in a server process of its own, in
one run: the in-memory ledger (the default), ``--ledger FILE`` (a new file
in the run's temporary directory, every token synced to it before its 101,
one fdatasync per batch), ``--ledger redis://127.0.0.1:6379/0`` (left
out, saying why, when no Redis answers there) and ``--ledger`` naming a
member of a three-master Redis Cluster started for the part (left out,
saying why, without ``redis-server``).  Each part is the
``handshake`` scenario: fresh tokens, connect, 101, close, then the 401
checks.  The order of the parts rotates with the repetition, so that a
drift of the machine does not always favour the same one.

The figure is server CPU per handshake with the file over that with
memory (target: at most 1.25, that is a handshake rate per CPU-second
within 20% of the memory ledger's); the Redis parts are there for scale:
``cluster_redis_cpu_ratio`` is what a Cluster's ledger (redis-py from a
thread pool) costs per handshake over a single Redis's (txredisapi in the
reactor).

``handshake-quiet`` runs the same handshakes (in-memory ledger) at
``--log-level info``, where every connection writes two lines, and at
``warn``, where it writes none, in one run: server CPU per handshake at
warn over that at info says what the per-connection lines cost.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import redisfeed
from redis_cluster import BenchCluster
from scenarios import Run, run_handshake

PARTS = ("memory", "file", "redis", "cluster")


def _rep(run: Run) -> int:
    digits = "".join(c for c in run.tag.split(".")[0] if c.isdigit())
    return int(digits or 1)


def _us(metrics: dict[str, Any]) -> float | None:
    """Server CPU microseconds per completed handshake."""
    done = metrics.get("handshakes")
    return round(metrics["server_cpu_s"] / done * 1e6, 1) if done else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def filesystem(path: Path) -> str:
    """The type of the file system holding ``path`` (tmpfs makes a sync free)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                point = fields[1]
                inside = str(path).startswith(point.rstrip("/") + "/")
                if inside and len(point) > len(best):
                    best, kind = point, fields[2]
    except OSError:
        pass
    return kind


def run_ledgers(run: Run) -> dict[str, Any]:
    """The handshake scenario with the memory, file and Redis ledgers."""
    shift = (_rep(run) - 1) % len(PARTS)
    order = PARTS[shift:] + PARTS[:shift]
    redis_problem = redisfeed.reachable()
    ledger_file = run.ctx.workdir / f"used-tokens-{run.tag}"
    cluster_problem = None
    parts: dict[str, dict[str, Any]] = {}
    for part in order:
        extra: tuple[str, ...] = ()
        if part == "file":
            extra = ("--ledger", str(ledger_file))
        elif part == "redis":
            if redis_problem:
                continue
            extra = ("--ledger", f"redis://{redisfeed.HOST}:{redisfeed.PORT}/0")
        elif part == "cluster":
            cluster = BenchCluster(run.ctx.workdir / f"cluster-{run.tag}")
            try:
                cluster.start()
            except (OSError, RuntimeError) as e:
                cluster.stop()
                cluster_problem = str(e)
                continue
            try:
                parts[part] = run_handshake(
                    run.sub(part), extra=("--ledger", cluster.url)
                )
            finally:
                cluster.stop()
            continue
        parts[part] = run_handshake(run.sub(part), extra=extra)
    memory, file = parts["memory"], parts["file"]
    redis = parts.get("redis", {})
    on_cluster = parts.get("cluster", {})
    metrics: dict[str, Any] = {
        "memory_handshakes_per_cpu_s": memory["handshakes_per_cpu_s"],
        "file_handshakes_per_cpu_s": file["handshakes_per_cpu_s"],
        "redis_handshakes_per_cpu_s": redis.get("handshakes_per_cpu_s"),
        "memory_handshakes_per_s": memory["handshakes_per_s"],
        "file_handshakes_per_s": file["handshakes_per_s"],
        "redis_handshakes_per_s": redis.get("handshakes_per_s"),
        "file_memory_cpu_ratio": _ratio(_us(file), _us(memory)),
        "redis_memory_cpu_ratio": _ratio(_us(redis), _us(memory)) if redis else None,
        "cluster_handshakes_per_cpu_s": on_cluster.get("handshakes_per_cpu_s"),
        "cluster_handshakes_per_s": on_cluster.get("handshakes_per_s"),
        "cluster_memory_cpu_ratio": (
            _ratio(_us(on_cluster), _us(memory)) if on_cluster else None
        ),
        "cluster_redis_cpu_ratio": (
            _ratio(_us(on_cluster), _us(redis)) if on_cluster and redis else None
        ),
        "ledger_file_bytes": os.path.getsize(ledger_file),
        "ledger_filesystem": filesystem(ledger_file),
        "server_cpu_share": file["server_cpu_share"],
        "server_core_busy": file["server_core_busy"],
        "loadgen_cpu_share": file["loadgen_cpu_share"],
        "bottleneck": file["bottleneck"],
        "failed": sum(p["failed"] for p in parts.values()),
        "auth_ok": all(p["auth_ok"] for p in parts.values()),
        "auth_checks": {name: p["auth_checks"] for name, p in parts.items()},
        "client": file["client"],
        "parts": parts,
    }
    if cluster_problem:
        metrics["cluster_skipped"] = f"no Redis Cluster ({cluster_problem})"
    if redis_problem:
        metrics["redis_skipped"] = (
            f"no Redis at {redisfeed.HOST}:{redisfeed.PORT} ({redis_problem})"
        )
    return metrics


LEVELS = ("info", "warn")


def run_log_levels(run: Run) -> dict[str, Any]:
    """The handshake scenario at --log-level info and at warn."""
    shift = (_rep(run) - 1) % len(LEVELS)
    order = LEVELS[shift:] + LEVELS[:shift]
    parts = {
        level: run_handshake(run.sub(level), extra=("--log-level", level))
        for level in order
    }
    info, warn = parts["info"], parts["warn"]
    return {
        "info_handshakes_per_cpu_s": info["handshakes_per_cpu_s"],
        "warn_handshakes_per_cpu_s": warn["handshakes_per_cpu_s"],
        "info_handshakes_per_s": info["handshakes_per_s"],
        "warn_handshakes_per_s": warn["handshakes_per_s"],
        "warn_info_cpu_ratio": _ratio(_us(warn), _us(info)),
        "server_cpu_share": info["server_cpu_share"],
        "server_core_busy": info["server_core_busy"],
        "loadgen_cpu_share": info["loadgen_cpu_share"],
        "bottleneck": info["bottleneck"],
        "failed": sum(p["failed"] for p in parts.values()),
        "auth_ok": all(p["auth_ok"] for p in parts.values()),
        "auth_checks": {name: p["auth_checks"] for name, p in parts.items()},
        "client": info["client"],
        "parts": parts,
    }
