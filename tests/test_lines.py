"""The line splitter: the rules for cutting a byte stream into lines."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanostream.sources.splitter import DEFAULT_MAX_LINE_BYTES, LineSplitter


def split_all(
    chunks: Iterable[bytes], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> tuple[list[bytes], list[int]]:
    """Feed every chunk then finish; return the lines and the overlong reports."""
    overlong: list[int] = []
    splitter = LineSplitter(max_line_bytes, overlong.append)
    lines = []
    for chunk in chunks:
        lines.extend(splitter.feed(chunk))
    lines.extend(splitter.finish())
    return lines, overlong


def reference(stream: bytes, max_line_bytes: int) -> tuple[list[bytes], int]:
    """The rules applied to the whole stream at once: lines and how many dropped."""
    lines, dropped = [], 0
    for line in stream.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            continue
        if len(line) > max_line_bytes:
            dropped += 1
        else:
            lines.append(line)
    return lines, dropped


class BasicTests(SynchronousTestCase):
    def test_lines(self) -> None:
        """Each ``\\n`` ends a line, returned without it."""
        self.assertEqual(split_all([b"one\ntwo\n"]), ([b"one", b"two"], []))

    def test_feed_returns_finished_lines(self) -> None:
        """feed returns only the lines the chunk completes, keeping the rest."""
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"one\ntw"), [b"one"])
        self.assertEqual(splitter.feed(b"o"), [])
        self.assertEqual(splitter.feed(b"\n"), [b"two"])

    def test_crlf(self) -> None:
        """A ``\\r`` right before ``\\n`` is stripped."""
        self.assertEqual(split_all([b"one\r\ntwo\r\n"])[0], [b"one", b"two"])

    def test_only_one_cr_stripped(self) -> None:
        """Only one trailing ``\\r`` belongs to the line ending."""
        self.assertEqual(split_all([b"one\r\r\n"])[0], [b"one\r"])

    def test_lone_cr_kept(self) -> None:
        """A ``\\r`` inside a line is data, not a line ending."""
        self.assertEqual(split_all([b"a\rb\n\rc\n"])[0], [b"a\rb", b"\rc"])

    def test_empty_lines_skipped(self) -> None:
        """Empty lines, also ``\\r\\n`` alone, produce nothing."""
        self.assertEqual(split_all([b"\n\none\n\r\n\ntwo\n\n"])[0], [b"one", b"two"])

    def test_eof_without_newline(self) -> None:
        """finish delivers a last line that has no ``\\n``."""
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"one\ntwo"), [b"one"])
        self.assertEqual(splitter.finish(), [b"two"])

    def test_eof_strips_cr(self) -> None:
        """A last line ending in ``\\r`` at end of input loses that ``\\r``."""
        self.assertEqual(split_all([b"one\r"])[0], [b"one"])

    def test_eof_after_newline(self) -> None:
        """finish adds nothing when the input ended with a newline."""
        splitter = LineSplitter()
        splitter.feed(b"one\n")
        self.assertEqual(splitter.finish(), [])

    def test_finish_resets(self) -> None:
        """After finish the splitter starts afresh."""
        splitter = LineSplitter()
        splitter.feed(b"one")
        splitter.finish()
        self.assertEqual(splitter.feed(b"two\n"), [b"two"])

    def test_non_utf8_unchanged(self) -> None:
        """Bytes that are not UTF-8 pass through untouched."""
        data = b"\xff\xfe\x00\x80 caf\xe9\n\xc3\x28\n"
        self.assertEqual(
            split_all([data])[0], [b"\xff\xfe\x00\x80 caf\xe9", b"\xc3\x28"]
        )

    def test_nul_and_utf8_unchanged(self) -> None:
        """NUL bytes and multi-byte UTF-8 are kept as they are."""
        line = "\x00é€😀".encode()
        self.assertEqual(split_all([line + b"\n"])[0], [line])


class OverlongTests(SynchronousTestCase):
    def test_limit_is_inclusive(self) -> None:
        """A line of exactly max_line_bytes is delivered."""
        self.assertEqual(split_all([b"12345\n"], 5), ([b"12345"], []))

    def test_overlong_dropped_next_intact(self) -> None:
        """A line over the limit is dropped, reported, and the next line survives."""
        lines, overlong = split_all([b"ok\n123456\nnext\n"], 5)
        self.assertEqual(lines, [b"ok", b"next"])
        self.assertEqual(overlong, [6])

    def test_overlong_in_many_chunks(self) -> None:
        """A long line arriving in pieces is dropped once and the next line kept."""
        chunks = [b"ok\n"] + [b"x" * 3] * 100 + [b"\nnext\n"]
        lines, overlong = split_all(chunks, 5)
        self.assertEqual(lines, [b"ok", b"next"])
        self.assertEqual(len(overlong), 1)
        self.assertGreater(overlong[0], 5)

    def test_overlong_not_buffered(self) -> None:
        """A discarded line is reported as soon as it is too long, not at its end."""
        overlong: list[int] = []
        splitter = LineSplitter(5, overlong.append)
        self.assertEqual(splitter.feed(b"1234567"), [])
        self.assertEqual(overlong, [7])
        self.assertEqual(splitter.feed(b"89" * 1000), [])
        self.assertEqual(splitter.feed(b"0\nok\n"), [b"ok"])
        self.assertEqual(overlong, [7])

    def test_overlong_at_eof(self) -> None:
        """An overlong last line without ``\\n`` is dropped at finish."""
        lines, overlong = split_all([b"ok\n1234", b"56"], 5)
        self.assertEqual(lines, [b"ok"])
        self.assertEqual(len(overlong), 1)

    def test_limit_on_cr_before_lf(self) -> None:
        """A line of max_line_bytes plus its ``\\r\\n`` is kept, however split."""
        for chunks in (
            [b"12345\r\n"],
            [b"12345\r", b"\n"],
            [b"12345", b"\r", b"\n"],
            [b"12345\r"],
        ):
            with self.subTest(chunks=chunks):
                self.assertEqual(split_all(chunks, 5), ([b"12345"], []))

    def test_cr_past_limit_is_data(self) -> None:
        """A ``\\r`` that turns out to be inside the line counts toward the limit."""
        for chunks in ([b"12345\rx\nok\n"], [b"12345\r", b"x\nok\n"]):
            with self.subTest(chunks=chunks):
                lines, overlong = split_all(chunks, 5)
                self.assertEqual(lines, [b"ok"])
                self.assertEqual(len(overlong), 1)

    def test_default_limit(self) -> None:
        """The default limit is 1 MiB."""
        self.assertEqual(LineSplitter().max_line_bytes, 1024 * 1024)

    def test_no_callback(self) -> None:
        """Without a callback an overlong line is still dropped quietly."""
        splitter = LineSplitter(3)
        self.assertEqual(splitter.feed(b"abcd\nabc\n"), [b"abc"])


STREAM = (
    b"first\r\n\n\r\nsec\rond\n"
    b"toolongline\r\nx\n"
    b"\xff\xfe\r\n"
    b"abcd\r\r\n12345678\r\n"
    b"123456789\nlast"
)
LIMIT = 8


class ChunkingTests(SynchronousTestCase):
    expected = (
        [b"first", b"sec\rond", b"x", b"\xff\xfe", b"abcd\r", b"12345678", b"last"],
        2,
    )

    def check(self, chunks: list[bytes]) -> None:
        lines, overlong = split_all(chunks, LIMIT)
        self.assertEqual((lines, len(overlong)), self.expected, chunks)

    def test_reference(self) -> None:
        """The reference model agrees with the expected lines of STREAM."""
        self.assertEqual(reference(STREAM, LIMIT), self.expected)

    def test_whole(self) -> None:
        """The stream fed at once gives the expected lines."""
        self.check([STREAM])

    def test_byte_by_byte(self) -> None:
        """The stream fed one byte at a time gives the same lines."""
        self.check([STREAM[i : i + 1] for i in range(len(STREAM))])

    def test_every_split_point(self) -> None:
        """Cut in two at any point, the stream gives the same lines."""
        for i in range(len(STREAM) + 1):
            self.check([STREAM[:i], STREAM[i:]])

    def test_every_pair_of_split_points(self) -> None:
        """Cut in three at any two points, the stream gives the same lines."""
        for i in range(len(STREAM) + 1):
            for j in range(i, len(STREAM) + 1):
                self.check([STREAM[:i], STREAM[i:j], STREAM[j:]])

    def test_empty_chunks(self) -> None:
        """Empty chunks between the data change nothing."""
        self.check([b"", STREAM[:10], b"", b"", STREAM[10:], b""])

    @settings(deadline=None, max_examples=300)
    @given(
        stream=st.lists(
            st.sampled_from([b"a", b"b", b"\r", b"\n", b"\xff", b"xyz"]), max_size=60
        ).map(b"".join),
        cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
        limit=st.integers(min_value=1, max_value=8),
    )
    def test_any_chunking_matches_reference(
        self, stream: bytes, cuts: list[int], limit: int
    ) -> None:
        """Any stream cut anywhere gives the lines the whole-stream rules give."""
        points = sorted({min(c, len(stream)) for c in cuts})
        bounds = [0, *points, len(stream)]
        chunks = [stream[a:b] for a, b in pairwise(bounds)]
        lines, overlong = split_all(chunks, limit)
        self.assertEqual((lines, len(overlong)), reference(stream, limit))
