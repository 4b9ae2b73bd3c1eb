"""The nanostream-only scenarios: ids, resume and the Redis sources.

No peer server has line ids, resume or a Redis source, so these compare
nanostream with itself, side by side in one run, each part in a server
process of its own:

* ``fanout-v1-N``: the same fan-out to N raw and to N ``nanostream.v1``
  clients; the figure is the ratio of server CPU per delivery, v1 / raw.
* ``resume-storm``: live clients measure latency on a paced feed while K
  clients resume at once, then while K reconnect plainly.
* ``stream-latency``: latency from XADD to receipt with a Redis stream
  source, and from PUBLISH with a pub/sub source.

The order of the two parts alternates with the repetition, so that a drift
of the machine does not always favour the same one.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import time
from collections import Counter
from typing import Any

import feed
import redisfeed
import tokens
import v1client
from processes import ProcessFailed
from scenarios import Run, Skipped, Snapshot, Writer, run_stream, usage

# The storm's connections all arrive at once: a listen queue deeper than
# Twisted's 50 keeps the kernel from dropping SYNs, which would add its
# one-second retransmission to the wall time.
STORM_LISTEN_OPTIONS = ":backlog=1024"

# Seconds between two storms, for the closes of the first to settle.
SETTLE_S = 2.0

# Storms of each kind per repetition, their latency windows pooled: one
# storm lasts under a second, some 35 lines at 50 lines/s, and a p99 over
# one would be the worst line's, not a percentile.
STORM_ROUNDS = 5


def _rep(run: Run) -> int:
    digits = "".join(c for c in run.tag.split(".")[0] if c.isdigit())
    return int(digits or 1)


def _ordered(run: Run, first: str, second: str) -> list[str]:
    return [first, second] if _rep(run) % 2 else [second, first]


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def run_fanout_v1(run: Run) -> dict[str, Any]:
    """Server CPU per delivery to nanostream.v1 clients over that to raw ones."""
    parts = {
        part: run_stream(run.sub(part), v1=part == "v1")
        for part in _ordered(run, "raw", "v1")
    }
    raw, v1 = parts["raw"], parts["v1"]

    def us(m: dict[str, Any]) -> float | None:
        d = m.get("deliveries")
        return round(m["server_cpu_s"] / d * 1e6, 4) if d else None

    metrics: dict[str, Any] = {
        "raw_us_per_delivery": us(raw),
        "v1_us_per_delivery": us(v1),
        "cpu_per_delivery_ratio": _ratio(us(v1), us(raw)),
        "raw_deliveries_per_s": raw.get("deliveries_per_s"),
        "v1_deliveries_per_s": v1.get("deliveries_per_s"),
        "v1_deliveries_per_cpu_s": v1.get("deliveries_per_cpu_s"),
        "raw_deliveries_per_cpu_s": raw.get("deliveries_per_cpu_s"),
        "server_cpu_share": v1["server_cpu_share"],
        "server_core_busy": v1["server_core_busy"],
        "loadgen_cpu_share": v1["loadgen_cpu_share"],
        "bottleneck": v1["bottleneck"],
        "raw_bottleneck": raw["bottleneck"],
        "timed_out": raw["timed_out"] or v1["timed_out"],
        "server_exit": raw["server_exit"] or v1["server_exit"],
        "client": v1["client"],
        "parts": parts,
    }
    for fault in ("lost", "out_of_order", "incomplete_clients", "id_faults"):
        metrics[fault] = raw.get(fault, 0) + v1.get(fault, 0)
    return metrics


def run_storm(run: Run) -> dict[str, Any]:
    """Live latency and server CPU while K clients resume, then reconnect."""
    sc = run.scenario
    storm_args = ["--storm", sc.count, "--back", sc.lines, "--nice", 10]
    windows: dict[str, list[list[int]]] = {"resume": [], "plain": []}
    storms: dict[str, list[dict[str, Any]]] = {"resume": [], "plain": []}
    with run.server(listen_options=STORM_LISTEN_OPTIONS) as server:
        server.wait_ready()
        with (
            run.loadgen(
                "live", "--clients", sc.clients, script="resumegen.py", log="live"
            ) as live,
            run.loadgen("storm", *storm_args, script="resumegen.py", log="storm") as sg,
        ):
            ready = live.wait("ready", timeout=180)
            if ready["connected"] < sc.clients:
                raise ProcessFailed(f"only {ready['connected']} live clients: {ready}")
            sg.wait("ready", timeout=60)
            writer = Writer(
                server.stdin, feed.write_paced, int(sc.rate * 3600), sc.rate
            )
            writer.start()
            try:
                # The resumes go back sc.lines lines: let that many be sent first.
                time.sleep(sc.lines / sc.rate + 1.0)
                before, t0 = Snapshot.take(server), time.monotonic_ns()
                time.sleep(sc.duration)
                after, t1 = Snapshot.take(server), time.monotonic_ns()
                windows["quiet"] = [[t0, t1]]
                quiet_share = (after.server_cpu - before.server_cpu) / ((t1 - t0) / 1e9)
                for _ in range(STORM_ROUNDS):
                    for kind in _ordered(run, "resume", "plain"):
                        before = Snapshot.take(server)
                        sg.send(f"storm {kind}")
                        res = sg.wait("storm", timeout=900)
                        after = Snapshot.take(server)
                        wall = (res["t_all_live_ns"] - res["t_start_ns"]) / 1e9
                        cpu = after.server_cpu - before.server_cpu
                        res["server_cpu_s"] = round(cpu, 6)
                        res["usage"] = usage(
                            run.ctx, before, after, max(wall, 1e-9), res["cpu_s"]
                        )
                        storms[kind].append(res)
                        windows[kind].append([res["t_start_ns"], res["t_all_live_ns"]])
                        sg.wait("closed", timeout=120)
                        time.sleep(min(SETTLE_S, sc.duration))
                live.send("report " + json.dumps(windows))
                latency = live.wait("result", timeout=120)
            finally:
                writer.stop()
                writer.join(10)
            status = server.stop()
    return _storm_metrics(storms, latency, quiet_share, status, writer.error)


def _pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The storms of one kind as one: the median round's times and usage
    (by wall time), every round's faults and failures."""

    def wall(res: dict[str, Any]) -> float:
        return (res["t_all_live_ns"] - res["t_start_ns"]) / 1e9

    ordered = sorted(rounds, key=wall)
    median = dict(ordered[len(ordered) // 2])
    median["wall_s"] = round(wall(median), 3)
    median["rounds_wall_s"] = [round(wall(r), 3) for r in rounds]
    median["server_cpu_s"] = round(
        statistics.median(r["server_cpu_s"] for r in rounds), 6
    )
    median["cpu_per_line"] = sum(r["server_cpu_s"] for r in rounds) / max(
        sum(r["replayed_total"] for r in rounds), 1
    )
    for key in ("faults", "short_replays", "replayed_total"):
        median[key] = sum(r[key] for r in rounds)
    for key in ("fault_examples", "recorder_faults"):
        median[key] = [x for r in rounds for x in r[key]][:5]
    failed: Counter[str] = Counter()
    for r in rounds:
        failed.update(r["failed"])
    median["failed"] = dict(failed)
    median["timed_out"] = any(r["timed_out"] for r in rounds)
    return median


def _storm_metrics(
    storms: dict[str, list[dict[str, Any]]],
    latency: dict[str, Any],
    quiet_share: float,
    status: int | None,
    writer_error: str | None,
) -> dict[str, Any]:
    resume, plain = _pooled(storms["resume"]), _pooled(storms["plain"])
    lat = latency["windows"]

    metrics: dict[str, Any] = {
        "resume_wall_s": resume["wall_s"],
        "plain_wall_s": plain["wall_s"],
        "resume_server_cpu_s": resume["server_cpu_s"],
        "plain_server_cpu_s": plain["server_cpu_s"],
        "resume_plain_cpu_ratio": _ratio(resume["server_cpu_s"], plain["server_cpu_s"]),
        "quiet_server_cpu_share": round(quiet_share, 3),
        "resume_to_live_p99_ms": resume["to_live_ms"].get("p99"),
        # Lines each client got before !live: from the one after its since to
        # the newest, a count that grows with the feed while replays run.
        "lines_replayed": resume["replayed"],
        "resume_us_per_replayed_line": round(resume["cpu_per_line"] * 1e6, 3)
        if resume["replayed_total"]
        else None,
        "quiet_p50_ms": lat["quiet"].get("p50"),
        "quiet_p99_ms": lat["quiet"].get("p99"),
        "resume_p99_ms": lat["resume"].get("p99"),
        "plain_p99_ms": lat["plain"].get("p99"),
        "storm_quiet_p99_ratio": _ratio(
            lat["resume"].get("p99"), lat["quiet"].get("p99")
        ),
        "live_latency": lat,
        "server_cpu_share": resume["usage"]["server_cpu_share"],
        "server_core_busy": resume["usage"]["server_core_busy"],
        "loadgen_cpu_share": resume["usage"]["loadgen_cpu_share"],
        "bottleneck": resume["usage"]["bottleneck"],
        # Every resumed client got every line after its since, in order, then
        # !live and the next line; every plain one its first line.
        "resume_faults": resume["faults"]
        + plain["faults"]
        + resume["short_replays"]
        + len(resume["recorder_faults"]),
        "fault_examples": resume["fault_examples"]
        + plain["fault_examples"]
        + resume["recorder_faults"],
        "failed": sum(resume["failed"].values()) + sum(plain["failed"].values()),
        "id_faults": latency["id_faults"] + latency["notices"],
        "lost": latency["closed"],
        "timed_out": resume["timed_out"] or plain["timed_out"],
        "server_exit": status,
        "storms": {"resume": resume, "plain": plain},
    }
    if writer_error:
        metrics["writer_error"] = writer_error
    return metrics


class SourceRefused(Exception):
    """The server would not start with the Redis source asked for."""


def run_stream_latency(run: Run) -> dict[str, Any]:
    """Latency from XADD (stream source) and from PUBLISH (pub/sub source)."""
    why = redisfeed.reachable()
    if why:
        raise Skipped(f"no Redis at {redisfeed.HOST}:{redisfeed.PORT} ({why})")
    parts: dict[str, dict[str, Any]] = {}
    refused = None
    for variant in _ordered(run, "pubsub", "stream"):
        name = f"nanostream-bench-{secrets.token_hex(4)}"
        try:
            parts[variant] = _redis_latency(run.sub(variant), variant, name)
        except SourceRefused as exc:
            if variant == "pubsub":
                raise ProcessFailed(str(exc)) from None
            refused = str(exc)
        finally:
            if variant == "stream":
                with redisfeed.Resp() as redis:
                    redis.command("DEL", name)
    pubsub, stream = parts["pubsub"], parts.get("stream", {})
    metrics: dict[str, Any] = {
        "stream_p50_ms": stream.get("latency_p50_ms"),
        "stream_p99_ms": stream.get("latency_p99_ms"),
        "pubsub_p50_ms": pubsub["latency_p50_ms"],
        "pubsub_p99_ms": pubsub["latency_p99_ms"],
        "stream_pubsub_p99_ratio": _ratio(
            stream.get("latency_p99_ms"), pubsub["latency_p99_ms"]
        ),
        "server_cpu_share": pubsub["server_cpu_share"],
        "server_core_busy": pubsub["server_core_busy"],
        "loadgen_cpu_share": pubsub["loadgen_cpu_share"],
        "bottleneck": pubsub["bottleneck"],
        "timed_out": any(p["timed_out"] for p in parts.values()),
        "client": pubsub["client"],
        "parts": parts,
    }
    for fault in ("lost", "out_of_order", "incomplete_clients"):
        metrics[fault] = sum(p[fault] for p in parts.values())
    if refused:
        metrics["stream_skipped"] = refused
    return metrics


def _redis_latency(run: Run, variant: str, name: str) -> dict[str, Any]:
    sc = run.scenario
    kind = "stream" if variant == "stream" else "channel"
    url = f"redis://{redisfeed.HOST}:{redisfeed.PORT}/0?{kind}={name}"
    lines = int(sc.rate * sc.duration)
    args = ["--clients", sc.clients, "--expect", lines, "--concurrency", 100]
    with run.server(extra=("--source", url)) as server:
        try:
            server.wait_ready()
        except ProcessFailed as exc:
            if server.alive():
                raise
            said = [s for s in str(exc).splitlines()[1:] if s.strip()]
            raise SourceRefused(
                f"the server refused --source {url}: "
                + (said[-1].strip() if said else str(exc).splitlines()[0])
            ) from None
        _probe(run, kind, name)
        with run.loadgen("stream", *args, "--latency") as lg:
            ready = lg.wait("ready", timeout=180)
            if ready["connected"] < sc.clients:
                raise ProcessFailed(f"only {ready['connected']} clients: {ready}")
            before, t0 = Snapshot.take(server), time.monotonic_ns()
            producer = redisfeed.Producer(kind, name, lines, sc.rate)
            producer.start()
            try:
                res = lg.wait("result", timeout=sc.duration + 120)
                after = Snapshot.take(server)
            finally:
                producer.stop()
                producer.join(10)
            lg.finish()
        # A Redis source does not end with stdin: the status is not judged.
        server.stop(timeout=0.5)
    lat = res.get("latency_ms", {})
    metrics: dict[str, Any] = {
        "source": url,
        "deliveries": res["delivered"],
        "lost": res["lost"],
        "out_of_order": res["out_of_order"],
        "incomplete_clients": sc.clients - res["complete_clients"],
        "timed_out": res["timed_out"],
        "lines_written": producer.written,
        "client": ready["client"],
        "latency_p50_ms": lat.get("p50"),
        "latency_p99_ms": lat.get("p99"),
        "latency_max_ms": lat.get("max"),
    }
    if producer.error:
        metrics["producer_error"] = producer.error
    wall = max((res["t_last_ns"] - t0) / 1e9, 1e-9)
    metrics.update(usage(run.ctx, before, after, wall, res["cpu_s"]))
    return metrics


def _probe(run: Run, kind: str, name: str, timeout: float = 20.0) -> None:
    """Send probe lines until one reaches a client: the source is reading.

    Before this a pub/sub source may not have subscribed yet, and lines
    sent then would never arrive; the measured clients connect after it.
    """
    secret = tokens.read_secret(run.ctx.secret_file)
    url = f"ws://127.0.0.1:{run.port}/?t={tokens.mint(secret)}"

    async def probe() -> None:
        client = await v1client.connect(v1client.Probe, url, None)
        assert isinstance(client, v1client.Probe)
        deadline = time.monotonic() + timeout
        try:
            with redisfeed.Resp() as redis:
                while not client.message.done():
                    if time.monotonic() > deadline:
                        raise ProcessFailed(f"no probe line arrived in {timeout}s")
                    redisfeed.send_line(redis, kind, name, b"probe")
                    await asyncio.wait([client.message], timeout=0.1)
        finally:
            client.close()
            await asyncio.sleep(0.1)

    asyncio.run(probe())


RUNNERS = {
    "fanout-v1": run_fanout_v1,
    "storm": run_storm,
    "redis": run_stream_latency,
}
