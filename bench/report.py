"""Turn the raw runs into medians, spreads, ratios, a JSON file and a table.

Every figure in the table is the median of the repetitions, with the
min–max spread beside it, because on a 2-core machine one run can be
disturbed by anything; the spread says how much to trust the median. A
difference between two servers whose spreads overlap is a tie, whatever
the medians say, and the ratios say so.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import provenance

# Per kind of scenario: (metric, column title, format, better direction).
COLUMNS: dict[str, list[tuple[str, str, str, str]]] = {
    "fanout": [
        ("deliveries_per_s", "deliveries/s", "{:,.0f}", "higher"),
        ("deliveries_per_cpu_s", "deliveries/server CPU-s", "{:,.0f}", "higher"),
    ],
    "fanout-slow": [
        ("deliveries_per_cpu_s", "deliveries/server CPU-s", "{:,.0f}", "higher"),
        ("deliveries_per_s", "deliveries/s", "{:,.0f}", "higher"),
        ("loadgen_frames_per_read", "frames per client read", "{:,.0f}", ""),
    ],
    "paced": [
        ("server_us_per_delivery", "server µs CPU/delivery", "{:.3f}", "lower"),
    ],
    "latency": [
        ("latency_p50_ms", "p50 ms", "{:.2f}", "lower"),
        ("latency_p99_ms", "p99 ms", "{:.2f}", "lower"),
        ("latency_max_ms", "max ms", "{:.1f}", "lower"),
    ],
    "handshake": [
        ("handshakes_per_s", "handshakes/s", "{:,.0f}", "higher"),
        ("handshakes_per_cpu_s", "handshakes/server CPU-s", "{:,.0f}", "higher"),
    ],
    "memory": [
        ("kib_per_connection", "KiB/connection", "{:.1f}", "lower"),
        ("rss_idle_mib", "RSS idle MiB", "{:.1f}", "lower"),
        ("rss_loaded_mib", "RSS loaded MiB", "{:.1f}", "lower"),
    ],
}
# The nanostream-only scenarios compare nanostream with itself.
COLUMNS.update(
    {
        "fanout-v1": [
            ("cpu_per_delivery_ratio", "v1/raw CPU per delivery", "{:.3f}", "lower"),
            ("raw_us_per_delivery", "raw µs/delivery", "{:.3f}", "lower"),
            ("v1_us_per_delivery", "v1 µs/delivery", "{:.3f}", "lower"),
            ("v1_deliveries_per_s", "v1 deliveries/s", "{:,.0f}", "higher"),
        ],
        "storm": [
            ("resume_wall_s", "resume: s to all !live", "{:.2f}", "lower"),
            ("resume_server_cpu_s", "resume: server CPU-s", "{:.2f}", "lower"),
            ("plain_wall_s", "plain: s to all first line", "{:.2f}", "lower"),
            ("plain_server_cpu_s", "plain: server CPU-s", "{:.2f}", "lower"),
            ("quiet_p99_ms", "live p99 ms quiet", "{:.2f}", "lower"),
            ("resume_p99_ms", "live p99 ms in resume storm", "{:.2f}", "lower"),
            ("plain_p99_ms", "live p99 ms in plain storm", "{:.2f}", "lower"),
            ("storm_quiet_p99_ratio", "p99 resume storm / quiet", "{:.2f}", "lower"),
            ("resume_us_per_replayed_line", "µs CPU/replayed line", "{:.2f}", "lower"),
        ],
        "ledger": [
            ("file_memory_cpu_ratio", "file/memory CPU/handshake", "{:.3f}", "lower"),
            ("memory_handshakes_per_cpu_s", "memory hs/CPU-s", "{:,.0f}", "higher"),
            ("file_handshakes_per_cpu_s", "file hs/CPU-s", "{:,.0f}", "higher"),
            ("redis_handshakes_per_cpu_s", "Redis hs/CPU-s", "{:,.0f}", "higher"),
            ("cluster_handshakes_per_cpu_s", "Cluster hs/CPU-s", "{:,.0f}", "higher"),
            ("file_handshakes_per_s", "file hs/s", "{:,.0f}", "higher"),
        ],
        "quiet": [
            ("warn_info_cpu_ratio", "warn/info CPU/handshake", "{:.3f}", "lower"),
            ("info_handshakes_per_cpu_s", "info hs/CPU-s", "{:,.0f}", "higher"),
            ("warn_handshakes_per_cpu_s", "warn hs/CPU-s", "{:,.0f}", "higher"),
        ],
        "redis": [
            ("stream_p50_ms", "stream p50 ms", "{:.2f}", "lower"),
            ("stream_p99_ms", "stream p99 ms", "{:.2f}", "lower"),
            ("pubsub_p50_ms", "pub/sub p50 ms", "{:.2f}", "lower"),
            ("pubsub_p99_ms", "pub/sub p99 ms", "{:.2f}", "lower"),
            ("stream_pubsub_p99_ratio", "p99 stream / pub/sub", "{:.2f}", "lower"),
        ],
    }
)
# Stated bounds on a scenario's figure: (metric, bound, what it says).
TARGETS: dict[str, tuple[str, float, str]] = {
    "fanout-v1": (
        "cpu_per_delivery_ratio",
        1.15,
        "server CPU per delivery to nanostream.v1 clients at most 1.15× raw",
    ),
    "storm": (
        "storm_quiet_p99_ratio",
        3.0,
        "live clients' p99 during the resume storm at most 3× quiet",
    ),
    "ledger": (
        "file_memory_cpu_ratio",
        1.25,
        "server CPU per handshake with --ledger FILE at most 1.25× the in-memory"
        " ledger's (a rate per CPU-second within 20%)",
    ),
    "redis": (
        "stream_pubsub_p99_ratio",
        1.5,
        "p99 with a stream source at most 1.5× that with pub/sub",
    ),
}
CPU_COLUMNS = [
    ("server_cpu_share", "server CPU", "{:.0%}", ""),
    ("server_core_busy", "server core busy", "{:.0%}", ""),
    ("loadgen_cpu_share", "loadgen CPU", "{:.0%}", ""),
]
# Correctness counters: summed over repetitions, all must be zero.
FAULTS = (
    "lost",
    "out_of_order",
    "incomplete_clients",
    "failed",
    "id_faults",
    "resume_faults",
)
NANOSTREAM = "nanostream"


def correctness_problems(run: dict[str, Any]) -> list[str]:
    """What went wrong in one run, as short phrases (empty when all is well)."""
    if run["error"]:
        return [run["error"].splitlines()[0]]
    if run.get("skipped"):
        return []
    m = run["metrics"]
    problems = [f"{k}={m[k]}" for k in FAULTS if m.get(k)]
    if m.get("timed_out"):
        problems.append("timed out")
    if "server_exit" in m and m["server_exit"] != 0:
        problems.append(f"server exit status {m['server_exit']} after end of input")
    if m.get("auth_ok") is False:
        problems.append(f"auth checks {m.get('auth_checks')}")
    if m.get("fault_examples"):
        problems.append("e.g. " + str(m["fault_examples"][0]))
    return problems


def _stats(values: list[float]) -> dict[str, float | int]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarize(runs: list[dict[str, Any]], kinds: dict[str, str]) -> dict[str, Any]:
    """Medians and spreads per scenario and server, with faults and bottlenecks."""
    summary: dict[str, Any] = {}
    for run in runs:
        cell = summary.setdefault(run["scenario"], {}).setdefault(
            run["server"], {"runs": [], "problems": [], "skipped": []}
        )
        cell["runs"].append(run)
        cell["problems"] += correctness_problems(run)
        found = run["metrics"]
        for why in (
            run.get("skipped"),
            found.get("stream_skipped"),
            found.get("redis_skipped"),
        ):
            if why and why not in cell["skipped"]:
                cell["skipped"].append(why)
    for scenario, servers in summary.items():
        kind = kinds[scenario]
        for cell in servers.values():
            good = [
                r["metrics"]
                for r in cell.pop("runs")
                if not r["error"] and not r.get("skipped")
            ]
            metrics = [c[0] for c in COLUMNS[kind] + CPU_COLUMNS] + [
                "loadgen_core_busy"
            ]
            cell["metrics"] = {
                name: _stats([m[name] for m in good if m.get(name) is not None])
                for name in metrics
                if any(m.get(name) is not None for m in good)
            }
            cell["faults"] = {k: sum(m.get(k) or 0 for m in good) for k in FAULTS}
            cell["bottleneck"] = dict(Counter(m.get("bottleneck") for m in good))
            cell["ok"] = not cell["problems"]
            target = TARGETS.get(kind)
            median = (
                cell["metrics"].get(target[0], {}).get("median") if target else None
            )
            if target and median is not None:
                cell["target"] = {
                    "metric": target[0],
                    "bound": target[1],
                    "met": median <= target[1],
                }
    return summary


def verdict(mine: dict[str, Any], theirs: dict[str, Any], better: str) -> str:
    """``ahead``, ``behind``, ``tie`` (the min–max ranges overlap: the
    difference is within the noise) or ``one run`` (no spread is known)."""
    if mine["n"] < 2 or theirs["n"] < 2:
        return "one run"
    if mine["min"] <= theirs["max"] and theirs["min"] <= mine["max"]:
        return "tie"
    higher = mine["min"] > theirs["max"]
    return "ahead" if higher == (better == "higher") else "behind"


def ratios(summary: dict[str, Any], kinds: dict[str, str]) -> dict[str, Any]:
    """nanostream's median divided by each peer's, per headline metric, with
    the verdict of their ranges."""
    out: dict[str, Any] = {}
    for scenario, servers in summary.items():
        ours = servers.get(NANOSTREAM)
        if not ours:
            continue
        for metric, _, _, better in COLUMNS[kinds[scenario]]:
            if not better:
                continue
            mine = ours["metrics"].get(metric)
            row, verdicts = {}, {}
            for peer, cell in servers.items():
                theirs = cell["metrics"].get(metric)
                if peer != NANOSTREAM and mine and theirs and theirs["median"]:
                    row[peer] = round(mine["median"] / theirs["median"], 3)
                    verdicts[peer] = verdict(mine, theirs, better)
            if row:
                out.setdefault(scenario, {})[metric] = {
                    "better": better,
                    "ratio": row,
                    "verdict": verdicts,
                }
    return out


def _cell(stats: dict[str, Any] | None, fmt: str) -> str:
    if not stats:
        return "–"
    text = fmt.format(stats["median"])
    if stats["n"] > 1 and stats["min"] != stats["max"]:
        text += f" ({fmt.format(stats['min'])}–{fmt.format(stats['max'])})"
    return text


def markdown(data: dict[str, Any]) -> str:
    """The human-readable report."""
    machine = data["machine"]
    config = data["config"]
    lines = [
        "# nanostream benchmark",
        "",
        f"{data['finished']} · {machine.get('cpu_model')}"
        f" · {machine.get('nproc')} cores · Python {machine.get('python')}"
        f" · Node {machine.get('node')}",
        "",
        f"Medians of {config['reps']} interleaved repetitions, (min–max) beside them."
        f" Load generator client: {config['client']}. Server pinned to core"
        f" {config['server_core']}, load generator to core {config['loadgen_core']}.",
        "",
    ]
    if data.get("source"):
        lines += [provenance.summary_line(data["source"]), ""]
    summary, kinds = data["summary"], data["kinds"]
    only = set(data.get("nanostream_only", ()))
    for scenario, servers in summary.items():
        kind = kinds[scenario]
        cols = COLUMNS[kind] + CPU_COLUMNS
        lines += [f"## {scenario}: {data['descriptions'][scenario]}", ""]
        if scenario in only:
            lines += [
                "nanostream only: the peers have no line ids, resume, Redis source,"
                " ledger choice or log level.",
                "",
            ]
        head = ["server", *(c[1] for c in cols), "bottleneck", "correct"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for server, cell in servers.items():
            row = [server]
            row += [_cell(cell["metrics"].get(c[0]), c[2]) for c in cols]
            row.append(
                ", ".join(f"{k} ×{n}" for k, n in cell["bottleneck"].items()) or "–"
            )
            row.append(
                "yes" if cell["ok"] else "NO: " + "; ".join(cell["problems"][:3])
            )
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        for server, cell in servers.items():
            for why in cell.get("skipped", []):
                lines += [f"{server}: skipped: {why}", ""]
            target = cell.get("target")
            if target:
                stated = TARGETS[kind][2]
                verdict = "met" if target["met"] else "NOT met"
                lines += [f"Target ({stated}): {verdict} by the median.", ""]
    if data["ratios"]:
        peers = sorted(
            {p for s in data["ratios"].values() for m in s.values() for p in m["ratio"]}
        )
        lines += [
            "## nanostream ÷ peer (medians)",
            "",
            "Above 1 is better for nanostream where higher is better, and worse"
            " where lower is better. *tie*: the two servers' min–max ranges over"
            " the repetitions overlap, so the difference is within the noise"
            " whatever the medians say; *ahead* and *behind* are said only when"
            " they do not overlap (*one run*: a single repetition, no spread).",
            "",
            "| scenario | metric | better | " + " | ".join(peers) + " |",
            "|" + "---|" * (3 + len(peers)),
        ]
        for scenario, metrics in data["ratios"].items():
            for metric, entry in metrics.items():
                vals = [
                    f"{entry['ratio'][p]:.2f} {entry['verdict'][p]}"
                    if p in entry["ratio"]
                    else "–"
                    for p in peers
                ]
                lines.append(
                    f"| {scenario} | {metric} | {entry['better']} | "
                    + " | ".join(vals)
                    + " |"
                )
        lines.append("")
    busy = [r["background_busy"] for r in data["runs"] if r.get("background_busy")]
    if busy:
        lines += [
            "Machine load just before each run, from other processes: median"
            f" {statistics.median(busy):.0%}, max {max(busy):.0%}.",
            "",
        ]
    noisy = [r for r in data["runs"] if (r.get("background_busy") or 0) > 0.15]
    if noisy:
        lines += [
            f"Warning: {len(noisy)} of {len(data['runs'])} runs started while other"
            " processes kept the machine busy (background_busy > 15% in the JSON);"
            " their figures are less trustworthy.",
            "",
        ]
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("packages", {}).items())
    lines += [f"Versions: {versions}.", ""]
    return "\n".join(lines)


def write(data: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write ``stem``.json and ``stem``.md; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    md_path.write_text(markdown(data))
    return json_path, md_path
