"""A TCP proxy whose connections a test cuts, and a paced feed of lines.

Clients that must lose their connection mid-stream (a browser, the example
client) connect through :class:`CuttingProxy` instead of to the service:
:meth:`CuttingProxy.cut` resets every connection it carries, so both ends
see the TCP connection end with no WebSocket close, as when a network path
fails.  While :meth:`CuttingProxy.hold` is in force, new connections are
accepted but not forwarded until :meth:`CuttingProxy.release`, so a test can
keep a client away for as long as it needs.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import threading

from .harness import EVENT_TIMEOUT, LOOPBACK, Address

#: SO_LINGER on, zero seconds: close() resets the connection at once.
_RESET = struct.pack("ii", 1, 0)


class CuttingProxy:
    """Forwards each connection to ``target``; :meth:`cut` ends them all."""

    def __init__(self, target: Address) -> None:
        self._target = (target.host, target.port)
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._passing = threading.Event()
        self._passing.set()
        self._closed = False
        #: Connections accepted so far.
        self.accepted = 0
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    def url(self, path: str = "/") -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._passing.wait()
        try:
            upstream = socket.create_connection(self._target, timeout=EVENT_TIMEOUT)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self._closed:
                client.close()
                upstream.close()
                return
            self._open.update((client, upstream))
        threading.Thread(
            target=self._pump, args=(upstream, client), daemon=True
        ).start()
        self._pump(client, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # cut, or the other side went away

    def cut(self) -> int:
        """Reset every connection carried now; how many sockets were cut."""
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                # Wakes the pump blocked in recv; close() alone would not.
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        return len(sockets)

    def hold(self) -> None:
        """Accept new connections but forward none until :meth:`release`."""
        self._passing.clear()

    def release(self) -> None:
        self._passing.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._listener.close()
        self.release()
        self.cut()


#: Writes ``line 1`` .. ``line TOTAL`` into a producer socket, RATE a second.
_FEED = """
import socket, sys, time
host, port, total, rate = sys.argv[1:]
port, total, rate = int(port), int(total), float(rate)
start = time.monotonic()
with socket.create_connection((host, port), timeout=10) as producer:
    for n in range(1, total + 1):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        producer.sendall(b"line %d\\n" % n)
"""


def feed(source: Address, total: int, rate: float) -> subprocess.Popen[bytes]:
    """A process writing ``line 1`` .. ``line total`` into an endpoint source.

    A process of its own keeps its pace apart from the test's threads.
    """
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _FEED,
            source.host,
            str(source.port),
            str(total),
            str(rate),
        ]
    )


def numbered(first: int, last: int) -> list[str]:
    """The lines the feed writes, ``line first`` .. ``line last``."""
    return [f"line {n}" for n in range(first, last + 1)]
