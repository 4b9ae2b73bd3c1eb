"""Profile one nanostream process: slow-reader fan-out, or a handshake burst.

Not a benchmark (``run.py`` is): a tool for deciding levers.  It starts
``twistd nanostream`` (optionally under ``py-spy record`` or ``valgrind
--tool=callgrind``), drives it from this process with plain sockets, and
prints one JSON line: server CPU-seconds for the measured part and, under
callgrind, the instructions it executed (user space only; counters are
zeroed when the measured part starts).

* ``slow``: N clients with a small ``SO_RCVBUF`` that read ``--read``
  bytes per round and sleep ``--delay`` between rounds, while the feed
  writes ``--chunk`` lines per round: the clients fall behind.  With
  ``--sndbuf`` the server's accepted sockets get that ``SO_SNDBUF`` (a
  ``sitecustomize`` on its PYTHONPATH), so the kernel refuses part of a
  write and the server's own queue is what is measured; without it, the
  kernel's autotuned buffer (MiBs on loopback) absorbs the backlog.
* ``handshake``: ``--count`` handshakes with fresh tokens and browser-like
  headers, ``--concurrency`` in flight; each client closes on the 101.

Example (see docs/performance.rst, "Profiles")::

    python bench/profile_server.py slow --clients 1000 --lines 3000 --sndbuf 8192
    python bench/profile_server.py handshake --count 3000 --py-spy hs.txt
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tokens

_SITECUSTOMIZE = """\
import os, socket
from twisted.internet import tcp
_init = tcp.Server.__init__
def __init__(self, sock, *args, **kwargs):
    size = int(os.environ["NANOSTREAM_PROFILE_SNDBUF"])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    _init(self, sock, *args, **kwargs)
tcp.Server.__init__ = __init__
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def py_spy() -> str:
    """py-spy beside this Python (a venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """twistd nanostream on a free port, maybe under valgrind or py-spy."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.port = free_port()
        self.secret = os.urandom(32).hex().encode()
        secret_file = workdir / "secret"
        secret_file.write_bytes(self.secret)
        env = dict(os.environ)
        if getattr(args, "sndbuf", 0):
            (workdir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
            env["NANOSTREAM_PROFILE_SNDBUF"] = str(args.sndbuf)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (env.get("PYTHONPATH"), str(workdir)) if p
            )
        command = [args.twistd, "-n", "--pidfile=", "nanostream"]
        command += ["--secret-file", str(secret_file), "--ping-interval", "0"]
        command += ["--listen", f"tcp:{self.port}:interface=127.0.0.1"]
        command += ["--max-buffer-bytes", str(1 << 28)]
        if args.callgrind:
            python = Path(args.twistd).with_name("python")
            tool = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={args.callgrind}",
            ]
            command = [*tool, str(python), *command]
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.PIPE,
            stdout=(workdir / "server.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port)).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)
        self.spy: subprocess.Popen[bytes] | None = None

    def request(self) -> bytes:
        token = tokens.sign(
            self.secret,
            {"exp": int(time.time()) + 600, "jti": os.urandom(8).hex()},
        )
        origin = f"http://127.0.0.1:{self.port}"
        return (
            f"GET /?t={token} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n"
            "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0\r\n"
            "Accept-Language: en-US,en;q=0.9\r\nCache-Control: no-cache\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
            "\r\n\r\n"
        ).encode()

    def start_measuring(self) -> float:
        pid = self.process.pid
        if self.args.py_spy:
            self.spy = subprocess.Popen(
                [py_spy(), "record", "-r", "200", "-f", "raw"]
                + ["-o", self.args.py_spy, "--pid", str(pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
        if self.args.callgrind:
            subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True)
        return cpu_seconds(pid)

    def stop_measuring(self, started: float) -> dict[str, object]:
        pid = self.process.pid
        result: dict[str, object] = {"server_cpu_s": cpu_seconds(pid) - started}
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)
            self.spy.wait()
        if self.args.callgrind:
            subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True)
            time.sleep(1)
            dumps = sorted(Path(self.args.callgrind).parent.glob("*"))
            for dump in dumps:
                if not dump.name.startswith(Path(self.args.callgrind).name):
                    continue
                for line in dump.read_text(errors="replace").splitlines():
                    if line.startswith(("totals:", "summary:")):
                        result["instructions"] = int(line.split()[1])
        return result

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def run_slow(args: argparse.Namespace, server: Server) -> dict[str, object]:
    clients = []
    for _ in range(args.clients):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
        client.connect(("127.0.0.1", server.port))
        client.sendall(server.request())
        response = b""
        while b"\r\n\r\n" not in response:
            response += client.recv(4096)
        if not response.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"refused: {response[:40]!r}")
        client.setblocking(False)
        clients.append(client)
    line = b"x" * 90
    expect = (2 + len(line)) * args.lines
    received = dict.fromkeys(clients, 0)
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client, selectors.EVENT_READ)
    assert server.process.stdin is not None
    feed = server.process.stdin.fileno()
    os.set_blocking(feed, False)
    chunk = (line + b"\n") * args.chunk
    fed, pending, done = 0, b"", 0
    started = server.start_measuring()
    while done < len(clients):
        if fed < args.lines and not pending:
            pending, fed = chunk, fed + args.chunk
        if pending:
            with contextlib.suppress(BlockingIOError):
                pending = pending[os.write(feed, pending) :]
        for key, _ in selector.select(0):
            client = key.fileobj
            assert isinstance(client, socket.socket)
            try:
                data = client.recv(args.read)
            except BlockingIOError:
                continue
            received[client] += len(data)
            if not data or received[client] >= expect:
                selector.unregister(client)
                done += 1
        time.sleep(args.delay)
    result = server.stop_measuring(started)
    deliveries = fed * len(clients)
    result["deliveries"] = deliveries
    result["short_clients"] = sum(1 for n in received.values() if n != expect)
    cpu = float(result["server_cpu_s"])  # type: ignore[arg-type]
    result["deliveries_per_cpu_s"] = round(deliveries / cpu) if cpu else None
    return result


def run_handshake(args: argparse.Namespace, server: Server) -> dict[str, object]:
    requests = [server.request() for _ in range(args.count)]
    selector = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytes] = {}
    begun = done = refused = 0
    started = server.start_measuring()
    while done < args.count:
        while begun < args.count and begun - done < args.concurrency:
            client = socket.socket()
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect(("127.0.0.1", server.port))
            buffers[client] = b""
            selector.register(client, selectors.EVENT_WRITE, requests[begun])
            begun += 1
        for key, events in selector.select(1):
            client = key.fileobj
            assert isinstance(client, socket.socket)
            if events & selectors.EVENT_WRITE:
                client.send(key.data)
                selector.modify(client, selectors.EVENT_READ)
                continue
            data = client.recv(4096)
            buffers[client] += data
            if b"\r\n\r\n" in buffers[client] or not data:
                refused += not buffers[client].startswith(b"HTTP/1.1 101")
                selector.unregister(client)
                client.close()
                del buffers[client]
                done += 1
    time.sleep(0.3)
    result = server.stop_measuring(started)
    cpu = float(result["server_cpu_s"])  # type: ignore[arg-type]
    result["handshakes"] = args.count
    result["refused"] = refused
    result["handshakes_per_cpu_s"] = round(args.count / cpu) if cpu else None
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--twistd", default=str(Path(sys.executable).with_name("twistd"))
    )
    parser.add_argument("--py-spy", metavar="OUT", help="py-spy raw profile to OUT")
    parser.add_argument("--callgrind", metavar="OUT", help="run under callgrind")
    modes = parser.add_subparsers(dest="mode", required=True)
    slow = modes.add_parser("slow", help="fan-out to clients that read slowly")
    slow.add_argument("--clients", type=int, default=1000)
    slow.add_argument("--lines", type=int, default=3000)
    slow.add_argument("--chunk", type=int, default=5, help="lines fed per round")
    slow.add_argument("--read", type=int, default=300, help="bytes read per round")
    slow.add_argument("--delay", type=float, default=0.002, help="seconds per round")
    slow.add_argument("--rcvbuf", type=int, default=4096)
    slow.add_argument("--sndbuf", type=int, default=0, help="server SO_SNDBUF")
    burst = modes.add_parser("handshake", help="a burst of handshakes")
    burst.add_argument("--count", type=int, default=3000)
    burst.add_argument("--concurrency", type=int, default=50)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="nanostream-profile-") as workdir:
        server = Server(args, Path(workdir))
        try:
            run = run_slow if args.mode == "slow" else run_handshake
            result = run(args, server)
        finally:
            server.stop()
    print(json.dumps({"mode": args.mode, **result}))


if __name__ == "__main__":
    main()
