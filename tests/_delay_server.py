"""A tiny HTTP server for benchmark tests: answers every request after a fixed delay.

    python _delay_server.py PORT DELAY_MS [--blocking] [--stall-after N --stall-s S]

--blocking: the delay blocks the event loop (one request at a time: latency grows with
concurrency). --stall-after N: after N requests, freeze the whole server for S seconds once.
"""

from __future__ import annotations

import argparse
import asyncio
import time

parser = argparse.ArgumentParser()
parser.add_argument("port", type=int)
parser.add_argument("delay_ms", type=float)
parser.add_argument("--blocking", action="store_true")
parser.add_argument("--stall-after", type=int, default=0)
parser.add_argument("--stall-s", type=float, default=1.0)
args = parser.parse_args()
served = 0
BODY = b'{"predictions":[0]}'
REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global served
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            served += 1
            if args.stall_after and served == args.stall_after:
                time.sleep(args.stall_s)  # freezes everything, as a GC pause or a hung disk would
            if args.blocking:
                time.sleep(args.delay_ms / 1000)
            else:
                await asyncio.sleep(args.delay_ms / 1000)
            writer.write(REPLY)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=1024)
    async with server:
        await server.serve_forever()


asyncio.run(main())
