"""Peer server: the ``websockets`` library (asyncio, new API) and its broadcast().

``websockets`` is the most widely used Python WebSocket server; its
``broadcast()`` helper frames a message once and writes it to every open
connection without awaiting, which is the intended way to fan out.
Heartbeats and compression are off, as in the other servers under test.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

from common import PipeLines, TokenGate, is_text, parse_args, read_secret, ready
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    gate = TokenGate(read_secret(args.secret_file))
    clients: set[ServerConnection] = set()

    def check_token(connection: ServerConnection, request: Request) -> Response | None:
        if gate.admit_target(request.path):
            return None
        return connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")

    async def listen(connection: ServerConnection) -> None:
        clients.add(connection)
        try:
            # Client frames are read and dropped until the client goes away.
            async for _ in connection:
                pass
        finally:
            clients.discard(connection)

    def send(lines: list[bytes]) -> None:
        for line in lines:
            broadcast(clients, line, text=is_text(line))

    server = await serve(
        listen,
        args.host,
        args.port,
        process_request=check_token,
        ping_interval=None,
        compression=None,
        max_size=2**20,
    )
    ready(args.host, args.port)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    PipeLines(loop, send, done)
    await done
    server.close(close_connections=True)
    await asyncio.wait_for(server.wait_closed(), 5)


if __name__ == "__main__":
    asyncio.run(main())
