"""Reading one Redis stream with redis-py, in blocking calls made off the reactor.

redis-py is the client for streams (see docs/decisions.rst, "Redis client
for streams"): it is kept up to date and speaks Redis Cluster
(:mod:`nanostream.redis.cluster` picks the client when it first connects;
a stream's commands all name its one key, so on a Cluster they all go to
the master of its slot, the script included).  Its calls
block, so the stream source runs each of them in a thread of its own and
gets the result back in the reactor thread; nothing here touches Twisted.

Every read is taken together with the stream's counters in one script,
which Redis runs at one instant, so that what was read and what the stream
had added and dropped describe the same moment (see
:mod:`nanostream.sources.redis_stream` for the rule; :class:`Accounting`
applies it).  The script is sent in one pipeline behind the blocking
``XREAD`` that waits for the next entry: Redis runs it as soon as that read
wakes, and a new entry costs one round trip, not two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nanostream.redis.cluster import AnyClient, disconnect
from nanostream.redis.url import RedisTarget

#: Entries asked for per read: one read, one batch for the broadcaster.
COUNT = 1000
#: How long one blocking XREAD waits for a new entry, in milliseconds; also
#: bounds how long a stopping source waits for its reader thread.
BLOCK_MS = 1000
#: A reply slower than this (beyond the blocking wait) means Redis is gone.
REPLY_TIMEOUT = 10.0

Entry = tuple[bytes, dict[bytes, bytes]]

#: The stream's counters and the entries after a position, at one instant
#: (a script runs atomically).  A missing stream is the error of ``XINFO``.
TAKE = """
local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
local entries = redis.call('XREAD', 'COUNT', ARGV[2], 'STREAMS', KEYS[1], ARGV[1])
return {info, entries}
"""


@dataclass(frozen=True)
class Snapshot:
    """A stream's counters at one instant (Redis 7 ``XINFO STREAM``).

    A missing stream is ``exists=False`` with every count 0.
    """

    exists: bool
    length: int = 0
    entries_added: int | None = 0
    last_generated: bytes = b"0-0"
    max_deleted: bytes = b"0-0"
    first: bytes | None = None

    @classmethod
    def of(cls, info: Any) -> Snapshot:
        """From redis-py's ``xinfo_stream`` reply, or the error for a missing key."""
        if isinstance(info, Exception):
            if "no such key" in str(info):
                return cls(exists=False)
            raise info
        first = info.get("first-entry")
        return cls(
            exists=True,
            length=int(info["length"]),
            # Redis 6 has no counters: None says the count is unknown.
            entries_added=(
                int(info["entries-added"]) if "entries-added" in info else None
            ),
            last_generated=info["last-generated-id"],
            max_deleted=info.get("max-deleted-entry-id", b"0-0"),
            first=first[0] if first else None,
        )


@dataclass(frozen=True)
class Read:
    """Entries after a position, with the stream's counters at the same instant."""

    snapshot: Snapshot
    entries: list[Entry]


def parse_id(entry_id: bytes) -> tuple[int, int]:
    """``b"<ms>-<seq>"`` as the pair of integers it orders by."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or b"0")


class Accounting:
    """Tells from each read's counters whether unread entries were dropped."""

    def __init__(self) -> None:
        self.position = b"0-0"
        self.accounted = 0

    def start(self, snapshot: Snapshot) -> None:
        """Read only what is added from now on."""
        self.position = snapshot.last_generated if snapshot.exists else b"0-0"
        self.accounted = snapshot.entries_added or 0

    def observe(self, read: Read, count: int) -> bool:
        """Account for one read; whether it shows entries dropped unread."""
        snapshot, entries = read.snapshot, read.entries
        gap = False
        if snapshot.entries_added is None:
            pass
        elif not snapshot.exists:
            gap = self.accounted > 0 or self.position != b"0-0"
            self.accounted = 0
        else:
            unread = self._unread(snapshot, len(entries), count)
            if unread is None:
                self.accounted += len(entries)
            else:
                dropped = snapshot.entries_added - self.accounted - unread
                recreated = parse_id(snapshot.last_generated) < parse_id(self.position)
                gap = dropped != 0 or recreated
                self.accounted = snapshot.entries_added - (unread - len(entries))
        if entries:
            self.position = entries[-1][0]
        return gap

    def _unread(self, snapshot: Snapshot, taken: int, count: int) -> int | None:
        """How many entries after the position the stream held, if known."""
        if taken < count:
            return taken
        first = snapshot.first
        if first is not None and parse_id(first) > parse_id(self.position):
            return snapshot.length
        return None


def make_client(target: RedisTarget, reply_timeout: float = REPLY_TIMEOUT) -> Any:
    """A client for ``target``, a single Redis or a Cluster (made on first use)."""
    return AnyClient(target, reply_timeout)


class StreamReader:
    """Blocking reads of one stream on one connection of its own."""

    def __init__(
        self,
        client: Any,
        key: bytes,
        count: int = COUNT,
        block_ms: int = BLOCK_MS,
    ) -> None:
        self.client = client
        self.key = key
        self.count = count
        self.block_ms = block_ms

    def snapshot(self) -> Snapshot:
        """The stream's counters now (also proves the connection works)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xinfo_stream(self.key)
        [info] = pipe.execute(raise_on_error=False)
        return Snapshot.of(info)

    def read(self, after: bytes) -> Read:
        """Entries after ``after``, waiting up to ``block_ms`` for the first.

        The blocking read only wakes us (at once if entries wait); what is
        returned is what the script behind it took, with its counters.
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.xread({self.key: after}, count=1, block=self.block_ms)
        # As a plain command: redis-py's Cluster pipelines refuse ``eval()``.
        pipe.execute_command("EVAL", TAKE, 1, self.key, after, self.count)
        woke, taken = pipe.execute(raise_on_error=False)
        for reply in (woke, taken):
            if isinstance(reply, Exception):
                raise reply
        info, reply = taken
        snapshot = Snapshot.of(_parsed_info(info))
        entries = reply[0][1] if reply else []
        return Read(snapshot, [_parsed_entry(entry) for entry in entries])

    def close(self) -> None:
        """Close the connection, from any thread: a blocked read fails at once."""
        disconnect(self.client)


def _parsed_info(info: Any) -> Any:
    """``XINFO STREAM`` as a dict, also when it comes back as RESP pairs
    (from a script, or a Cluster transaction: raw replies, unparsed)."""
    if not isinstance(info, list):
        return info
    return {
        (name.decode() if isinstance(name, bytes) else name): value
        for name, value in zip(info[::2], info[1::2], strict=True)
    }


def _parsed_entry(entry: Any) -> Entry:
    """One stream entry as ``(id, fields)``, from a parsed or a raw reply."""
    entry_id, fields = entry
    if isinstance(fields, list):
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    return entry_id, fields


def read_range(
    client: Any, key: bytes, since: bytes, count: int
) -> tuple[bool, bytes | None, list[Entry]]:
    """Whether ``since`` is held, the oldest id, and up to ``count`` entries after."""
    pipe = client.pipeline(transaction=True)
    pipe.xrange(key, "-", "+", count=1)
    pipe.xrange(key, since, "+", count=count + 1)
    oldest, reply = pipe.execute()
    entries = [_parsed_entry(entry) for entry in reply]
    held = bool(entries) and parse_id(entries[0][0]) == parse_id(since)
    if held:
        entries = entries[1:]
    return held, (oldest[0][0] if oldest else None), list(entries[:count])
