"""Redis URLs: what they name, what is logged of them, and what is refused."""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from nanostream.redis.url import (
    RedisTarget,
    RedisURLError,
    parse_redis_url,
    resolve,
)

PASSWORD = "s3cr/et@pass"


class ParseTests(SynchronousTestCase):
    def test_full_url(self) -> None:
        """Every part of a full URL lands in its field, percent-decoded."""
        target = parse_redis_url(
            "redis://alice:s3cr%2Fet%40pass@redis.example:6380/2?channel=feed%20a",
            channel=True,
        )
        self.assertEqual(
            (target.host, target.port, target.db, target.channel, target.username),
            ("redis.example", 6380, 2, "feed a", "alice"),
        )
        self.assertEqual(target.password, PASSWORD)
        self.assertFalse(target.tls)

    def test_defaults(self) -> None:
        """Port 6379 and database 0 when the URL leaves them out."""
        target = parse_redis_url("redis://10.0.0.5?channel=x", channel=True)
        self.assertEqual((target.port, target.db, target.password), (6379, 0, None))

    def test_tls_and_ipv6(self) -> None:
        """rediss:// means TLS; an IPv6 literal keeps its port apart."""
        target = parse_redis_url("rediss://[::1]:7000/1", channel=False)
        self.assertEqual((target.tls, target.host, target.port), (True, "::1", 7000))

    def test_password_only(self) -> None:
        """``:PASSWORD@`` gives a password and no user."""
        target = parse_redis_url("redis://:pw@h/0", channel=False)
        self.assertEqual((target.username, target.password), (None, "pw"))

    def refused(self, url: str, *, channel: bool = True, stream: bool = False) -> str:
        with self.assertRaises(RedisURLError) as caught:
            parse_redis_url(url, channel=channel, stream=stream)
        return str(caught.exception)

    def test_missing_channel(self) -> None:
        """A source URL without a channel is refused, saying how to add one."""
        self.assertIn("?channel=NAME", self.refused("redis://h:6379/0"))

    def test_empty_channel(self) -> None:
        """An empty channel name counts as none."""
        self.assertIn("no channel", self.refused("redis://h/0?channel="))

    def test_channel_on_ledger(self) -> None:
        """A ledger URL with a channel is a mix-up, refused."""
        self.assertIn(
            "no channel", self.refused("redis://h/0?channel=x", channel=False)
        )

    def test_stream(self) -> None:
        """``?stream=KEY`` names a stream, percent-decoded, and no channel."""
        target = parse_redis_url(
            "redis://h/1?stream=feed%3Ablocks", channel=False, stream=True
        )
        self.assertEqual(
            (target.stream, target.channel, target.db), ("feed:blocks", None, 1)
        )

    def test_channel_or_stream(self) -> None:
        """Asked for either, a URL gives exactly one: a channel or a stream."""
        both = {"channel": True, "stream": True}
        channel = parse_redis_url("redis://h/0?channel=c", **both)
        stream = parse_redis_url("redis://h/0?stream=s", **both)
        self.assertEqual((channel.channel, channel.stream), ("c", None))
        self.assertEqual((stream.channel, stream.stream), (None, "s"))
        message = self.refused("redis://h/0", **both)
        self.assertIn("?channel=NAME", message)
        self.assertIn("?stream=KEY", message)
        self.assertIn("one of", self.refused("redis://h/0?channel=c&stream=s", **both))
        self.assertIn(
            "no channel or stream", self.refused("redis://h/0?stream=", **both)
        )

    def test_stream_where_a_channel_is_wanted(self) -> None:
        """A channel-only caller refuses a stream, and a stream-only one a channel."""
        self.assertIn("?channel=NAME", self.refused("redis://h/0?stream=s"))
        self.assertIn("one of", self.refused("redis://h/0?channel=c&stream=s"))
        self.assertIn(
            "?stream=KEY",
            self.refused("redis://h/0?channel=c", channel=False, stream=True),
        )
        self.assertIn(
            "takes no stream", self.refused("redis://h/0?stream=s", channel=False)
        )

    def test_bad_ports(self) -> None:
        """Ports that are not 1 to 65535 are refused."""
        for port in ("0", "65536", "99999", "x", "-1", "6379a"):
            self.assertIn("bad port", self.refused(f"redis://h:{port}/0?channel=c"))

    def test_empty_port(self) -> None:
        """A colon with no port is refused rather than defaulted."""
        self.assertIn("empty port", self.refused("redis://h:/0?channel=c"))

    def test_bad_database(self) -> None:
        """A database that is not a number is refused."""
        self.assertIn("database", self.refused("redis://h/zero?channel=c"))

    def test_no_host(self) -> None:
        """A URL without a host is refused."""
        self.assertIn("no host", self.refused("redis://:6379/0?channel=c"))

    def test_other_scheme(self) -> None:
        """Only redis:// and rediss:// are Redis URLs."""
        self.assertIn("redis://", self.refused("http://h/0?channel=c"))

    def test_unknown_parameter(self) -> None:
        """A parameter other than channel=, stream= and ca= is refused, naming those."""
        message = self.refused("redis://h/0?channel=c&db=2")
        self.assertIn("unknown parameter", message)
        self.assertIn("stream=", message)

    def test_ca_needs_tls(self) -> None:
        """ca= on a plain redis:// URL is refused: it would do nothing."""
        self.assertIn(
            "rediss", self.refused("redis://h/0?ca=/etc/ca.pem", channel=False)
        )

    def test_unreadable_ca(self) -> None:
        """A CA file that cannot be read is a usage error, not a later failure."""
        self.assertIn(
            "cannot read CA file",
            self.refused("rediss://h/0?ca=/nonexistent/ca.pem", channel=False),
        )

    def test_errors_never_show_the_password(self) -> None:
        """Even a URL mangled around its password is refused without echoing it."""
        for url in (
            "redis://:pass/word@h:1/0?channel=c",
            "redis://:pass?word@h/0?channel=c",
            "redis://:password@h:port/0?channel=c",
            "redis://:password@h/db?channel=c",
            "redis://:password@h/0?channel=c&password=1",
        ):
            message = self.refused(url)
            for fragment in ("pass", "word"):
                self.assertNotIn(fragment, message, url)


class MaskTests(SynchronousTestCase):
    def test_masked(self) -> None:
        """The logged form shows everything but the password."""
        target = parse_redis_url(
            "rediss://alice:hunter2@h:6380/3?channel=feed", channel=True
        )
        self.assertEqual(target.masked(), "rediss://alice:***@h:6380/3?channel=feed")
        self.assertNotIn("hunter2", str(target))
        self.assertNotIn("hunter2", repr(target))

    def test_masked_stream(self) -> None:
        """The logged form keeps the stream key."""
        target = parse_redis_url(
            "redis://:hunter2@h/0?stream=a%20b", channel=False, stream=True
        )
        self.assertEqual(target.masked(), "redis://:***@h:6379/0?stream=a%20b")

    def test_masked_without_password(self) -> None:
        """Without a password nothing is masked."""
        target = RedisTarget("::1", 6379, 0)
        self.assertEqual(target.masked(), "redis://[::1]:6379/0")


class ResolveTests(SynchronousTestCase):
    def password_file(self, content: bytes) -> str:
        fd, path = tempfile.mkstemp()
        os.write(fd, content)
        os.close(fd)
        self.addCleanup(os.remove, path)
        return path

    def test_password_from_file(self) -> None:
        """The file's password, without its trailing newline, goes with the URL."""
        path = self.password_file(b"hunter2\n")
        target = resolve("redis://h/0?channel=c", channel=True, password_file=path)
        self.assertEqual(target.password, "hunter2")

    def test_stream_resolved(self) -> None:
        """resolve() passes the wish for a stream on to the parser."""
        target = resolve(
            "redis://h/0?stream=s", channel=True, stream=True, password_file=None
        )
        self.assertEqual(target.stream, "s")
        with self.assertRaises(RedisURLError):
            resolve("redis://h/0?stream=s", channel=True, password_file=None)

    def test_two_passwords(self) -> None:
        """A password in the URL and a password file at once is refused."""
        path = self.password_file(b"hunter2\n")
        with self.assertRaises(RedisURLError) as caught:
            resolve("redis://:xyzzy@h/0", channel=False, password_file=path)
        self.assertNotIn("hunter2", str(caught.exception))
        self.assertNotIn("xyzzy", str(caught.exception))

    def test_empty_password_file(self) -> None:
        """An empty password file is refused."""
        path = self.password_file(b"\n")
        with self.assertRaises(RedisURLError) as caught:
            resolve("redis://h/0", channel=False, password_file=path)
        self.assertIn("empty", str(caught.exception))

    def test_user_needs_password(self) -> None:
        """A user without any password is refused: AUTH needs both."""
        with self.assertRaises(RedisURLError):
            resolve("redis://alice@h/0", channel=False, password_file=None)
