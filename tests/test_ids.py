"""Line ids: the ``<ms>-<seq>`` parser and the integer order it maps to."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nanostream.resume.ids import MAX_PART, format_key, key, parse_id

parts = st.integers(min_value=0, max_value=MAX_PART)


class ParseTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """An id parses to the key of its two parts and formats back."""
        self.assertEqual(parse_id("1700000000000-42"), key(1700000000000, 42))
        self.assertEqual(format_key(key(1700000000000, 42)), b"1700000000000-42")

    def test_largest_parts(self) -> None:
        """Each part may be as large as 2**64 - 1, and no larger."""
        largest = f"{MAX_PART}-{MAX_PART}"
        self.assertEqual(format_key(parse_id(largest)), largest.encode())
        for text in (f"{MAX_PART + 1}-0", f"0-{MAX_PART + 1}"):
            with self.subTest(text=text):
                self.assertRaises(ValueError, parse_id, text)

    def test_malformed(self) -> None:
        """Anything but ASCII digits, a dash and ASCII digits is refused."""
        for text in (
            "",
            "-",
            "1-",
            "-1",
            "1",
            "1-2-3",
            " 1-2",
            "1-2 ",
            "+1-2",
            "1--2",
            "1.0-2",
            "0x1-2",
            "١-٢",  # Arabic-Indic digits: digits, but not ASCII
            "１-２",  # fullwidth digits
            "1-2\n",
        ):
            with self.subTest(text=text):
                self.assertRaises(ValueError, parse_id, text)

    @given(parts, parts)
    def test_any_valid_id_round_trips(self, ms: int, seq: int) -> None:
        """Every pair of parts in range survives formatting and parsing."""
        self.assertEqual(parse_id(format_key(key(ms, seq))), key(ms, seq))

    @given(parts, parts, parts, parts)
    def test_order_is_the_pair_order(self, a: int, b: int, c: int, d: int) -> None:
        """Keys compare exactly as the pairs of integers do."""
        self.assertEqual(key(a, b) < key(c, d), (a, b) < (c, d))
        self.assertEqual(key(a, b) == key(c, d), (a, b) == (c, d))

    @given(st.text(max_size=30))
    def test_parser_accepts_only_the_form(self, text: str) -> None:
        """Whatever the text, the parser accepts it exactly when it has the form."""
        ms, dash, seq = text.partition("-")
        valid = (
            dash == "-"
            and all(p and p.isascii() and p.isdigit() for p in (ms, seq))
            and int(ms) <= MAX_PART
            and int(seq) <= MAX_PART
        )
        try:
            parse_id(text)
        except ValueError:
            self.assertFalse(valid, text)
        else:
            self.assertTrue(valid, text)
