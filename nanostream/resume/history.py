"""A node's latest lines, bounded by count and by the lines' own bytes.

Lines are held by reference: the history shares the bytes the source read
and the broadcaster framed, it never copies a line.  Ids are kept as two
columns of machine integers (``array('Q')``: the ``<ms>`` and ``<seq>``
parts), not as an object per line: small objects made while a wave of
clients connects would each pin an allocator arena of that wave long
after its clients left.  The columns and the list of lines share a moving
head, so appending and evicting are O(1) amortised and finding an id is a
binary search.

Every entry has an absolute position that never changes (the number of
entries appended before it), so a replay can keep its place while older
entries are evicted: a position below :attr:`History.first` is gone.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence

from nanostream.resume.ids import MAX_PART

DEFAULT_HISTORY_LINES = 10_000
DEFAULT_HISTORY_BYTES = 16 * 1024 * 1024

#: Evicted slots are reclaimed once this many have piled up at the head.
_COMPACT_AT = 1024


class History:
    """The ring of held lines; ``max_lines=0`` keeps none."""

    def __init__(
        self,
        max_lines: int = DEFAULT_HISTORY_LINES,
        max_bytes: int = DEFAULT_HISTORY_BYTES,
    ) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._ms = array("Q")
        self._seq = array("Q")
        self._lines: list[bytes] = []
        self._head = 0
        #: Absolute position of the entry at the head.
        self.first = 0
        #: The held lines' own bytes.
        self.bytes = 0
        #: Positions before which the source lost lines, with the id of the
        #: last line it had (None when it had none yet).
        self.gaps: dict[int, int | None] = {}

    def __len__(self) -> int:
        return len(self._lines) - self._head

    @property
    def end(self) -> int:
        """The absolute position the next appended line will get."""
        return self.first + len(self)

    def oldest(self) -> int | None:
        """The oldest held id, None when empty."""
        return self._key(self._head) if len(self) else None

    def newest(self) -> int | None:
        return self._key(len(self._lines) - 1) if len(self) else None

    def _key(self, index: int) -> int:
        return self._ms[index] << 64 | self._seq[index]

    def extend(self, keys: Iterable[int], lines: Sequence[bytes]) -> None:
        """Hold a batch (ids increasing), then evict the oldest past the bounds."""
        if not self.max_lines:
            return
        self._ms.extend([k >> 64 for k in keys])
        self._seq.extend([k & MAX_PART for k in keys])
        self._lines.extend(lines)
        self.bytes += sum(map(len, lines))
        self._evict()

    def mark_gap(self, last: int | None) -> None:
        """The source lost lines before the next one to be appended."""
        if self.max_lines:
            self.gaps[self.end] = last

    def _evict(self) -> None:
        excess = len(self) - self.max_lines
        head = self._head
        lines = self._lines
        size = self.bytes
        while excess > 0 or size > self.max_bytes:
            size -= len(lines[head])
            head += 1
            excess -= 1
        if head == self._head:
            return
        self.first += head - self._head
        self.bytes = size
        if self.gaps:
            first = self.first
            self.gaps = {p: last for p, last in self.gaps.items() if p >= first}
        if head >= _COMPACT_AT and head * 2 >= len(lines):
            del self._ms[:head]
            del self._seq[:head]
            del lines[:head]
            head = 0
        self._head = head

    def _index_after(self, k: int, inclusive: bool) -> int:
        """The index of the first held id above ``k`` (or at it, ``inclusive``)."""
        ms, seq = k >> 64, k & MAX_PART
        lo = bisect_left(self._ms, ms, self._head)
        hi = bisect_right(self._ms, ms, lo)
        if inclusive:
            return bisect_left(self._seq, seq, lo, hi)
        return bisect_right(self._seq, seq, lo, hi)

    def find(self, k: int) -> int | None:
        """The absolute position of id ``k``, None when it is not held."""
        i = self._index_after(k, inclusive=True)
        if i < len(self._lines) and self._key(i) == k:
            return self.first + i - self._head
        return None

    def after(self, k: int) -> int:
        """The absolute position of the first held id greater than ``k``."""
        return self.first + self._index_after(k, inclusive=False) - self._head

    def key_at(self, position: int) -> int:
        return self._key(self._head + position - self.first)

    def entries(
        self, position: int, max_bytes: int, stop_at: int | None = None
    ) -> tuple[list[int], list[bytes]]:
        """Held entries from ``position`` on: at least one, about ``max_bytes``,
        none at or after the absolute position ``stop_at``."""
        start = self._head + position - self.first
        lines = self._lines
        stop = start
        size = 0
        end = len(lines)
        if stop_at is not None:
            end = min(end, self._head + stop_at - self.first)
        while stop < end and (size < max_bytes or stop == start):
            size += len(lines[stop])
            stop += 1
        keys = [self._key(i) for i in range(start, stop)]
        return keys, lines[start:stop]
