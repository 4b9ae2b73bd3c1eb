"""Sharing the reactor between replays, and their framed chunks between clients.

Replays take turns (:class:`Turns`): each gets at most one chunk per
reactor turn and all of them together at most :data:`TURN_BYTES` and
:data:`TURN_SECONDS`, so a storm of resumes never holds up the live feed
for long.  An aligned chunk
of the history is framed once (:class:`FramedChunks`) however many
replaying clients it is written to.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

#: Bytes all replays together may write in one reactor turn: about a
#: millisecond of sends on loopback, so a live line read in the next turn
#: waits no longer than that for them (docs/performance.rst).
TURN_BYTES = 256 * 1024

#: Time a turn's steps may take, whatever the bytes: on a slower core the
#: byte budget alone took 3-4 ms.
TURN_SECONDS = 0.001

#: What a step counts against the budget at least, however little it wrote:
#: a step that finds the client's socket full, or frames a chunk, costs
#: time too, and a thousand of them in one turn measured 10 ms.
STEP_BYTES = 4 * 1024

#: Framed chunks kept for replays that follow, in bytes.
FRAMED_CHUNK_BYTES = 4 * 1024 * 1024


class Turns:
    """Runs ready replays' next steps, in order, within a budget per turn.

    A step returns the bytes it wrote, counted as at least
    :data:`STEP_BYTES`; once a turn's steps have spent :data:`TURN_BYTES`
    or taken ``seconds``, the rest wait for the next turn.
    """

    def __init__(
        self,
        clock: IReactorTime,
        budget: int = TURN_BYTES,
        seconds: float = TURN_SECONDS,
        timer: Callable[[], float] | None = None,
        between: Callable[[], None] | None = None,
    ) -> None:
        """
        :param timer: what measures a turn's time; the clock's by default.
        :param between: called between two steps (the source's early
            read), so a live line need not wait for the whole turn.  Not
            before a turn's first step, which comes right after the
            reactor's own read: a replay woken for its first chunk sends it
            before a line read ahead can push that chunk out of a short
            history.
        """
        self._clock = clock
        self._between = between
        self._budget = budget
        self._seconds = seconds
        self._timer = clock.seconds if timer is None else timer
        self._ready: deque[Callable[[], int]] = deque()
        self._scheduled = False

    def soon(self, step: Callable[[], int]) -> None:
        self._ready.append(step)
        if not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self._run)

    def _run(self) -> None:
        self._scheduled = False
        ready = self._ready
        spent = 0
        timer = self._timer
        deadline = timer() + self._seconds
        between = self._between
        # Only the steps ready when the turn began: those they schedule wait.
        for _ in range(len(ready)):
            if spent >= self._budget or (spent and timer() >= deadline):
                break
            if spent and between is not None:
                between()
            spent += max(ready.popleft()(), STEP_BYTES)
        if ready and not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self._run)


class FramedChunks:
    """The framed bytes of aligned history chunks, shared by every replay.

    Bounded by :data:`FRAMED_CHUNK_BYTES`, oldest chunk out first; a chunk
    whose lines the history evicted is never asked for again and ages out.
    """

    def __init__(self, max_bytes: int = FRAMED_CHUNK_BYTES) -> None:
        self._max_bytes = max_bytes
        self._chunks: dict[int, tuple[int, bytes]] = {}
        self._bytes = 0

    def get(self, start: int, stop: int) -> bytes | None:
        held = self._chunks.get(start)
        if held is not None and held[0] == stop:
            return held[1]
        return None

    def put(self, start: int, stop: int, data: bytes) -> None:
        old = self._chunks.pop(start, None)
        if old is not None:
            self._bytes -= len(old[1])
        self._chunks[start] = (stop, data)
        self._bytes += len(data)
        while self._bytes > self._max_bytes:
            oldest = next(iter(self._chunks))
            self._bytes -= len(self._chunks.pop(oldest)[1])
