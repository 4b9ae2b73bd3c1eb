"""The used-token ledger in a file: records, group commit, reload, compaction."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from support import capture_logs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from nanostream.auth import ledger_file
from nanostream.auth.file_ledger import (
    CHECK_INTERVAL,
    FileLedger,
    LedgerUnavailable,
    open_file_ledger,
)
from nanostream.auth.ledger import ILedger
from nanostream.auth.ledger_file import HEADER, LedgerFileError, check
from nanostream.tap import ServiceOptions, makeService

KEY = "file-ledger-test-secret-0123456789abcdef"
A, B, C = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32


def record(token_id: bytes, expiry: int) -> bytes:
    return b"%s %d\n" % (token_id.hex().encode(), expiry)


def temporary_directory(case: SynchronousTestCase) -> Path:
    """A new directory, removed when ``case`` ends."""
    directory = tempfile.mkdtemp(prefix="nanostream-ledger-")
    case.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return Path(directory).resolve()


class Syncs:
    """An fdatasync that counts its calls and can be told to fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        os.fdatasync(fd)


class Writer:
    """Stands in for the thread that compacts: jobs wait until :meth:`run`."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], None], Deferred[None]]] = []

    def __call__(self, job: Callable[[], None]) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        self.jobs.append((job, done))
        return done

    def run(self) -> None:
        """Run every waiting job, and any job those hand in, as a thread would."""
        while self.jobs:
            job, done = self.jobs.pop(0)
            maybeDeferred(job).chainDeferred(done)


class FileLedgerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.path = str(temporary_directory(self) / "used-tokens")
        self.syncs = Syncs()
        self.writer = Writer()
        self.ledger = self.open()

    def open(self) -> FileLedger:
        ledger = open_file_ledger(
            self.path, self.clock, sync=self.syncs, in_thread=self.writer
        )
        self.addCleanup(ledger._file.close)
        return ledger

    def reopen(self) -> FileLedger:
        """Close the ledger as a stop would, and open the file again."""
        self.ledger.stopService()
        self.writer.run()
        self.ledger = self.open()
        return self.ledger

    def durable(self, *answers: Deferred[bool]) -> list[bool]:
        """End the turn, let the writer run, and return the answers."""
        self.clock.advance(0)
        self.writer.run()
        return [self.successResultOf(answer) for answer in answers]

    def contents(self) -> bytes:
        return Path(self.path).read_bytes()

    def test_provides_interface(self) -> None:
        """FileLedger provides ILedger, so it can stand in for the memory ledger."""
        self.assertTrue(verifyObject(ILedger, self.ledger))

    def test_new_file_has_header(self) -> None:
        """A new ledger file starts with the versioned header line."""
        self.assertEqual(self.contents(), HEADER)

    def test_answer_waits_for_the_record(self) -> None:
        """A first use is answered only once its record is synced to the file."""
        self.syncs.calls = 0
        answer = self.ledger.consume(A, 1060)
        self.assertNoResult(answer)
        self.assertEqual((self.syncs.calls, self.contents()), (0, HEADER))
        self.clock.advance(0)
        self.assertIs(self.successResultOf(answer), True)
        self.assertEqual(
            (self.syncs.calls, self.contents()), (1, HEADER + record(A, 1060))
        )

    def test_expiry_rounded_up(self) -> None:
        """A fractional expiry is kept to the next whole second: never shorter."""
        self.durable(self.ledger.consume(A, 1060.2))
        self.assertEqual(self.contents(), HEADER + record(A, 1061))

    def test_second_use_refused_at_once(self) -> None:
        """A repeat is refused even while the first use's record is being written."""
        first = self.ledger.consume(A, 1060)
        self.assertIs(self.successResultOf(self.ledger.consume(A, 1060)), False)
        self.assertEqual(self.durable(first), [True])
        self.assertIs(self.successResultOf(self.ledger.consume(A, 1060)), False)

    def test_group_commit(self) -> None:
        """First uses in the same turn share one write and one fdatasync."""
        self.syncs.calls = 0
        answers = [self.ledger.consume(bytes([i]) * 32, 1060) for i in range(50)]
        self.assertEqual(self.durable(*answers), [True] * 50)
        self.assertEqual(self.syncs.calls, 1)
        self.assertEqual(self.contents().count(b"\n"), 51)

    def compacting(self) -> Deferred[bool]:
        """A first use whose record goes into a compaction, not yet run."""
        self.patch(ledger_file, "COMPACT_MIN_RECORDS", 10)
        wave = [self.ledger.consume(bytes([i]) * 32, 1010) for i in range(20)]
        self.durable(*wave)
        self.clock.advance(10)
        answer = self.ledger.consume(A, 2000)
        self.clock.advance(0)
        self.assertEqual(len(self.writer.jobs), 1)
        return answer

    def test_uses_during_a_compaction_share_the_next_sync(self) -> None:
        """First uses that arrive while the file is rewritten wait for one sync."""
        first = self.compacting()
        self.syncs.calls = 0
        later = [self.ledger.consume(key, 2000) for key in (B, C)]
        self.clock.advance(0)
        self.assertNoResult(later[0])
        self.assertEqual(self.durable(first, *later), [True, True, True])
        self.assertEqual(self.syncs.calls, 2)
        self.assertEqual(
            self.contents(),
            HEADER + record(A, 2000) + record(B, 2000) + record(C, 2000),
        )

    def test_remembered_after_reopen(self) -> None:
        """Tokens used before a restart are still refused after it."""
        self.durable(self.ledger.consume(A, 1060))
        ledger = self.reopen()
        self.assertEqual(ledger.size, 1)
        self.assertIs(self.successResultOf(ledger.consume(A, 1060)), False)
        self.assertEqual(self.durable(ledger.consume(B, 1060)), [True])

    def test_forgotten_at_expiry(self) -> None:
        """From its expiry on a token is forgotten, as in the memory ledger."""
        self.durable(self.ledger.consume(A, 1060))
        self.clock.advance(59.5)
        self.assertIs(self.successResultOf(self.ledger.consume(A, 1060)), False)
        self.clock.advance(0.5)
        self.assertEqual(self.durable(self.ledger.consume(A, 1120)), [True])

    def test_expired_dropped_on_load(self) -> None:
        """Loading drops records whose expiry has passed: those tokens are forgotten."""
        self.durable(self.ledger.consume(A, 1010), self.ledger.consume(B, 2000))
        self.clock.advance(10)
        ledger = self.reopen()
        self.assertEqual(ledger.size, 1)
        self.assertEqual(self.durable(ledger.consume(A, 1100)), [True])
        self.assertIs(self.successResultOf(ledger.consume(B, 2000)), False)

    def test_compacted_when_mostly_dead(self) -> None:
        """A file grown past twice its live records is replaced by the live ones."""
        self.patch(ledger_file, "COMPACT_MIN_RECORDS", 10)
        logs = capture_logs(self)
        wave = [self.ledger.consume(bytes([i]) * 32, 1010) for i in range(20)]
        self.durable(*wave)
        self.clock.advance(10)
        self.assertEqual(self.durable(self.ledger.consume(A, 2000)), [True])
        self.assertEqual(self.contents(), HEADER + record(A, 2000))
        self.assertFalse(os.path.exists(self.path + ".tmp"))
        self.assertIn("compacted", " ".join(e["log_format"] for e in logs))
        self.assertEqual(self.durable(self.ledger.consume(B, 2000)), [True])
        self.assertEqual(self.contents(), HEADER + record(A, 2000) + record(B, 2000))

    def test_compacted_when_idle(self) -> None:
        """With no handshakes the periodic check still shrinks a dead file."""
        self.patch(ledger_file, "COMPACT_MIN_RECORDS", 10)
        self.ledger.startService()
        wave = [self.ledger.consume(bytes([i]) * 32, 1010) for i in range(20)]
        self.durable(*wave)
        self.clock.advance(CHECK_INTERVAL)
        self.writer.run()
        self.assertEqual(self.contents(), HEADER)
        self.assertEqual(self.ledger.size, 0)

    def test_small_file_not_compacted(self) -> None:
        """Below the minimum the file is only appended to, however dead."""
        self.durable(self.ledger.consume(A, 1010))
        self.clock.advance(10)
        self.durable(self.ledger.consume(B, 2000))
        self.assertEqual(self.contents(), HEADER + record(A, 1010) + record(B, 2000))

    def test_torn_last_record(self) -> None:
        """A record cut short by a crash is ignored with a warning; the rest holds."""
        self.durable(self.ledger.consume(A, 2000))
        self.ledger.stopService()
        self.writer.run()
        with open(self.path, "ab") as f:
            f.write(record(B, 2000)[:30])
        logs = capture_logs(self)
        ledger = self.open()
        ledger.startService()
        self.addCleanup(ledger.stopService)
        self.assertIs(self.successResultOf(ledger.consume(A, 2000)), False)
        self.assertEqual(self.durable(ledger.consume(B, 2000)), [True])
        self.assertEqual(self.contents(), HEADER + record(A, 2000) + record(B, 2000))
        warnings = [e for e in logs if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertIn("cut short", warnings[0]["log_format"])

    def test_malformed_records_skipped(self) -> None:
        """A malformed record amid good ones is skipped and counted, not fatal."""
        self.ledger._file.close()
        Path(self.path).write_bytes(
            HEADER + record(A, 2000) + b"zz 12\n" + record(B, 2000)
        )
        ledger = self.open()
        self.assertEqual(ledger.size, 2)
        self.assertEqual(ledger._loaded.corrupt, 1)
        self.assertFalse(ledger._loaded.torn)

    def test_header_cut_short(self) -> None:
        """A file cut short in its header (a crash at creation) starts afresh."""
        self.ledger._file.close()
        Path(self.path).write_bytes(HEADER[:7])
        self.open()
        self.assertEqual(self.contents(), HEADER)

    def test_foreign_file_refused(self) -> None:
        """A file that is not a ledger is never taken over."""
        self.ledger._file.close()
        Path(self.path).write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
        self.assertRaises(LedgerFileError, self.open)
        self.assertIn(b"root", self.contents())

    def test_failed_write_refuses_and_leaves_tokens_unused(self) -> None:
        """A failed sync refuses the batch, leaves its tokens usable and no partial."""
        logs = capture_logs(self)
        self.syncs.failures = 1
        answer = self.ledger.consume(A, 2000)
        self.clock.advance(0)
        self.writer.run()
        self.failureResultOf(answer, LedgerUnavailable)
        self.assertEqual(self.ledger.size, 0)
        self.assertEqual(self.contents(), HEADER)
        self.assertEqual(self.durable(self.ledger.consume(A, 2000)), [True])
        self.assertEqual(self.contents(), HEADER + record(A, 2000))
        said = [e["log_format"] for e in logs]
        self.assertTrue(any("cannot write" in s for s in said), said)
        self.assertTrue(any("written again" in s for s in said), said)

    def test_stop_writes_what_waits(self) -> None:
        """Stopping writes the waiting records, then refuses further uses."""
        self.ledger.startService()
        answer = self.ledger.consume(A, 2000)
        self.successResultOf(self.ledger.stopService())
        self.assertIs(self.successResultOf(answer), True)
        self.failureResultOf(self.ledger.consume(B, 2000), LedgerUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.contents(), HEADER + record(A, 2000))

    def test_stop_waits_for_a_compaction(self) -> None:
        """A stop during a compaction ends once it and the records after it are in."""
        first = self.compacting()
        second = self.ledger.consume(B, 2000)
        stopped = self.ledger.stopService()
        self.assertNoResult(stopped)
        self.writer.run()
        self.successResultOf(stopped)
        self.assertEqual(
            [self.successResultOf(a) for a in (first, second)], [True, True]
        )
        self.assertEqual(self.contents(), HEADER + record(A, 2000) + record(B, 2000))

    def test_one_process_per_file(self) -> None:
        """A second ledger on a file in use is refused: it would lose records."""
        error = self.assertRaises(LedgerFileError, self.open)
        self.assertIn("in use", str(error))


class CheckTests(SynchronousTestCase):
    """The start-up check behind ``--ledger PATH``: one line per problem."""

    def setUp(self) -> None:
        self.directory = temporary_directory(self)

    def test_new_path(self) -> None:
        """A new file in a writable directory is created, and its path made absolute."""
        path = self.directory / "used"
        self.assertEqual(check(str(path)), str(path))
        self.assertTrue(path.exists())

    def test_problems(self) -> None:
        """A directory, a missing directory or a foreign file is refused."""
        foreign = self.directory / "notes"
        foreign.write_text("hello\n")
        for path, fragment in [
            (self.directory, "is a directory"),
            (self.directory / "missing" / "used", "is not a directory"),
            (foreign / "used", "is not a directory"),
            (foreign, "not a used-token file"),
            ("/sys/nanostream-ledger", "cannot be opened for writing"),
        ]:
            error = self.assertRaises(LedgerFileError, check, str(path))
            self.assertIn(fragment, str(error))

    def test_options(self) -> None:
        """--ledger PATH names a file; a bad one is a one-line usage error."""
        options = ServiceOptions(environ={})
        options.parseOptions(["--secret", KEY, "--ledger", str(self.directory / "u")])
        self.assertEqual(options["file-ledger"], str(self.directory / "u"))
        self.assertNotIn("redis-ledger", options)
        error = self.assertRaises(
            usage.UsageError,
            ServiceOptions(environ={}).parseOptions,
            ["--secret", KEY, "--ledger", str(self.directory)],
        )
        self.assertEqual(
            str(error), f"--ledger {self.directory}: is a directory, not a file"
        )

    def test_service(self) -> None:
        """makeService puts the file ledger in the tree, so a stop closes it."""
        from twisted.internet.testing import MemoryReactorClock

        options = ServiceOptions(environ={})
        path = str(self.directory / "u")
        argv = ["--secret", KEY, "--ledger", path, "--source", "tcp:0"]
        options.parseOptions([*argv, "--listen", "tcp:0"])
        top = makeService(options, MemoryReactorClock())
        ledgers = [s for s in top if isinstance(s, FileLedger)]
        self.assertEqual(len(ledgers), 1)
        self.addCleanup(ledgers[0]._file.close)
        self.assertEqual(Path(path).read_bytes(), HEADER)
