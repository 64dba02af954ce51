"""A compressing WebSocket upstream (Python websockets, permessage-deflate
on) for the gateway's tests: prints its port, then for each connection
sends the extensions it agreed as JSON and echoes every message."""
import asyncio
import json

from websockets.asyncio.server import serve


async def handler(ws) -> None:
    extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
    await ws.send(json.dumps({"extensions": extensions}))
    async for message in ws:
        await ws.send(message)


async def main() -> None:
    async with serve(handler, "127.0.0.1", 0, compression="deflate", max_size=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


asyncio.run(main())
