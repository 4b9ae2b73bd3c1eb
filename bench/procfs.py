"""Read a process's CPU time and resident memory, and the cores' load.

Reading the kernel's counters directly needs no psutil in whatever venv
the runner uses, and every figure covers all threads of a process (Node's
libuv pool included).
"""

from __future__ import annotations

import os
import time

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Return the CPU seconds (user + system, all threads) process ``pid`` used.

    Read from the process's CPU-time clock, the one clock_getcpuclockid(3)
    returns, which counts in nanoseconds; /proc/PID/stat's utime + stime
    count the same time in 10 ms ticks, too coarse for a fast server whose
    whole measurement window takes a tenth of a second of CPU. The ticks
    are the fallback where that clock cannot be read.
    """
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # CPUCLOCK_SCHED of pid
    except OSError:
        return stat_cpu_seconds(pid)


def stat_cpu_seconds(pid: int) -> float:
    """Return utime + stime of process ``pid`` from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name may contain spaces and parentheses: split after it.
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS


def rss_kib(pid: int) -> int:
    """Return the resident set size of process ``pid`` in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def self_cpu_seconds() -> float:
    """Return this process's own CPU seconds, all threads included.

    ``time.process_time`` reads CLOCK_PROCESS_CPUTIME_ID, precise to the
    nanosecond, where /proc's counters move in 10 ms ticks.
    """
    return time.process_time()


def core_jiffies() -> dict[int, tuple[int, int]]:
    """Return ``{cpu: (busy, total)}`` clock ticks from /proc/stat.

    Busy counts user, nice, system, irq and softirq time. The kernel's
    loopback TCP work runs partly in softirq context and is not always
    charged to the process that caused it, so a pinned core's busy time
    shows load that the process's own CPU time misses. Steal time (the
    hypervisor running someone else) counts in the total, not as busy.
    """
    cores: dict[int, tuple[int, int]] = {}
    with open("/proc/stat", "rb") as f:
        for line in f:
            if not line.startswith(b"cpu") or line.startswith(b"cpu "):
                continue
            name, *values = line.split()
            v = [int(x) for x in values[:8]]
            busy = v[0] + v[1] + v[2] + v[5] + v[6]
            cores[int(name[3:])] = (busy, busy + v[3] + v[4] + v[7])
    return cores


def busy_share(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], core: int
) -> float | None:
    """The fraction of ``core``'s time that was busy between two readings."""
    if core not in before or core not in after:
        return None
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return round(busy / total, 3) if total > 0 else None
