"""Instructions per handshake of nanostream, counted by callgrind.

A busy machine makes CPU-time figures wander; the number of instructions
the server executes per handshake does not.  This runs ``twistd -n
nanostream`` under ``valgrind --tool=callgrind`` twice, once with ``--few``
and once with ``--many`` handshakes (each: a fresh token, the 101, a clean
close from the client, one at a time), and prints the difference of the two
totals divided by the difference of the counts, so start-up and shutdown
cancel out::

    .venv/bin/python bench/handshake_instructions.py --twistd .venv/bin/twistd

``--keep DIR`` keeps the callgrind outputs for ``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tokens import mint  # noqa: E402

SECRET = b"callgrind-handshake-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def handshake(port: int, token: str) -> None:
    """One client: upgrade, read the 101, close cleanly, wait for the server."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(
            f"GET /?t={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit(f"closed during handshake: {data[:80]!r}")
            data += chunk
        if not data.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"refused: {data.splitlines()[0]!r}")
        # A masked close frame, code 1000 (mask of zeros keeps it readable).
        s.sendall(b"\x88\x82\x00\x00\x00\x00\x03\xe8")
        while s.recv(4096):
            pass


def run(twistd: str, count: int, out: Path) -> int:
    """Total instructions of one server life with ``count`` handshakes."""
    port = free_port()
    secret = out.parent / "secret"
    secret.write_bytes(SECRET)
    log = out.with_suffix(".log")
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        twistd,
        "-n",
        "--pidfile=",
        "nanostream",
        "--secret-file",
        str(secret),
        "--ping-interval",
        "0",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=log_file, stderr=log_file, env=env
        )
        deadline = time.monotonic() + 300
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"server did not start: see {log}") from None
                time.sleep(0.5)
        for _ in range(count):
            handshake(port, mint(SECRET))
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=300)
    totals = re.findall(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
    return int(totals[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twistd", default=".venv/bin/twistd")
    parser.add_argument("--few", type=int, default=100)
    parser.add_argument("--many", type=int, default=600)
    parser.add_argument("--keep", type=Path, help="directory for callgrind outputs")
    args = parser.parse_args()
    directory = args.keep or Path(tempfile.mkdtemp(prefix="handshake-cg-"))
    directory.mkdir(parents=True, exist_ok=True)
    # The first start after an install rebuilds twistd's plugin cache: not in
    # either count.
    subprocess.run([args.twistd, "nanostream", "--help"], capture_output=True)
    few = run(args.twistd, args.few, directory / "few.out")
    many = run(args.twistd, args.many, directory / "many.out")
    per = (many - few) / (args.many - args.few)
    print(f"{per:,.0f} instructions per handshake ({few:,} / {many:,} in total)")


if __name__ == "__main__":
    main()
