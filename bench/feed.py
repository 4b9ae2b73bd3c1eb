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

import time
from collections.abc import Callable
from typing import BinaryIO

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


def write_burst(
    sink: BinaryIO, count: int, batch: int = 128, stop: Callable[[], bool] = bool
) -> int:
    """Write ``count`` lines as fast as the pipe takes them; return lines written.

    Lines are built in batches just before they are written, so that the
    send time they carry is close to the real write time.
    """
    written = 0
    clock = time.monotonic_ns
    while written < count and not stop():
        n = min(batch, count - written)
        now = clock()
        sink.write(b"".join(make_line(written + i, now) for i in range(n)))
        sink.flush()
        written += n
    return written


def write_paced(
    sink: BinaryIO, count: int, rate: float, stop: Callable[[], bool] = bool
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
        sink.write(make_line(seq, clock()))
        sink.flush()
    return count
