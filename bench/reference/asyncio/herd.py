#!/usr/bin/env python3
"""A reference herd server in Python asyncio, the stack the design paper chose.

Written the idiomatic way for its stack (one event loop, one coroutine per connection,
asyncio streams), to herd's wire contract for IAMAT, `?` and flooding, so that
bench/compare-stacks.sh can compare herd against it. WHATSAT answers from a fixed small
place list. Peer links are persistent TCP connections carrying text UPDATE lines (see
bench/reference/README.md). Standard library only; `--uvloop` uses uvloop when installed.

Usage: herd.py [--uvloop] serve NAME --config HERD.toml
"""

import argparse
import asyncio
import json
import re
import sys
import time
import tomllib

MAX_LINE = 64 * 1024
# Exactly SP HT CR LF FF VT: Python's bytes.split()/strip() with no argument use this set.
WS = b" \t\r\n\x0c\x0b"
LOCATION = re.compile(rb"([+-])(\d+)(?:\.(\d+))?([+-])(\d+)(?:\.(\d+))?\Z")
TIME = re.compile(rb"(\d+)(?:\.(\d+))?\Z")
RADIUS = re.compile(rb"\d+(?:\.\d+)?\Z")
BOUND = re.compile(rb"\d+\Z")
PLACES = [
    {"name": "Royce Hall", "lat": 34.0729, "lng": -118.4422},
    {"name": "Boelter Hall", "lat": 34.0692, "lng": -118.4431},
    {"name": "Powell Library", "lat": 34.0716, "lng": -118.4421},
]


def within(sign, whole, frac, bound):
    """Whether a signed decimal `whole.frac` lies in [-bound, bound], exactly."""
    w = int(whole)
    return w < bound or (w == bound and (frac is None or frac.strip(b"0") == b""))


def parse_location(b):
    m = LOCATION.match(b)
    if not m:
        return None
    s1, w1, f1, s2, w2, f2 = m.groups()
    if not (within(s1, w1, f1, 90) and within(s2, w2, f2, 180)):
        return None
    return (float(s1 + w1 + b"." + (f1 or b"0")), float(s2 + w2 + b"." + (f2 or b"0")))


def parse_time_ns(b):
    """POSIX seconds `D+[.D+]` as integer nanoseconds (more than nine digits are cut)."""
    m = TIME.match(b)
    if not m:
        return None
    whole, frac = m.groups()
    return int(whole) * 1_000_000_000 + int(((frac or b"") + b"000000000")[:9])


def time_diff(ns):
    sign = b"+" if ns >= 0 else b"-"
    ns = abs(ns)
    return b"%s%d.%09d" % (sign, ns // 1_000_000_000, ns % 1_000_000_000)


class Record:
    __slots__ = ("key", "at", "location", "time", "origin", "diff", "client")

    def __init__(self, client, location, ctime, ns, origin, diff):
        self.client, self.location, self.time = client, location, ctime
        self.origin, self.diff = origin, diff
        # The flood rule's total order: client time, origin, then the remaining bytes.
        self.key = (ns, origin, diff, location)
        self.at = b"AT %s %s %s %s %s\n" % (origin, diff, client, location, ctime)


class Server:
    def __init__(self, name, herd):
        self.name = name.encode()
        self.herd = herd
        self.me = herd[name]
        self.records = {}
        # Neighbour name -> queue of lines to send on our outbound link to it.
        self.links = {n.encode(): None for n in self.me["neighbours"]}

    # ---- clients ----

    async def client(self, reader, writer):
        buf = b""
        long_line = False  # inside a line past MAX_LINE: its bytes are streamed back
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf += chunk
                out = []
                while True:
                    i = buf.find(b"\n")
                    if i < 0:
                        break
                    line, buf = buf[:i], buf[i + 1 :]
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    if long_line:
                        out.append(line + b"\n")
                        long_line = False
                    else:
                        out.append(self.command(line))
                if not long_line and len(buf) > MAX_LINE:
                    out.append(b"? " + buf)
                    buf, long_line = b"", True
                elif long_line and buf:
                    out.append(buf)
                    buf = b""
                if out:
                    writer.write(b"".join(out))
                    await writer.drain()
            # A last line ended by EOF is a line too.
            if long_line:
                writer.write(buf + b"\n")
            elif buf:
                writer.write(self.command(buf[:-1] if buf.endswith(b"\r") else buf))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def command(self, line):
        f = line.split()
        if not f:
            return b""
        if len(f) == 4 and f[0] == b"IAMAT":
            reply = self.iamat(f[1], f[2], f[3])
        elif len(f) == 4 and f[0] == b"WHATSAT":
            reply = self.whatsat(f[1], f[2], f[3])
        else:
            reply = None
        return reply if reply is not None else b"? " + line + b"\n"

    def iamat(self, client, location, ctime):
        now = time.time_ns()
        ns = parse_time_ns(ctime)
        if ns is None or parse_location(location) is None:
            return None
        old = self.records.get(client)
        if old is not None and old.key[0] >= ns:
            return old.at
        rec = Record(client, location, ctime, ns, self.name, time_diff(now - ns))
        if self.apply(rec):
            self.flood(rec, [self.name], None)
            return rec.at
        return self.records[client].at

    def whatsat(self, client, radius, bound):
        rec = self.records.get(client)
        if rec is None or not RADIUS.match(radius) or not BOUND.match(bound):
            return None
        r, n = float(radius), int(bound)
        if not (0 < r <= 50 and n <= 20):
            return None
        results = [{"name": p["name"], "geometry": {"location": {"lat": p["lat"], "lng": p["lng"]}}}
                   for p in PLACES[:n]]
        body = {"html_attributions": [], "results": results,
                "status": "OK" if results or n == 0 else "ZERO_RESULTS"}
        return rec.at + json.dumps(body, indent=3).encode() + b"\n\n"

    def apply(self, rec):
        old = self.records.get(rec.client)
        if old is not None and old.key >= rec.key:
            return False
        self.records[rec.client] = rec
        return True

    # ---- peers ----

    def flood(self, rec, seen, sender):
        targets = [n for n in self.links if n not in seen and n != sender]
        seen = seen + [n for n in targets if n not in seen]
        line = b"UPDATE %s %s %s %s %s %s\n" % (
            rec.client, rec.location, rec.time, rec.origin, rec.diff, b" ".join(seen))
        for n in targets:
            q = self.links[n]
            if q is not None:
                q.put_nowait(line)

    async def peer_in(self, reader, writer):
        """An inbound link: UPDATE lines from a neighbour, applied and forwarded."""
        try:
            while True:
                line = await reader.readuntil(b"\n")
                f = line.split()
                if len(f) < 7 or f[0] != b"UPDATE":
                    print(f"{self.name.decode()}: bad peer line {line[:80]!r}; cutting the link",
                          file=sys.stderr)
                    break
                client, location, ctime, origin, diff, seen = f[1], f[2], f[3], f[4], f[5], f[6:]
                ns = parse_time_ns(ctime)
                if ns is None or parse_location(location) is None:
                    print(f"{self.name.decode()}: bad update {line[:80]!r}; cutting the link",
                          file=sys.stderr)
                    break
                rec = Record(client, location, ctime, ns, origin, diff)
                if self.apply(rec):
                    self.flood(rec, seen, None)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def peer_out(self, name):
        """Our outbound link to a neighbour: reconnects with backoff; on each connect, sends
        every record held, so that a neighbour that was down catches up."""
        peer = self.herd[name.decode()]
        backoff = 0.05
        while True:
            try:
                _, writer = await asyncio.open_connection(peer["host"], peer["peer_port"])
            except OSError:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            q = asyncio.Queue()
            self.links[name] = q
            for rec in list(self.records.values()):
                q.put_nowait(b"UPDATE %s %s %s %s %s %s\n" % (
                    rec.client, rec.location, rec.time, rec.origin, rec.diff, self.name))
            try:
                while True:
                    lines = [await q.get()]
                    while not q.empty():
                        lines.append(q.get_nowait())
                    writer.write(b"".join(lines))
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                self.links[name] = None
                writer.close()

    async def run(self):
        host = self.me.get("listen", self.me["host"])
        clients = await asyncio.start_server(self.client, host, self.me["client_port"])
        peers = await asyncio.start_server(self.peer_in, host, self.me["peer_port"],
                                           limit=MAX_LINE * 4)
        for n in self.links:
            asyncio.ensure_future(self.peer_out(n))
        async with clients, peers:
            await asyncio.gather(clients.serve_forever(), peers.serve_forever())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop (must be installed)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("name")
    s.add_argument("--config", required=True)
    args = ap.parse_args()
    with open(args.config, "rb") as f:
        herd = {s["name"]: s for s in tomllib.load(f)["server"]}
    if args.name not in herd:
        sys.exit(f"herd.py: no server {args.name!r} in {args.config}")
    server = Server(args.name, herd)
    if args.uvloop:
        import uvloop
        uvloop.run(server.run())
    else:
        asyncio.run(server.run())


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
