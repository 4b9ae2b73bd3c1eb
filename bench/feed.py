"""The lines written to a server's stdin, and how clients read them back.

Each line is about 700 bytes of JSON shaped like a Nano block confirmation.
It starts with a fixed prefix, ``{"seq":N,"sent_ns":T,``, so that a client
can recover the sequence number and send time by slicing the first bytes
instead of parsing the whole JSON document: the load generator must stay
cheaper per message than the servers it measures. ``sent_ns`` is
``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by all processes on the
machine), which is what makes cross-process latency meaningful.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

SEQ_AT = len(b'{"seq":')
SENT_KEY = b',"sent_ns":'
HEAD_BYTES = 64

_ACCOUNT = "nano_3t6k35gi95xu6tergt6p69ck76ogmitsa8mnijtpxm9fkcm736xtoncuohr3"
_REP = "nano_1natrium1o3z5519ifou7xii8crpxpk8y65qmkih8e8bpsjri651oza8imdd"
_HASH = "82D68AE43E3E04CBBF9ED150999A28D7BC6CDDC6D3A8A5B2D3A4D6F1C0FFEE00"
_SIG = (
    "5B11B17DB9C8FE0CC58CAC6A6EECEF9CB122DA8A81C6D3DB1B5EE3AB065AA8F8"
    "CB1D6765C8EB91B58530C5FF5987AD95E6D34BB57F44257E20795EE412E61600"
)
_BODY = (
    '"topic":"confirmation","message":{"hash":"' + _HASH + '",'
    '"block":{"type":"state",'
    '"account":"' + _ACCOUNT + '","previous":"' + _HASH + '",'
    '"representative":"' + _REP + '",'
    '"balance":"5606157000000000000000000000000000000",'
    '"link":"' + _HASH + '",'
    '"signature":"' + _SIG + '","work":"000000000000000f","subtype":"send"}}}\n'
).encode()


def make_line(seq: int, sent_ns: int) -> bytes:
    """Return line number ``seq`` stamped with ``sent_ns``, newline included."""
    return b'{"seq":%d,"sent_ns":%d,%b' % (seq, sent_ns, _BODY)


def parse_head(head: bytes) -> tuple[int, int]:
    """Return ``(seq, sent_ns)`` from the first bytes of a received line."""
    comma = head.index(b",", SEQ_AT)
    start = comma + len(SENT_KEY)
    return int(head[SEQ_AT:comma]), int(head[start : head.index(b",", start)])


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a blocking file descriptor.

    Unlike a buffered file object, this holds no lock while blocked, so
    another thread can still close the pipe or kill the server.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_lines_file(path: str, count: int) -> None:
    """Write lines 0..count-1 to ``path``, for a run whose lines are known ahead."""
    now = time.monotonic_ns()
    with open(path, "wb") as f:
        for start in range(0, count, 1024):
            f.write(
                b"".join(
                    make_line(i, now) for i in range(start, min(count, start + 1024))
                )
            )


def write_chunks(
    fd: int, data: bytes, chunk: int = 2**16, stop: Callable[[], bool] = bool
) -> int:
    """Write ``data`` as fast as the pipe takes it; return the lines written."""
    for start in range(0, len(data), chunk):
        if stop():
            return data.count(b"\n", 0, start)
        write_all(fd, data[start : start + chunk])
    return data.count(b"\n")


def write_paced(
    fd: int, count: int, rate: float, stop: Callable[[], bool] = bool
) -> int:
    """Write ``count`` lines at ``rate`` lines/s on a fixed schedule.

    The schedule is absolute (line i is due at start + i/rate), so a late
    line does not push every later line back.
    """
    clock = time.monotonic_ns
    start = clock()
    interval = 1e9 / rate
    for seq in range(count):
        if stop():
            return seq
        delay = (start + seq * interval - clock()) / 1e9
        if delay > 0:
            time.sleep(delay)
        write_all(fd, make_line(seq, clock()))
    return count


def write_paced_data(
    fd: int, data: bytes, rate: float, stop: Callable[[], bool] = bool
) -> int:
    """Write the lines of ``data`` at ``rate`` lines/s on a fixed schedule.

    For runs whose lines are known ahead (clients check exact bytes) and
    whose figure is CPU per delivery, not latency.
    """
    clock = time.monotonic_ns
    start = clock()
    interval = 1e9 / rate
    lines = data.splitlines(keepends=True)
    for seq, line in enumerate(lines):
        if stop():
            return seq
        delay = (start + seq * interval - clock()) / 1e9
        if delay > 0:
            time.sleep(delay)
        write_all(fd, line)
    return len(lines)
