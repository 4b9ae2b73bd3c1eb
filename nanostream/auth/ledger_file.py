"""The file behind ``--ledger PATH``: its format, loading, appending, compacting.

Version 1 of the format is a header line, ``nanostream-used-tokens 1``,
then one record per used token: the hex of its identity (the key the other
ledgers use; never the token), a space, the second its memory ends
(``exp`` plus leeway, rounded up) and a newline.  Plain text, about 76
bytes a token, readable with ``less``.

Records are only ever appended in place.  Compaction writes the live
records to a temporary file beside it, syncs it and renames it over the
old one, so that a crash leaves one whole file or the other.  A crash in
the middle of an append can leave the last record cut short: loading
ignores it.  One process at a time: the open file is locked.

Nothing here knows of Twisted; :mod:`nanostream.auth.file_ledger` calls
it from a thread, one call at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

HEADER = b"nanostream-used-tokens 1\n"
_RECORD = re.compile(rb"((?:[0-9a-f]{2}){1,64}) ([0-9]{1,15})\n")
#: Fewer records than this are never worth a rewrite.
COMPACT_MIN_RECORDS = 4096
#: Records written per ``write`` during a rewrite.
_CHUNK = 8192

#: Makes written data durable: ``os.fdatasync``, or a counting fake in tests.
Sync = Callable[[int], None]


class LedgerFileError(Exception):
    """The path cannot hold the ledger; the message is one line for the operator."""


def worth_compacting(records: int, live: int) -> bool:
    """Whether a file of ``records`` records, ``live`` of them live, should shrink."""
    return records >= COMPACT_MIN_RECORDS and records > 2 * live


def encode(records: Iterable[tuple[bytes, int]]) -> bytes:
    """The lines of ``records``, pairs of identity and expiry."""
    return b"".join(
        b"%s %d\n" % (key.hex().encode(), expiry) for key, expiry in records
    )


def check(path: str) -> str:
    """The absolute form of ``path`` if it can hold the ledger, else raise.

    Opens the file for appending (creating it empty if need be), reads its
    first line and tries its lock; the directory must be writable too,
    since compaction puts a new file there.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise LedgerFileError("is a directory, not a file")
    if not os.path.isdir(directory):
        raise LedgerFileError(f"{directory} is not a directory")
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise LedgerFileError(f"cannot be opened for writing: {e.strerror}") from None
    try:
        _lock(fd)
        start = os.pread(fd, len(HEADER), 0)
    except OSError as e:
        raise LedgerFileError(f"cannot be read: {e.strerror}") from None
    finally:
        os.close(fd)
    if not HEADER.startswith(start):
        raise LedgerFileError(
            "is not a used-token file (its first line is not "
            f"{HEADER.decode().strip()!r}); give a new path"
        )
    if not os.access(directory, os.W_OK):
        raise LedgerFileError(
            f"directory {directory} is not writable (compaction writes there)"
        )
    return path


def _lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LedgerFileError("is in use by another process") from None


@dataclass
class Loaded:
    """What loading found: the live records and what was wrong with the rest."""

    #: Expiry of every identity still live.
    entries: dict[bytes, int] = field(default_factory=dict)
    #: Well-formed records in the file, live or not.
    records: int = 0
    expired: int = 0
    #: Malformed records before the last one, skipped.
    corrupt: int = 0
    #: Whether the last record was cut short or malformed (a crash mid-append).
    torn: bool = False
    #: Whether the file had no (whole) header: new, or cut short in it.
    fresh: bool = False

    @property
    def needs_rewrite(self) -> bool:
        """Whether appending to the file as it is would be wrong or wasteful."""
        return (
            self.fresh
            or self.torn
            or self.corrupt > 0
            or worth_compacting(self.records, len(self.entries))
        )


def load(path: str, now: float) -> Loaded:
    """Read the records of ``path``, dropping those expired by ``now``."""
    loaded = Loaded()
    entries = loaded.entries
    with open(path, "rb") as f:
        first = f.readline()
        if first != HEADER:
            if not HEADER.startswith(first) or f.read(1):
                raise LedgerFileError("is not a used-token file; give a new path")
            loaded.fresh = True
            return loaded
        bad = False
        for line in f:
            if bad:
                loaded.corrupt += 1
            m = _RECORD.fullmatch(line)
            bad = m is None
            if m is None:
                continue
            loaded.records += 1
            expiry = int(m[2])
            if expiry <= now:
                loaded.expired += 1
                continue
            key = bytes.fromhex(m[1].decode())
            if expiry > entries.get(key, 0):
                entries[key] = expiry
        loaded.torn = bad
    return loaded


class LedgerFile:
    """The open file: appends synced records, or replaces itself compacted.

    Its methods block; they are called from one thread at a time.
    """

    def __init__(self, path: str, sync: Sync) -> None:
        self.path = path
        self._sync = sync
        self._fd = -1
        self._end = 0
        #: Set when a failed append could not be undone: rewrite before appending.
        self.damaged = False

    def open(self) -> None:
        """Open the file for appending (creating it if need be) and lock it."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        try:
            _lock(fd)
        except LedgerFileError:
            os.close(fd)
            raise
        self._fd = fd
        self._end = os.fstat(fd).st_size

    def append(self, records: list[tuple[bytes, int]]) -> None:
        """Write ``records`` and make them durable: one write, one sync.

        On failure the file is cut back to its last durable end, so that
        the next append does not glue a record onto a partial one.
        """
        data = encode(records)
        try:
            _write_all(self._fd, data)
            self._sync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, self._end)
            except OSError:
                self.damaged = True
            raise
        self._end += len(data)

    def rewrite(self, records: list[tuple[bytes, int]]) -> None:
        """Replace the file, atomically, by one holding just ``records``."""
        temporary = self.path + ".tmp"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o600)
        try:
            _lock(fd)
            size = _write_all(fd, HEADER)
            for start in range(0, len(records), _CHUNK):
                size += _write_all(fd, encode(records[start : start + _CHUNK]))
            self._sync(fd)
            os.replace(temporary, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._end = fd, size
        # The rename is durable once the directory is; until then, rewrite.
        self.damaged = True
        directory = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self.damaged = False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)


def open_file(path: str, now: float, sync: Sync) -> tuple[LedgerFile, Loaded]:
    """Load ``path`` and open it for appending, rewritten first if it needs it.

    A cut-short last record or a dead majority is dropped by the rewrite.
    """
    file = LedgerFile(path, sync)
    # Locked before it is read, so that no second process writes meanwhile.
    file.open()
    try:
        loaded = load(path, now)
        if loaded.needs_rewrite:
            file.rewrite(sorted(loaded.entries.items(), key=lambda item: item[1]))
    except BaseException:
        file.close()
        raise
    return file, loaded
