"""Peer server: picows on uvloop, the fastest Python WebSocket stack we know.

It answers the question "how fast can Python go on this machine?" with the
same contract as nanostream (see common.py). picows leaves broadcasting to
the application, which can do it two ways:

* per line (the default): each line is sent to each client with
  ``WSTransport.send``, which frames and writes in C;
* ``--batched``: the coalescing nanostream does. The lines one read of the
  source brought are framed once into one buffer (one frame per line) and
  that buffer is written once per client, to the connection's transport.
  Nothing waits to gather a batch.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import uvloop
from common import PipeLines, TokenGate, frames, is_text, parse_args, read_secret, ready
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


def unauthorized() -> WSUpgradeResponseWithListener:
    """A fresh 401 each time: picows adds its headers to the response object
    it sends, so a shared one would grow a Content-Length per rejection."""
    response = WSUpgradeResponse.create_error_response(
        HTTPStatus.UNAUTHORIZED, b"unauthorized\n"
    )
    return WSUpgradeResponseWithListener(response, None)


class Hub:
    """The set of open client transports, and the broadcast to them."""

    def __init__(self, batched: bool) -> None:
        self.clients: set[WSTransport] = set()
        self.broadcast = self._batch if batched else self._per_line

    def _per_line(self, lines: list[bytes]) -> None:
        for line in lines:
            kind = WSMsgType.TEXT if is_text(line) else WSMsgType.BINARY
            for transport in self.clients:
                transport.send(kind, line)

    def _batch(self, lines: list[bytes]) -> None:
        data = frames(lines)
        for transport in self.clients:
            transport.underlying_transport.write(data)

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


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0], batched=True)
    gate = TokenGate(read_secret(args.secret_file))
    hub = Hub(args.batched)

    def accept(request: WSUpgradeRequest) -> Client | WSUpgradeResponseWithListener:
        if gate.admit_target(request.path.decode("latin-1")):
            return Client(hub)
        return unauthorized()

    server = await ws_create_server(accept, args.host, args.port)
    ready(args.host, args.port)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    PipeLines(loop, hub.broadcast, done)
    await done
    server.close()
    hub.close_all()
    await asyncio.sleep(0.1)  # let the close frames reach the clients


if __name__ == "__main__":
    uvloop.run(main())
