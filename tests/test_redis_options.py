"""The Redis options of the service: each mistake one line, each URL a service."""

from __future__ import annotations

import os
import tempfile

from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from nanostream.auth.cluster_ledger import RedisURLLedger
from nanostream.auth.ledger import MemoryLedger
from nanostream.auth.redis_ledger import RedisLedger
from nanostream.ops.health import Readiness
from nanostream.redis.url import RedisTarget
from nanostream.sources import SourceStatus
from nanostream.sources.redis_pubsub import RedisChannelSource
from nanostream.tap import ServiceOptions, makeService

KEY = "redis-options-test-secret-0123456789abcdef"
PASSWORD = "hunter2-redis"
SOURCE = "redis://127.0.0.1:6379/0?channel=feed"


class RedisOptionsTests(SynchronousTestCase):
    def parse(self, argv: list[str]) -> ServiceOptions:
        options = ServiceOptions(environ={})
        options.parseOptions(["--secret", KEY, *argv])
        return options

    def usage_error(self, argv: list[str]) -> str:
        options = ServiceOptions(environ={})
        e = self.assertRaises(
            usage.UsageError, options.parseOptions, ["--secret", KEY, *argv]
        )
        message = str(e)
        self.assertNotIn("\n", message)
        self.assertNotIn(PASSWORD, message)
        return message

    def password_file(self) -> str:
        fd, path = tempfile.mkstemp()
        os.write(fd, PASSWORD.encode() + b"\n")
        os.close(fd)
        self.addCleanup(os.remove, path)
        return path

    def test_redis_source_parsed(self) -> None:
        """A redis:// source is parsed into its target at option time."""
        target = self.parse(["--source", SOURCE])["redis-source"]
        self.assertEqual(
            (target.host, target.port, target.channel), ("127.0.0.1", 6379, "feed")
        )

    def test_source_errors_name_the_option(self) -> None:
        """A bad Redis source URL is one line naming --source."""
        for url, fragment in [
            ("redis://h:6379/0", "no channel"),
            ("redis://h:70000/0?channel=c", "bad port"),
            (f"redis://:{PASSWORD}@h:x/0?channel=c", "bad port"),
        ]:
            message = self.usage_error(["--source", url])
            self.assertTrue(message.startswith("--source: "), message)
            self.assertIn(fragment, message)

    def test_ledger_options(self) -> None:
        """--ledger, --ledger-prefix and --ledger-timeout are taken as given."""
        options = self.parse(
            [
                "--ledger",
                "redis://h/2",
                "--ledger-prefix",
                "x:",
                "--ledger-timeout",
                "0.2",
            ]
        )
        self.assertEqual(options["redis-ledger"].db, 2)
        self.assertEqual(
            (options["ledger-prefix"], options["ledger-timeout"]), ("x:", 0.2)
        )

    def test_ledger_prefix_without_braces(self) -> None:
        """A prefix with a hash tag would put every token in one Cluster slot."""
        message = self.usage_error(
            ["--ledger", "redis://h/0", "--ledger-prefix", "{a}:"]
        )
        self.assertIn("--ledger-prefix must not hold { or }", message)

    def test_ledger_with_channel(self) -> None:
        """A ledger URL with a channel is refused: the two options were mixed up."""
        self.assertIn("--ledger: ", self.usage_error(["--ledger", SOURCE]))

    def test_ledger_needs_tokens(self) -> None:
        """--ledger with --no-auth contradicts itself."""
        options = ServiceOptions(environ={})
        e = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--no-auth", "--ledger", "redis://h/0"],
        )
        self.assertIn("--no-auth", str(e))

    def test_bad_ledger_timeout(self) -> None:
        """A ledger timeout of zero would refuse everything: refused itself."""
        self.assertIn("--ledger-timeout", self.usage_error(["--ledger-timeout", "0"]))

    def test_password_file_for_both(self) -> None:
        """--redis-password-file gives its password to the source and the ledger."""
        options = self.parse(
            [
                "--source",
                SOURCE,
                "--ledger",
                "redis://h/1",
                "--redis-password-file",
                self.password_file(),
            ]
        )
        self.assertEqual(options["redis-source"].password, PASSWORD)
        self.assertEqual(options["redis-ledger"].password, PASSWORD)

    def test_password_file_alone(self) -> None:
        """--redis-password-file without any Redis URL is a mistake."""
        message = self.usage_error(["--redis-password-file", self.password_file()])
        self.assertIn("--redis-password-file", message)

    def test_makes_redis_services(self) -> None:
        """makeService puts a Redis source and a Redis ledger in the service tree."""
        options = self.parse(
            ["--listen", "tcp:0", "--source", SOURCE, "--ledger", "redis://h/1"]
        )
        top = makeService(options, MemoryReactorClock())
        assert IServiceCollection.providedBy(top)
        kinds = {type(service) for service in top}
        self.assertIn(RedisChannelSource, kinds)
        self.assertIn(RedisURLLedger, kinds)

    def test_memory_ledger_by_default(self) -> None:
        """Without --ledger no Redis service is made: one node needs no Redis."""
        options = self.parse(["--listen", "tcp:0", "--source", "tcp:0"])
        top = makeService(options, MemoryReactorClock())
        self.assertFalse(
            any(isinstance(s, (RedisChannelSource, RedisURLLedger)) for s in top)
        )


class LedgerReadinessTests(SynchronousTestCase):
    def test_disconnected_ledger_is_not_ready(self) -> None:
        """A Redis ledger that is not connected makes /readyz list it."""
        status = SourceStatus()
        status.up("reading stdin")
        ledger = RedisLedger(RedisTarget("127.0.0.1"), MemoryReactorClock())
        problems = Readiness(status, [], ledger).problems()
        self.assertEqual(
            problems, ["ledger not connected to Redis: handshakes are refused"]
        )

    def test_undecided_ledger_is_not_ready(self) -> None:
        """A Redis URL ledger that has not reached its server yet is not ready."""
        status = SourceStatus()
        status.up("reading stdin")
        ledger = RedisURLLedger(RedisTarget("127.0.0.1"), MemoryReactorClock())
        problems = Readiness(status, [], ledger).problems()
        self.assertEqual(
            problems, ["ledger not connected to Redis: handshakes are refused"]
        )

    def test_memory_ledger_is_always_ready(self) -> None:
        """The in-memory ledger never holds readiness back."""
        status = SourceStatus()
        status.up("reading stdin")
        readiness = Readiness(status, [], MemoryLedger(MemoryReactorClock()))
        self.assertEqual(readiness.problems(), [])
