"""A compressing WebSocket client (Python websockets, permessage-deflate on)
for the gateway's tests: sends the JSON list of texts on stdin, then prints
one JSON line for the negotiated extensions and one per message received.
   python3 deflate_client.py URL RECEIVE_COUNT < sends.json"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect


async def main(url: str, receive: int) -> None:
    sends = json.load(sys.stdin)
    async with connect(url, compression="deflate", max_size=None) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        print(json.dumps({"extensions": extensions}), flush=True)
        for text in sends:
            await ws.send(text)
        for _ in range(receive):
            message = await ws.recv()
            print(json.dumps({"message": message}), flush=True)


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
