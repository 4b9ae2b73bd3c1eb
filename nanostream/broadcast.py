"""Fans lines out to every open client: the hot path.

Each batch of lines that arrived together is framed once per mode, joined
into one buffer, and written once per client.  Nothing waits to gather a
batch: a batch is exactly what one read from the source produced.

Clients come in two modes.  *Raw* clients get each line as it is; clients
of the ``nanostream.v1`` subprotocol get ``<id> <line>`` and text notices
that start with ``!`` (docs/resume.rst).  Every line gets its id here, as
it is read, and is held in the :class:`~nanostream.resume.history.History`
for clients that resume; a resuming client is fed by a
:class:`~nanostream.resume.replay.Replay` until it joins the live set.

A client whose sink holds more than ``max_buffer_bytes`` unsent is a slow
consumer and is dropped, so it never stalls the source, the other clients,
or grows our memory beyond the bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, cast

from autobahn.websocket.protocol import PreparedMessage
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nanostream.resume.history import History
from nanostream.resume.ids import format_key, key, parse_id
from nanostream.sinks import ClientSink
from nanostream.sources.ahead import ReadAhead

if TYPE_CHECKING:
    from nanostream.resume.archive import Archive
    from nanostream.resume.replay import Replay
    from nanostream.resume.turns import FramedChunks, Turns

DEFAULT_MAX_BUFFER_BYTES = 4 * 1024 * 1024

_log = Logger()


def is_text(line: bytes) -> bool:
    """A line goes out as a text message when it is valid UTF-8."""
    if line.isascii():
        return True
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def frame(line: bytes) -> bytes:
    """The complete, unmasked WebSocket frame carrying one line."""
    return PreparedMessage(line, not is_text(line), False, True).payloadHybi


def frame_with_ids(keys: Iterable[int], lines: Iterable[bytes]) -> bytes:
    """The ``nanostream.v1`` frames of a batch: ``<id> <line>`` each.

    The id is ASCII, so a message is text exactly when its line is.
    """
    return b"".join(
        [
            PreparedMessage(
                format_key(k) + b" " + line, not is_text(line), False, True
            ).payloadHybi
            for k, line in zip(keys, lines, strict=True)
        ]
    )


def notice(*words: bytes) -> bytes:
    """A ``nanostream.v1`` notice frame: ``!gap A B``, ``!live``."""
    return frame(b" ".join(words))


def gap_notice(last: int | None, next_key: int) -> bytes:
    """``!gap <last> <next>``: the source lost the lines between the two."""
    return notice(
        b"!gap", b"-" if last is None else format_key(last), format_key(next_key)
    )


class Broadcaster:
    """The registry of open clients and the per-batch fan-out.

    Its counters are plain integers, bumped once per batch (never per
    client) and read by :mod:`nanostream.ops.metrics` only when scraped.
    """

    def __init__(
        self,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        clock: IReactorTime | None = None,
        history: History | None = None,
        read_ahead: ReadAhead | None = None,
    ) -> None:
        """
        :param history: where read lines are held for resuming clients;
            by default the standard bounds.
        :param read_ahead: the source's early reads; by default the
            standard spacing.
        """
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.max_buffer_bytes = max_buffer_bytes
        self.history = History() if history is None else history
        #: The source's archive, for resumes older than the history.
        self.archive: Archive | None = None
        self.clock = clock
        # Live clients in the order they joined (dicts keep it): a batch
        # reaches those connected longest first, so a crowd of newcomers
        # (a reconnect storm) does not delay the clients already here.
        self._raw: dict[ClientSink, None] = {}
        self._v1: dict[ClientSink, None] = {}
        self._replays: dict[ClientSink, Replay] = {}
        # Replays waiting for the source to read further, by client.
        self._waiting: dict[ClientSink, Callable[[], None]] = {}
        self._turns: Turns | None = None
        #: The source's early reads, taken between the steps of replays and
        #: of the handshake pacer, so a storm does not hold lines back.
        self.read_ahead = ReadAhead() if read_ahead is None else read_ahead
        self._framed: FramedChunks
        self._seconds = clock.seconds
        # A source without ids of its own numbers lines <start ms>-<n>.
        self._base = key(int(clock.seconds() * 1000), 0)
        self._seq = 0
        #: The id of the last line read, None before the first.
        self.last_key: int | None = None
        # v1 clients owed "!gap" before the next line, and its <last>.
        self._gap_owed: set[ClientSink] | None = None
        self._gap_last: int | None = None
        self.lines_received = 0
        self.messages_delivered = 0
        self.bytes_delivered = 0
        self.slow_consumers_dropped = 0
        self.source_gaps = 0
        #: Resumes by outcome, and lines written by replays.
        self.resumes_exact = 0
        self.resumes_gap = 0
        self.lines_replayed = 0
        #: When the last line arrived; until then, when we were built.
        self.last_line_at: float = clock.seconds()

    def __len__(self) -> int:
        return len(self._raw) + len(self._v1) + len(self._replays)

    @property
    def replaying(self) -> int:
        """Clients still being caught up by a replay."""
        return len(self._replays)

    def add(self, sink: ClientSink, *, with_ids: bool = False) -> None:
        """Join the live feed: raw, or ``nanostream.v1`` with ``with_ids``."""
        (self._v1 if with_ids else self._raw)[sink] = None

    def resume(self, sink: ClientSink, since: bytes) -> None:
        """Replay what ``sink``'s client missed after ``since``, then go live."""
        from nanostream.resume.replay import Replay
        from nanostream.resume.turns import FramedChunks, Turns

        if self._turns is None:
            self._turns = Turns(self.clock, between=self.read_ahead)
            self._framed = FramedChunks()
        replay = Replay(self, sink, since, self._turns, self._framed)
        self._replays[sink] = replay
        replay.start()

    def remove(self, sink: ClientSink) -> None:
        self._raw.pop(sink, None)
        self._v1.pop(sink, None)
        self._waiting.pop(sink, None)
        replay = self._replays.pop(sink, None)
        if replay is not None:
            replay.cancel()

    def wake_on_lines(self, sink: ClientSink, wake: Callable[[], None]) -> None:
        """Call ``wake`` once the next batch is held in the history."""
        self._waiting[sink] = wake

    def went_live(self, sink: ClientSink, owes_gap: bool) -> None:
        """A replay caught up: ``sink`` joins the v1 live set in this turn."""
        del self._replays[sink]
        self._v1[sink] = None
        if owes_gap:
            self._owe_gap({sink})

    def close_all(self) -> None:
        """Ask every client to go away (at shutdown) and forget them."""
        sinks = [*self._raw, *self._v1, *self._replays]
        self._raw.clear()
        self._v1.clear()
        for replay in self._replays.values():
            replay.cancel()
        self._replays.clear()
        self._waiting.clear()
        for sink in sinks:
            try:
                sink.client.goAway()
            except Exception:
                _log.failure("could not close a client")

    def drop(self, sink: ClientSink) -> None:
        """Drop a client that cannot keep up."""
        self.slow_consumers_dropped += 1
        self.remove(sink)
        sink.client.dropSlowConsumer(sink.unsent)

    def source_gap(self) -> None:
        """The source lost lines: tell v1 clients, close raw ones.

        v1 clients get ``!gap <last> <next>`` just before the next line;
        raw clients cannot be told in-band, so they are closed now.
        """
        self.source_gaps += 1
        self.history.mark_gap(self.last_key)
        if self._gap_owed is None:
            self._gap_last = self.last_key
        self._owe_gap(set(self._v1))
        raw = list(self._raw)
        self._raw.clear()
        _log.warn(
            "the source lost lines after {last}; closing {raw} raw clients",
            last=(
                b"-" if self.last_key is None else format_key(self.last_key)
            ).decode(),
            raw=len(raw),
        )
        for sink in raw:
            try:
                sink.client.closeForGap()
            except Exception:
                _log.failure("could not close a client")

    def _owe_gap(self, sinks: set[ClientSink]) -> None:
        if self._gap_owed is None:
            self._gap_owed = sinks
        else:
            self._gap_owed |= sinks

    def broadcast(
        self, lines: Sequence[bytes], ids: Sequence[bytes] | None = None
    ) -> None:
        """Deliver a batch of lines, in order, to every live client.

        :param ids: the lines' ids when the source has its own (a Redis
            stream's entry ids); else they are numbered here.
        """
        count = len(lines)
        if not count:
            return
        self.lines_received += count
        self.last_line_at = self._seconds()
        keys: Sequence[int]
        if ids is None:
            first = self._base + self._seq + 1
            self._seq += count
            keys = range(first, first + count)
        else:
            keys = [parse_id(i) for i in ids]
        self.history.extend(keys, lines)
        self.last_key = keys[-1]
        if self._waiting:
            waiting, self._waiting = self._waiting, {}
            for wake in waiting.values():
                wake()
        if self._raw:
            self._fan_out(self._raw, b"".join([frame(line) for line in lines]), count)
        owed = self._gap_owed
        if owed is not None:
            self._gap_owed = None
            self._send_gap(owed, keys[0])
        if self._v1:
            self._fan_out(self._v1, frame_with_ids(keys, lines), count)

    def _send_gap(self, owed: set[ClientSink], next_key: int) -> None:
        data = gap_notice(self._gap_last, next_key)
        for sink in owed & self._v1.keys():
            sink.send(data)

    def _fan_out(self, sinks: dict[ClientSink, None], data: bytes, count: int) -> None:
        clients = len(sinks)
        self.messages_delivered += count * clients
        self.bytes_delivered += len(data) * clients
        limit = self.max_buffer_bytes
        slow = None
        for sink in sinks:
            if sink.send(data) > limit:
                if slow is None:
                    slow = []
                slow.append(sink)
        if slow is not None:
            for sink in slow:
                self.drop(sink)
