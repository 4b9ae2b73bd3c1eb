"""Start, watch and always stop the two processes of a benchmark run.

The server under test and the load generator each run as a real process,
each pinned to its own core, so that one never steals the other's CPU and
the server's CPU time, read from /proc, is its own. Both are context
managers whose exit kills the process if it is still there: no run leaves
anything behind, whatever fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import procfs


class ProcessFailed(RuntimeError):
    """A process died, or did not say what it should have in time."""


def pinning() -> tuple[int | None, int | None]:
    """Return (load generator core, server core), or Nones on one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def _pinned(argv: Sequence[str], core: int | None) -> list[str]:
    if core is None or shutil.which("taskset") is None:
        return list(argv)
    # taskset execs the command: the pid stays the server's own, and every
    # thread it ever starts inherits the mask.
    return ["taskset", "-c", str(core), *argv]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ServerProcess:
    """The server under test, fed lines on stdin, logging to a file."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        core: int | None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = _pinned(argv, core)
        self.log_path = log_path
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in __exit__
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env,
            start_new_session=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop(timeout=5)
        finally:
            if self._log is not None:
                self._log.close()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def stdin(self) -> IO[bytes]:
        assert self._proc is not None and self._proc.stdin is not None
        return self._proc.stdin

    def wait_ready(
        self, timeout: float = 60.0, marker: bytes = b"listening on"
    ) -> None:
        """Wait until the server logs its ready line; fail if it dies first."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.log_path.read_bytes():
                return
            if self._proc.poll() is not None:
                raise ProcessFailed(
                    f"server exited with {self._proc.returncode} before it was"
                    f" ready:\n{_tail(self.log_path)}"
                )
            time.sleep(0.02)
        raise ProcessFailed(
            f"server not ready after {timeout}s:\n{_tail(self.log_path)}"
        )

    def wait_accepting(self, port: int, timeout: float = 60.0) -> None:
        """Wait until ``port`` on loopback takes connections: for a server
        whose log level keeps its ready line out of the log."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if self._proc.poll() is not None:
                raise ProcessFailed(
                    f"server exited with {self._proc.returncode} before it was"
                    f" ready:\n{_tail(self.log_path)}"
                )
            time.sleep(0.02)
        raise ProcessFailed(
            f"server not accepting after {timeout}s:\n{_tail(self.log_path)}"
        )

    def cpu(self) -> float:
        """CPU seconds the server has used so far."""
        return procfs.cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        """The server's resident memory now, in KiB."""
        return procfs.rss_kib(self.pid)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """End of input, as in production; escalate to signals if it lingers.

        Returns the exit status if the server left on its own after EOF.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except OSError:
                pass
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            _signal(proc, terminate=True)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                _signal(proc, terminate=False)
                proc.wait(5)
            return None
        return proc.returncode


def _signal(proc: subprocess.Popen[Any], terminate: bool) -> None:
    """Signal the process group we created (start_new_session), children too."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM if terminate else signal.SIGKILL)


class LoadgenProcess:
    """The load generator: commands in on stdin, JSON events out on stdout."""

    def __init__(self, argv: Sequence[str], log_path: Path) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> LoadgenProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in __exit__
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                self._events.put(json.loads(line))
            except ValueError:
                continue
        self._events.put(None)

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        """Return the next event called ``event``; fail on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                tail = _tail(self.log_path)
                raise ProcessFailed(
                    f"load generator: no {event!r} after {timeout}s\n{tail}"
                )
            try:
                item = self._events.get(timeout=left)
            except queue.Empty:
                continue
            if item is None:
                raise ProcessFailed(
                    f"load generator exited before {event!r}:\n{_tail(self.log_path)}"
                )
            if item.get("event") == event:
                return item

    def send(self, command: str) -> None:
        """Send one command line (``go``)."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(command.encode() + b"\n")
        self._proc.stdin.flush()

    def finish(self, timeout: float = 15.0) -> None:
        """Tell it to stop (end of input) and wait; kill it if it lingers."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal(proc, terminate=False)
            proc.wait(5)

    def __exit__(self, *exc: object) -> None:
        try:
            self.finish(timeout=5)
        finally:
            if self._log is not None:
                self._log.close()
