#!/usr/bin/env python3
"""Idle-connection memory: what a proxy's resident memory grows by when it
holds N client connections that do nothing.

    idle.py KIND PORT N PIDS

KIND is what each connection does before it goes idle:
  h1      one HTTP/1.1 request (GET /small) and its whole response;
          the connection stays open (keep-alive)
  h2      the HTTP/2 preface and SETTINGS (prior knowledge), until the
          server's SETTINGS came and ours was acknowledged; then our
          SETTINGS ACK and a PING, until its PING ACK, which proves the
          server has read everything we sent
  silent  connect and send nothing
  smtp    until the 220 greeting (through an SMTP proxy)
PIDS is a comma-separated list of the proxy's processes (nginx: master and
workers): their VmRSS is summed.

Prints one line: "rss_before_kib rss_after_kib n closed fds_before
fds_after rss_half_kib slope_bytes" where closed counts connections the
proxy had closed by the time the memory was read (they would make the
figure too low), rss_half_kib is the RSS once the first half of the
connections was set up (the growth over the second half should match the
whole: a proxy giving memory back to the system while it is measured
would make them differ), and slope_bytes is the least-squares slope of
RSS over the connection count, read after each tenth of them: the cost
of one more connection. RSS can grow in steps (mimalloc's heap is
backed by 2 MiB transparent huge pages, so gale's grows 2 MiB at a
time: 0.2 KiB per connection over 10,000), which the slope averages
out where (after - before) / n is off by up to one step. Readiness is read from the connections (responses,
SETTINGS, PING ACK, 220), never waited for with sleeps; for `silent`,
where nothing comes back, from the proxy's own descriptor count (each
accepted connection is one descriptor).

All connections come from 127.0.0.1: one source address has ~28,000
ephemeral ports per destination, more than the descriptor limit lets one
process hold.

Bounded: at most CONCURRENT connections are being set up at once (the
backends see at most that many requests at once), and the whole run gives
up after TIMEOUT seconds.
"""
import asyncio
import os
import resource
import socket
import struct
import sys
import time

CONCURRENT = 64
TIMEOUT = 120.0
# RSS is read after each of this many equal parts of the connections.
STEPS = 10
# Connections opened and closed before the baseline is read, so that
# what a proxy sets up once, on its first connections of a kind (pools,
# tables), is not counted per connection.
WARM = 32

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY = 4, 6, 7
ACK = 1


def frame(kind, flags, payload=b"", stream=0):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


async def recv_some(loop, s, what):
    data = await loop.sock_recv(s, 65536)
    if not data:
        raise ConnectionError(f"closed by the proxy before {what}")
    return data


async def h1(loop, s):
    await loop.sock_sendall(s, b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += await recv_some(loop, s, "the response head")
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    if lines[0].split()[1] != b"200":
        raise ConnectionError(f"status {lines[0]!r}")
    length = next((int(l.split(b":", 1)[1]) for l in lines[1:] if l.lower().startswith(b"content-length:")), None)
    if length is None:
        # Chunked: read until the last chunk.
        while not body.endswith(b"0\r\n\r\n"):
            body += await recv_some(loop, s, "the response body")
    else:
        while len(body) < length:
            body += await recv_some(loop, s, "the response body")


async def h2(loop, s):
    await loop.sock_sendall(s, H2_PREFACE + frame(SETTINGS, 0))
    buf, got_settings, got_ack, pinged = b"", False, False, False
    while True:
        buf += await recv_some(loop, s, "SETTINGS and PING ACK")
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            kind, flags = buf[3], buf[4]
            buf = buf[9 + n:]
            if kind == GOAWAY:
                raise ConnectionError("GOAWAY from the proxy")
            if kind == SETTINGS and not flags & ACK:
                got_settings = True
            elif kind == SETTINGS:
                got_ack = True
            elif kind == PING and flags & ACK:
                return
        if got_settings and got_ack and not pinged:
            await loop.sock_sendall(s, frame(SETTINGS, ACK) + frame(PING, 0, b"idle.py!"))
            pinged = True


async def smtp(loop, s):
    buf = b""
    while not any(l.startswith(b"220 ") for l in buf.split(b"\r\n")):
        buf += await recv_some(loop, s, "the 220 greeting")


async def silent(loop, s):
    pass


def rss_kib(pids):
    total = 0
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return total


def fds(pids):
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in pids)


async def open_many(kind, port, n):
    """n connections, each set up by `kind`; returns their sockets."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONCURRENT)
    socks = []

    async def one():
        async with gate:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            socks.append(s)
            await loop.sock_connect(s, ("127.0.0.1", port))
            await kind(loop, s)

    await asyncio.gather(*(one() for _ in range(n)))
    return socks


def still_open(s):
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


async def main():
    kind_name, port, n, pids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
    kind = {"h1": h1, "h2": h2, "silent": silent, "smtp": smtp}[kind_name]
    # Our own limit: N sockets in this one process.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if n + 100 > hard:
        sys.exit(f"{n} connections need more descriptors than the hard limit ({hard})")
    deadline = time.monotonic() + TIMEOUT

    pre_fds = fds(pids)
    warm = await asyncio.wait_for(open_many(kind, port, WARM), deadline - time.monotonic())
    for s in warm:
        s.close()
    # Silent and SMTP connections hold nothing once closed (no pooled
    # backend connections): the proxy has let the warm-up ones go when its
    # descriptor count is back down, and only then is the baseline read
    # (the silent count below starts from it). HTTP keeps backend
    # connections pooled, so there the count never comes back down; at
    # most WARM connections' worth would be counted in the baseline.
    if kind_name in ("silent", "smtp"):
        settle = min(deadline, time.monotonic() + 5)
        while fds(pids) > pre_fds and time.monotonic() < settle:
            await asyncio.sleep(0.01)
    base_fds = fds(pids)
    before = rss_kib(pids)

    async def held(count, socks):
        """Sets up `count` more connections; returns once the proxy has all."""
        socks += await asyncio.wait_for(open_many(kind, port, count), deadline - time.monotonic())
        if kind_name == "silent":
            # Nothing comes back on a silent connection: it is held once
            # the proxy has accepted it, i.e. once it has a descriptor.
            while fds(pids) < base_fds + len(socks):
                if time.monotonic() > deadline:
                    sys.exit(f"the proxy accepted only {fds(pids) - base_fds} of {len(socks)} silent connections in {TIMEOUT:.0f} s")
                await asyncio.sleep(0.01)

    socks = []
    points = [(0, before)]   # (connections, RSS KiB)
    half = before
    for step in range(1, STEPS + 1):
        await held(n * step // STEPS - len(socks), socks)
        points.append((len(socks), rss_kib(pids)))
        if step == STEPS // 2:
            half = points[-1][1]
    after = points[-1][1]
    after_fds = fds(pids)
    closed = sum(not still_open(s) for s in socks)
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    print(before, after, n, closed, base_fds, after_fds, half, round(slope * 1024))
    for s in socks:
        s.close()


asyncio.run(main())
