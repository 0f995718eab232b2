"""A real WebSocket peer for gale's tests (Debian's python3-websockets).

  websocket.py serve NAME   echo server on 127.0.0.1, a free port; prints
                            the port, then answers each message with
                            "NAME: message".
  websocket.py client URL   connects, prints "open"; then sends each line
                            read from stdin and prints the reply; prints
                            "closed CODE" when the connection closes.
"""

import asyncio
import sys

import websockets


async def serve(name):
    async def echo(ws, *_path):
        try:
            async for message in ws:
                await ws.send(f"{name}: {message}")
        except websockets.ConnectionClosed:
            pass  # gale cut it (idle timeout): what the tests expect

    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


async def client(url):
    loop = asyncio.get_running_loop()
    try:
        async with websockets.connect(url, open_timeout=5, close_timeout=2) as ws:
            print("open", flush=True)
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    await ws.close()
                    print(f"closed {ws.close_code}", flush=True)
                    return
                await ws.send(line.rstrip("\n"))
                reply = await asyncio.wait_for(ws.recv(), 10)
                print(reply, flush=True)
    except websockets.ConnectionClosed as e:
        print(f"closed {e.code}", flush=True)
    except (OSError, websockets.InvalidHandshake, asyncio.TimeoutError) as e:
        print(f"failed {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
    mode, arg = sys.argv[1], sys.argv[2]
    asyncio.run(serve(arg) if mode == "serve" else client(arg))
