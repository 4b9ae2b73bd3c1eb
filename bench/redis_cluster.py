"""A Redis Cluster of three masters on loopback, for the ledger benchmark.

Started in the run's working directory, formed with ``CLUSTER MEET`` and
``CLUSTER ADDSLOTSRANGE`` (no ``redis-cli`` needed), stopped after the part
that uses it.  Each node's bus port is its port + 10000, so ports are
picked below 55536 with both free.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

from redisfeed import HOST, RedisError, Resp

SLOTS = 16384
BUS_OFFSET = 10000
READY_TIMEOUT = 30.0


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _port() -> int:
    while True:
        port = random.randint(20000, 65535 - BUS_OFFSET)
        if _free(port) and _free(port + BUS_OFFSET):
            return port


class BenchCluster:
    """Three masters, no replicas: the ledger's keys spread over all three."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.ports = [_port() for _ in range(masters)]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.ports[0]}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        for port in self.ports:
            home = self.directory / f"cluster-{port}"
            home.mkdir(parents=True, exist_ok=True)
            self.processes.append(
                subprocess.Popen(
                    [
                        binary, "--port", str(port), "--bind", HOST,
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(home / "nodes.conf"),
                        "--save", "", "--appendonly", "no", "--dir", str(home),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        self._until(lambda: all(self._call(p, "PING") == b"PONG" for p in self.ports))
        for port in self.ports[1:]:
            self._call(port, "CLUSTER", "MEET", HOST, self.ports[0])
        share = SLOTS // len(self.ports)
        for i, port in enumerate(self.ports):
            last = SLOTS - 1 if i == len(self.ports) - 1 else (i + 1) * share - 1
            self._call(port, "CLUSTER", "ADDSLOTSRANGE", i * share, last)
        self._until(lambda: all(self._ok(p) for p in self.ports))

    def _ok(self, port: int) -> bool:
        info = self._call(port, "CLUSTER", "INFO").decode()
        return "cluster_state:ok" in info and f"cluster_slots_ok:{SLOTS}" in info

    def _call(self, port: int, *args: str | int) -> object:
        with Resp(HOST, port, timeout=2.0) as redis:
            return redis.command(*args)

    def _until(self, condition: object) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                if condition():  # type: ignore[operator]
                    return
            except (OSError, RedisError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ready")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
