"""Peer server: picows on uvloop, the fastest Python WebSocket stack we know.

It answers the question "how fast can Python go on this machine?" with the
same contract as nanostream (see common.py). picows leaves broadcasting to
the application, so each line is sent to each client with
``WSTransport.send``, which frames and writes in C.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from common import LineSplitter, TokenGate, as_text, parse_args, read_secret, ready
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

_UNAUTHORIZED = WSUpgradeResponse.create_error_response(401, b"unauthorized\n")


class Hub:
    """The set of open client transports, and the broadcast to them."""

    def __init__(self) -> None:
        self.clients: set[WSTransport] = set()

    def broadcast(self, line: bytes) -> None:
        kind = WSMsgType.BINARY if as_text(line) is None else WSMsgType.TEXT
        for transport in self.clients:
            transport.send(kind, line)

    def close_all(self) -> None:
        for transport in list(self.clients):
            transport.send_close(WSCloseCode.GOING_AWAY)
            transport.disconnect()


class Client(WSListener):
    """One listening client: frames it sends are read and dropped."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._hub.clients.add(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._hub.clients.discard(transport)


class StdinReader(asyncio.Protocol):
    """Broadcast every line read from stdin; resolve ``done`` at EOF."""

    def __init__(self, hub: Hub, done: asyncio.Future[None]) -> None:
        self._hub = hub
        self._done = done
        self._lines = LineSplitter()

    def data_received(self, data: bytes) -> None:
        for line in self._lines.feed(data):
            self._hub.broadcast(line)

    def eof_received(self) -> bool:
        for line in self._lines.finish():
            self._hub.broadcast(line)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_result(None)


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    gate = TokenGate(read_secret(args.secret_file))
    hub = Hub()

    def accept(request: WSUpgradeRequest) -> Client | WSUpgradeResponseWithListener:
        if gate.admit_target(request.path.decode("latin-1")):
            return Client(hub)
        return WSUpgradeResponseWithListener(_UNAUTHORIZED, None)

    server = await ws_create_server(accept, args.host, args.port)
    ready(args.host, args.port)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    await loop.connect_read_pipe(lambda: StdinReader(hub, done), sys.stdin.buffer)
    await done
    server.close()
    hub.close_all()
    await asyncio.sleep(0.1)  # let the close frames reach the clients


if __name__ == "__main__":
    uvloop.run(main())
