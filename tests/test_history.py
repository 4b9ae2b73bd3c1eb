"""The history ring: bounds, eviction, lookup by id and gap marks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanostream.resume.history import History


def filled(history: History, count: int, size: int = 1) -> History:
    """``count`` lines of ``size`` bytes with ids 10, 20, 30, ..."""
    for n in range(1, count + 1):
        history.extend([n * 10], [b"x" * size])
    return history


class BoundsTests(SynchronousTestCase):
    def test_line_bound(self) -> None:
        """Past max_lines the oldest lines go first."""
        history = filled(History(max_lines=3, max_bytes=1000), 5)
        self.assertEqual(len(history), 3)
        self.assertEqual((history.oldest(), history.newest()), (30, 50))
        self.assertEqual(history.first, 2)
        self.assertEqual(history.end, 5)

    def test_byte_bound(self) -> None:
        """Past max_bytes (the lines' own bytes) the oldest lines go first."""
        history = filled(History(max_lines=100, max_bytes=25), 5, size=10)
        self.assertEqual(len(history), 2)
        self.assertEqual(history.bytes, 20)
        self.assertEqual(history.oldest(), 40)

    def test_zero_keeps_nothing(self) -> None:
        """--history-lines 0 holds no line."""
        history = filled(History(max_lines=0), 3)
        self.assertEqual(len(history), 0)
        self.assertIsNone(history.oldest())
        self.assertIsNone(history.find(10))

    def test_shares_the_line_objects(self) -> None:
        """The history holds the very bytes objects it was given, not copies."""
        line = b"shared line"
        history = History()
        history.extend([1], [line])
        [held] = history.entries(0, 100)[1]
        self.assertIs(held, line)

    def test_compaction_keeps_positions(self) -> None:
        """Reclaiming evicted slots changes no entry's position or id."""
        history = filled(History(max_lines=10, max_bytes=10**6), 5000)
        self.assertEqual(history.first, 4990)
        self.assertEqual(history.find(49910), 4990)
        self.assertEqual(history.key_at(4999), 50000)


class LookupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.history = filled(History(max_lines=4, max_bytes=1000), 6)

    def test_find_held(self) -> None:
        """A held id is found at its absolute position."""
        self.assertEqual(self.history.find(30), 2)
        self.assertEqual(self.history.find(60), 5)

    def test_find_not_held(self) -> None:
        """Evicted, never-seen and future ids are not held."""
        for k in (10, 20, 35, 70):
            with self.subTest(k=k):
                self.assertIsNone(self.history.find(k))

    def test_after(self) -> None:
        """after() is the position of the first id greater than the one given."""
        self.assertEqual(self.history.after(5), 2)
        self.assertEqual(self.history.after(30), 3)
        self.assertEqual(self.history.after(35), 3)
        self.assertEqual(self.history.after(60), 6)

    def test_entries_chunked(self) -> None:
        """entries() gives at least one line and stops near the byte budget."""
        history = filled(History(max_lines=10, max_bytes=1000), 6, size=10)
        keys, lines = history.entries(1, 25)
        self.assertEqual(keys, [20, 30, 40])
        keys, _ = history.entries(1, 1)
        self.assertEqual(keys, [20])
        keys, _ = history.entries(1, 1000, stop_at=3)
        self.assertEqual(keys, [20, 30])

    def test_gap_marks_follow_eviction(self) -> None:
        """A gap mark stays with its position and goes once that is evicted."""
        history = History(max_lines=2, max_bytes=1000)
        history.extend([1], [b"a"])
        history.mark_gap(1)
        history.extend([5], [b"b"])
        self.assertEqual(history.gaps, {1: 1})
        history.extend([6, 7], [b"c", b"d"])
        self.assertEqual(history.gaps, {})


class PropertyTests(SynchronousTestCase):
    @given(
        st.lists(st.integers(min_value=0, max_value=50), max_size=200),
        st.integers(min_value=0, max_value=30),
        st.integers(min_value=0, max_value=400),
    )
    def test_holds_the_latest_within_bounds(
        self, sizes: list[int], max_lines: int, max_bytes: int
    ) -> None:
        """The history is always the longest suffix of the lines that fits both
        bounds, and every held id is found where it belongs."""
        history = History(max_lines=max_lines, max_bytes=max_bytes)
        lines = [b"y" * size for size in sizes]
        for k, line in enumerate(lines, start=1):
            history.extend([k], [line])
        expected: list[int] = []
        size = 0
        if max_lines:
            for k in range(len(lines), 0, -1):
                if len(expected) == max_lines or size + len(lines[k - 1]) > max_bytes:
                    break
                expected.insert(0, k)
                size += len(lines[k - 1])
        held = list(range(history.first + 1, history.end + 1)) if max_lines else []
        self.assertEqual(held, expected)
        self.assertEqual(history.bytes if max_lines else 0, size)
        for k in expected:
            self.assertEqual(history.find(k), k - 1)
