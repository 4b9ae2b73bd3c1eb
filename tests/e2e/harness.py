"""Run the real ``twistd -n nanostream`` and talk to it as clients and producers.

The service under test is a separate process, so the test process needs no
reactor of its own: clients are ``websockets``' *synchronous* client, whose
every call takes a timeout, producers are plain sockets, and log lines are
read by one thread per output stream and awaited on a condition variable.
That keeps the tests ordinary blocking code that runs the same under
pytest and trial, in :class:`~twisted.trial.unittest.SynchronousTestCase`
classes, without an asyncio loop fighting the trial reactor for the thread.

Everything waits for an event (a log line, a message, a close, an exit)
with a bounded timeout; nothing sleeps a fixed time.  Every process is
stopped in cleanup: SIGTERM, a bounded wait, then SIGKILL.

The harness remembers the secret and every token it minted or sent, so
:meth:`Nanostream.assert_clean_log` can prove none of them reached the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import jwt
from certificates import self_signed_certificate  # noqa: F401  (re-exported)
from twisted.trial.unittest import SynchronousTestCase
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol

#: ``twistd`` of the interpreter running the tests (the project's venv).
TWISTD = str(Path(sys.executable).with_name("twistd"))

#: Bounds for every wait; generous because the machine may be busy.
START_TIMEOUT = 30.0
EVENT_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

LOOPBACK = "127.0.0.1"
LISTEN_LOOPBACK = f"tcp:0:interface={LOOPBACK}"

#: The subprotocol whose clients get ids, notices and resume.
V1 = "nanostream.v1"

_ID = re.compile(r"[0-9]+-[0-9]+")

_LISTENING = re.compile(r"(?P<what>websocket|source) listening on (?P<address>\S+)$")


@dataclass(frozen=True)
class Address:
    """Where a listener is bound: ``kind`` is ``tcp``, ``ssl`` or ``unix``."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> Address:
        """Read the ``tcp:127.0.0.1:8080`` form the service logs."""
        kind, _, rest = text.partition(":")
        if kind == "unix":
            return cls(kind, path=rest)
        host, _, port = rest.rpartition(":")
        return cls(kind, host=host.strip("[]"), port=int(port))


class LogReader:
    """Collects one output stream line by line, in a thread, and awaits lines."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.closed = False
        self._stream = stream
        self._changed = threading.Condition()
        self._thread = threading.Thread(
            target=self._read, name=f"log-{name}", daemon=True
        )
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in iter(self._stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        finally:
            self._stream.close()
            with self._changed:
                self.closed = True
                self._changed.notify_all()

    def mark(self) -> int:
        """A position: later waits may look only at lines after it."""
        with self._changed:
            return len(self.lines)

    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def since(self, index: int) -> list[str]:
        """The lines read so far from ``index`` on."""
        with self._changed:
            return self.lines[index:]

    def wait_for(
        self, pattern: str, *, after: int = 0, timeout: float = EVENT_TIMEOUT
    ) -> re.Match[str]:
        """The first line from ``after`` on that ``pattern`` searches in.

        Fails at once when the stream ends without one, else after ``timeout``.
        """
        return self.find(pattern, after=after, timeout=timeout)[1]

    def find(
        self, pattern: str, *, after: int = 0, timeout: float = EVENT_TIMEOUT
    ) -> tuple[int, re.Match[str]]:
        """Like :meth:`wait_for`, with the index of the matching line."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = after
        with self._changed:
            while True:
                while index < len(self.lines):
                    match = regex.search(self.lines[index])
                    if match is not None:
                        return index, match
                    index += 1
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    why = "ended" if self.closed else f"timed out after {timeout}s"
                    raise AssertionError(
                        f"{self.name} {why} without a line matching {pattern!r}:\n"
                        + "\n".join(self.lines)
                    )
                self._changed.wait(remaining)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


# -- tokens -----------------------------------------------------------------


def new_secret() -> str:
    """A random secret, distinctive enough to search the log for.

    384 bits, so PyJWT finds it long enough for HS384 too.
    """
    return secrets.token_urlsafe(48)


def mint(secret: str, *, lifetime: float = 300.0, **claims: Any) -> str:
    """An HS256 token valid for ``lifetime`` seconds, unique by its ``jti``.

    ``claims`` override the defaults; a claim given as None is left out.
    """
    now = time.time()
    payload: dict[str, Any] = {
        "exp": int(now + lifetime),
        "jti": secrets.token_hex(8),
    }
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, secret, algorithm="HS256")


def _b64(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned(**claims: Any) -> str:
    """An ``alg: none`` token: header and claims with an empty signature."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def percent_encoded(token: str) -> str:
    """Every character of ``token`` as ``%XX``: the same token on the wire."""
    return "".join(f"%{byte:02X}" for byte in token.encode("ascii"))


def padded(token: str) -> str:
    """The token with its signature segment ``=``-padded, still decodable."""
    missing = -len(token.rsplit(".", 1)[1]) % 4
    assert missing, "this signature needs no padding"
    return token + "=" * missing


# -- TLS --------------------------------------------------------------------


def trusting(cert_path: Path) -> ssl.SSLContext:
    """A client TLS context that trusts exactly ``cert_path``."""
    return ssl.create_default_context(cafile=str(cert_path))


# -- clients ----------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A handshake the server answered with an HTTP error instead of 101."""

    status: int
    peer: str
    """The client's address as the server logs it (``tcp4:127.0.0.1:PORT``)."""


def receive(client: ClientConnection, count: int) -> list[str | bytes]:
    """The next ``count`` messages, each awaited for at most EVENT_TIMEOUT."""
    return [client.recv(timeout=EVENT_TIMEOUT) for _ in range(count)]


def split_id(message: str | bytes) -> tuple[str, str | bytes]:
    """A ``nanostream.v1`` line message as its id and its line.

    The line keeps the message's type: text for a text message, bytes for
    a binary one.  A notice (``!gap``, ``!live``) or anything else without
    an id in front fails.
    """
    if isinstance(message, str):
        line_id, space, line = message.partition(" ")
        found: str | bytes = line
    else:
        raw_id, space, found = message.partition(b" ")
        line_id = raw_id.decode("ascii", "replace")
    if not space or _ID.fullmatch(line_id) is None:
        raise AssertionError(f"expected <id> <line>, got {message!r}")
    return line_id, found


def id_parts(line_id: str) -> tuple[int, int]:
    """``<ms>-<seq>`` as its two integers, the order ids compare in."""
    ms, _, seq = line_id.partition("-")
    return int(ms), int(seq)


def close_code(client: ClientConnection) -> int | None:
    """Await the server's close and return its code (None if it sent none).

    A message still arriving fails the wait: a close was expected.
    """
    try:
        message = client.recv(timeout=EVENT_TIMEOUT)
    except ConnectionClosed as e:
        return None if e.rcvd is None else e.rcvd.code
    raise AssertionError(f"expected a close, got the message {message!r}")


# -- the service --------------------------------------------------------------


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout)


def _child_environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        name: value for name, value in os.environ.items() if name != "NANOSTREAM_SECRET"
    }
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class Finished:
    """A twistd run that ended on its own (a usage error, say)."""

    status: int
    stdout: str
    stderr: str


def run_twistd(
    args: Sequence[str],
    directory: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> Finished:
    """Run ``twistd ARGS`` in ``directory`` to completion, stdin empty.

    If twistd daemonized after all, the daemon named in ``twistd.pid`` is
    killed before returning, so a failing test leaves nothing behind.
    """
    try:
        done = subprocess.run(
            [TWISTD, *args],
            cwd=directory,
            env=_child_environment(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
    finally:
        _kill_daemon(directory / "twistd.pid")
    return Finished(
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


def _kill_daemon(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Nanostream:
    """One ``twistd -n nanostream`` process, its log, its clients and tokens.

    Start it with :meth:`start`; use it as a context manager or call
    :meth:`stop`.  ``secret`` is None for ``--no-auth``.
    """

    def __init__(
        self,
        directory: Path,
        args: Sequence[str],
        *,
        secret: str | None,
        listeners: int,
        endpoint_source: bool,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.secret = secret
        self.args = [TWISTD, "-n", "--pidfile=", "nanostream", *args]
        self.sent_tokens: list[str] = []
        self.clients: list[ClientConnection] = []
        self.status: int | None = None
        self.process = subprocess.Popen(
            self.args,
            cwd=directory,
            env=_child_environment(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.log = LogReader(self.process.stdout, "stdout")
        self.errors = LogReader(self.process.stderr, "stderr")
        try:
            self.listening = self._await_listening(listeners, endpoint_source)
        except AssertionError as e:
            self.stop()
            raise AssertionError(f"{e}\nstderr:\n{self.errors.text()}") from None
        except BaseException:
            self.stop()
            raise

    @classmethod
    def start(
        cls,
        directory: Path,
        *,
        listen: Sequence[str] = (LISTEN_LOOPBACK,),
        source: str | None = None,
        auth: bool = True,
        options: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Nanostream:
        """Start the service and wait until every listener is bound.

        With ``auth`` a fresh secret goes in ``directory/secret`` and is
        passed as ``--secret-file``; without it the service runs ``--no-auth``.
        """
        args: list[str] = []
        secret = None
        if auth:
            secret = new_secret()
            (directory / "secret").write_text(secret + "\n")
            args += ["--secret-file", "secret"]
        else:
            args.append("--no-auth")
        for description in listen:
            args += ["--listen", description]
        if source is not None:
            args += ["--source", source]
        # A machine busy with other tests can take seconds over a TLS
        # handshake; tests of the timeout itself pass their own, which wins.
        args += ["--handshake-timeout", "60"]
        args += list(options)
        return cls(
            directory,
            args,
            secret=secret,
            listeners=len(listen),
            endpoint_source=source not in (None, "stdio"),
            env=env,
        )

    def _await_listening(
        self, listeners: int, endpoint_source: bool
    ) -> dict[str, list[Address]]:
        found: dict[str, list[Address]] = {"websocket": [], "source": []}
        position = 0
        wanted = listeners + (1 if endpoint_source else 0)
        for _ in range(wanted):
            index, match = self.log.find(
                _LISTENING.pattern, after=position, timeout=START_TIMEOUT
            )
            found[match["what"]].append(Address.parse(match["address"]))
            position = index + 1
        return found

    # -- addresses ----------------------------------------------------------

    @property
    def websocket(self) -> Address:
        """The first WebSocket listener."""
        return self.listening["websocket"][0]

    @property
    def source(self) -> Address:
        """The endpoint source producers connect to."""
        return self.listening["source"][0]

    def url(self, query: str = "", *, address: Address | None = None) -> str:
        address = address or self.websocket
        if address.kind == "unix":
            return f"ws://localhost/{query}"
        scheme = "wss" if address.kind == "ssl" else "ws"
        return f"{scheme}://{address.host}:{address.port}/{query}"

    def _socket(self, address: Address) -> socket.socket:
        """A connected stream socket to a tcp, ssl or unix listener."""
        if address.kind != "unix":
            return socket.create_connection(
                (address.host, address.port), timeout=EVENT_TIMEOUT
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(EVENT_TIMEOUT)
        try:
            # A relative path is relative to the service's working directory.
            sock.connect(str(self.directory / address.path))
        except BaseException:
            sock.close()
            raise
        return sock

    # -- tokens -------------------------------------------------------------

    def mint(self, **claims: Any) -> str:
        """A valid token for this service (see :func:`mint`)."""
        assert self.secret is not None, "this service runs --no-auth"
        return mint(self.secret, **claims)

    # -- clients ------------------------------------------------------------

    def _query(self, token: str | None, query: str | None, since: str | None) -> str:
        if query is not None:
            self.sent_tokens.append(query)
            return query
        parts = []
        if token is not None:
            self.sent_tokens.append(token)
            parts.append(f"t={token}")
        if since is not None:
            parts.append(f"since={since}")
        return "?" + "&".join(parts) if parts else ""

    def _open(
        self,
        token: str | None,
        query: str | None,
        origin: str | None,
        tls: ssl.SSLContext | None,
        address: Address | None,
        subprotocols: Sequence[str] = (),
        since: str | None = None,
        max_queue: int | None = 16,
    ) -> tuple[socket.socket, Callable[[], ClientConnection]]:
        address = address or self.websocket
        sock = self._socket(address)
        uri = self.url(self._query(token, query, since), address=address)
        offered = [Subprotocol(name) for name in subprotocols] or None

        def handshake() -> ClientConnection:
            return connect(
                uri,
                sock=sock,
                ssl=tls,
                origin=None if origin is None else Origin(origin),
                subprotocols=offered,
                proxy=None,
                compression=None,
                open_timeout=EVENT_TIMEOUT,
                close_timeout=EVENT_TIMEOUT,
                ping_interval=None,
                max_queue=max_queue,
                legacy=True,
            )

        return sock, handshake

    def connect(
        self,
        token: str | None = None,
        *,
        query: str | None = None,
        origin: str | None = None,
        tls: ssl.SSLContext | None = None,
        address: Address | None = None,
        subprotocols: Sequence[str] = (),
        since: str | None = None,
        max_queue: int | None = 16,
    ) -> ClientConnection:
        """An open client, closed again by :meth:`stop`.

        :param token: sent as ``?t=TOKEN``.
        :param query: the whole query string, for tokens spelled by hand.
        :param subprotocols: offered in ``Sec-WebSocket-Protocol``.
        :param since: sent as ``&since=SINCE`` after the token.
        :param max_queue: messages the client buffers before it stops
            reading; None reads on, so that a clean close completes while
            lines keep coming.
        """
        sock, handshake = self._open(
            token, query, origin, tls, address, subprotocols, since, max_queue
        )
        try:
            client = handshake()
        except BaseException:
            sock.close()
            raise
        self.clients.append(client)
        return client

    def connect_v1(
        self, token: str, since: str | None = None, *, max_queue: int | None = 16
    ) -> ClientConnection:
        """An open ``nanostream.v1`` client, resuming after ``since`` if given.

        Fails unless the server selected the subprotocol.
        """
        client = self.connect(
            token, subprotocols=[V1], since=since, max_queue=max_queue
        )
        if client.subprotocol != V1:
            raise AssertionError(f"the server selected {client.subprotocol!r}")
        return client

    def refuse(
        self,
        token: str | None = None,
        *,
        query: str | None = None,
        origin: str | None = None,
        subprotocols: Sequence[str] = (),
        since: str | None = None,
    ) -> Refusal:
        """Attempt a handshake (over TCP) that must be refused; how it was."""
        sock, handshake = self._open(
            token, query, origin, None, None, subprotocols, since
        )
        peer = "tcp4:{}:{}".format(*sock.getsockname()[:2])
        try:
            client = handshake()
        except InvalidStatus as e:
            sock.close()
            return Refusal(e.response.status_code, peer)
        except BaseException:
            sock.close()
            raise
        client.close()
        raise AssertionError(f"the handshake from {peer} was accepted")

    # -- the source ---------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write bytes to the service's stdin, unbuffered."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(data)
        stdin.flush()

    def close_stdin(self) -> None:
        stdin = self.process.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def produce(self) -> socket.socket:
        """A producer connected to the endpoint source; the caller closes it."""
        return self._socket(self.source)

    # -- the process --------------------------------------------------------

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Await the exit and the end of both logs; the exit status."""
        self.status = self.process.wait(timeout)
        self._finish_logs()
        return self.status

    def _finish_logs(self) -> None:
        self.log.join(STOP_TIMEOUT)
        self.errors.join(STOP_TIMEOUT)

    def stop(self) -> int:
        """Close the clients, stop the process (SIGTERM, then SIGKILL)."""
        for client in self.clients:
            client.close()
        self.status = stop_process(self.process, STOP_TIMEOUT)
        self.close_stdin()
        self._finish_logs()
        return self.status

    def output(self) -> str:
        """Everything the process wrote, stdout then stderr."""
        return self.log.text() + "\n" + self.errors.text()

    def assert_clean_log(self) -> None:
        """No secret, no token (as sent or decoded) and no traceback in the log."""
        output = self.output()
        problems = []
        if self.secret is not None and self.secret in output:
            problems.append("the secret")
        for index, sent in enumerate(self.sent_tokens):
            for form in _token_forms(sent):
                if form in output:
                    problems.append(f"sent token #{index} ({len(form)} chars)")
        if "Traceback" in output:
            problems.append("a traceback")
        if problems:
            raise AssertionError(f"the log shows {', '.join(problems)}:\n{output}")

    def __enter__(self) -> Nanostream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _token_forms(sent: str) -> set[str]:
    """What of a sent token or query must not show: itself and its parts.

    The signature and the claims segment are each distinctive enough that
    finding either means the token leaked, cut or not.
    """
    value = sent.removeprefix("?t=")
    forms = {sent, value, *value.split(".")}
    return {form for form in forms if len(form) >= 16}


class ServiceTestCase(SynchronousTestCase):
    """A trial test case that starts services in a fresh temporary directory.

    Each service is stopped in cleanup and its log then checked for secrets,
    tokens and tracebacks, so every test also tests that.
    """

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="nanostream-e2e-"))
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)

    def start(self, **kwargs: Any) -> Nanostream:
        """:meth:`Nanostream.start` in this test's directory, cleaned up after."""
        service = Nanostream.start(self.directory, **kwargs)
        self.addCleanup(service.assert_clean_log)
        self.addCleanup(self._show_log, service)
        self.addCleanup(service.stop)
        return service

    def _show_log(self, service: Nanostream) -> None:
        """Put the service's log on stdout, which pytest shows for failed tests."""
        sys.stdout.write(f"--- {' '.join(service.args[1:])}\n{service.output()}\n")

    def run_twistd(self, args: Sequence[str], **kwargs: Any) -> Finished:
        return run_twistd(args, self.directory, **kwargs)


class SharedServiceTestCase(SynchronousTestCase):
    """Test cases sharing one service per class, for checks that leave no trace.

    The service (started with :attr:`options` as :meth:`Nanostream.start`
    keywords) is :attr:`service`; tests must not change its state for the
    others (fresh tokens for each test, log positions via ``log.mark()``).
    It lives from ``setUpClass`` to ``tearDownClass``, which then checks its
    log.  pytest, the project's runner, calls those class fixtures; trial's
    own runner does not, so these classes need pytest.
    """

    options: dict[str, Any] = {}
    service: Nanostream
    directory: Path

    @classmethod
    def setUpClass(cls) -> None:
        cls.directory = Path(tempfile.mkdtemp(prefix="nanostream-e2e-"))
        try:
            cls.service = Nanostream.start(cls.directory, **cls.options)
        except BaseException:
            shutil.rmtree(cls.directory, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            cls.service.stop()
            cls.service.assert_clean_log()
        finally:
            shutil.rmtree(cls.directory, ignore_errors=True)
