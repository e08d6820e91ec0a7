#!/usr/bin/env python3
"""A TCP proxy that delays every byte by DELAY_MS in each direction (2 x DELAY_MS of
round trip added), for the replication benchmark: a high-latency WAN link on loopback
without root (netem would need a network namespace).

Each direction is a reader that timestamps what it reads and a writer that sends it
DELAY_MS later, with at most WINDOW bytes in flight per direction (the pipe's capacity:
a full pipe stops the reader, so TCP's and HTTP/2's flow control see a long fat pipe,
not an infinite buffer). Bytes forwarded client->server and back are written as JSON to
STATS after every connection closes and every second.

usage: delay_proxy.py LISTEN_PORT TARGET_HOST:PORT DELAY_MS STATS [WINDOW_BYTES]
"""
import asyncio
import json
import sys
import time

totals = {"up": 0, "down": 0, "connections": 0}


async def pump(reader, writer, delay, window, key):
    queue = asyncio.Queue()
    in_flight = 0
    room = asyncio.Condition()

    async def read_side():
        nonlocal in_flight
        while True:
            data = await reader.read(65536)
            async with room:
                await room.wait_for(lambda: in_flight < window)
                in_flight += len(data)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                return

    async def write_side():
        nonlocal in_flight
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                try:
                    writer.write_eof()
                except OSError:
                    pass
                return
            writer.write(data)
            await writer.drain()
            totals[key] += len(data)
            async with room:
                in_flight -= len(data)
                room.notify_all()

    await asyncio.gather(read_side(), write_side())


async def main():
    port, target, delay_ms, stats = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    window = int(sys.argv[5]) if len(sys.argv) > 5 else 64 << 20
    host, tport = target.rsplit(":", 1)
    delay = delay_ms / 1000.0

    def dump():
        with open(stats + ".tmp", "w") as f:
            json.dump(totals, f)
        import os
        os.replace(stats + ".tmp", stats)

    async def handle(cr, cw):
        totals["connections"] += 1
        try:
            sr, sw = await asyncio.open_connection(host, int(tport))
            await asyncio.gather(
                pump(cr, sw, delay, window, "up"), pump(sr, cw, delay, window, "down")
            )
        except (ConnectionError, OSError):
            pass
        finally:
            cw.close()
            dump()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    dump()
    async with server:
        while True:
            await asyncio.sleep(1)
            dump()


asyncio.run(main())
