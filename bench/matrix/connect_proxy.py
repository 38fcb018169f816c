"""An HTTP CONNECT proxy for the benchmark that sends every tunnel to one
address: Sygnal (through its `proxy` setting) asks for
api.development.push.apple.com:443 and reaches the local APNS simulator instead.
Usage: connect_proxy.py LISTEN_PORT TARGET_HOST TARGET_PORT"""
import asyncio
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def handle(reader, writer, target):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        writer.close()  # a port probe, or not HTTP
        return
    if not head.startswith(b"CONNECT "):
        writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
        writer.close()
        return
    up_reader, up_writer = await asyncio.open_connection(*target)
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)


async def main():
    port, host, tport = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    server = await asyncio.start_server(lambda r, w: handle(r, w, (host, tport)), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


asyncio.run(main())
