#!/usr/bin/env python3
"""What a heal costs: records and bytes sent over one link when it comes back, and the
time until the two tables agree (issue 11's benchmark; prints figures, asserts nothing).

Runs a real herd of two `herd serve` processes, A and B, neighbours, on free loopback
ports. Loads RECORDS client records at A (pipelined IAMATs over a few connections) and
waits until B holds them all. Then stops B with SIGSTOP (the whole process: its link to
A dies the way a cut network kills it, by HTTP/2 keepalive), waits until A sees the link
down, changes K of the records at A (newer IAMATs of existing clients), resumes B with
SIGCONT, and measures:

  - records sent over the link at heal: B's `updatesReceived` from A (Inspect/Links)
    from just before SIGCONT until it stops growing (the same counter on every version);
  - bytes: A's herd_backbone_catch_up_bytes_total{neighbour="B"} (versions that have it);
  - the time from SIGCONT to the link being up again (A's Inspect/Links), and from then
    until B agrees with A: every sampled changed client shows A's new AT line at B
    (WHATSAT), and, on versions with Inspect/Floors, both tables have the same digest.

Then it does the same with nothing changed (K = 0).

Usage: bench/heal.py [--herd PATH] [--records N] [--changes K] [--grpcurl PATH]
The herd binary defaults to $HERD_BIN, else target/release/herd (build it with
`cargo build --release`). grpcurl defaults to $GRPCURL, else `grpcurl` on PATH.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(n):
    held = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        held.append(s)
    ports = [s.getsockname()[1] for s in held]
    for s in held:
        s.close()
    return ports


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Herd:
    def __init__(self, binary, grpcurl, workdir):
        self.binary, self.grpcurl, self.dir = binary, grpcurl, workdir
        ca, pa, cb, pb = free_ports(4)
        self.client = {"A": ca, "B": cb}
        self.peer = {"A": pa, "B": pb}
        self.config = os.path.join(workdir, "herd.toml")
        with open(self.config, "w") as f:
            f.write(
                f'[[server]]\nname = "A"\nclient_port = {ca}\npeer_port = {pa}\nneighbours = ["B"]\n'
                f'[[server]]\nname = "B"\nclient_port = {cb}\npeer_port = {pb}\nneighbours = ["A"]\n'
            )
        self.procs = {}
        env = dict(os.environ, RUST_LOG="warn")
        for name in ["A", "B"]:
            logs = os.path.join(workdir, f"logs-{name}")
            os.makedirs(logs)
            self.procs[name] = subprocess.Popen(
                [binary, "serve", name, "--config", self.config, "--log-dir", logs],
                stdout=open(os.path.join(workdir, f"{name}.out"), "w"),
                stderr=subprocess.STDOUT,
                env=env,
            )
        for name in ["A", "B"]:
            wait_port(self.client[name])
            wait_port(self.peer[name])

    def stop(self):
        for p in self.procs.values():
            try:
                p.send_signal(signal.SIGCONT)
                p.terminate()
                p.wait(timeout=10)
            except Exception:
                p.kill()

    def rpc(self, name, method, data=None):
        cmd = [self.grpcurl, "-plaintext"]
        if data is not None:
            cmd += ["-d", data]
        cmd += [f"127.0.0.1:{self.peer[name]}", method]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            return None
        return json.loads(out.stdout)

    def link(self, name, neighbour):
        reply = self.rpc(name, "herd.v1.Inspect/Links") or {}
        for link in reply.get("links", []):
            if link["neighbour"] == neighbour:
                return link
        return {}

    def floors(self, name):
        return self.rpc(name, "herd.v1.Inspect/Floors")

    def metric(self, name, series):
        import urllib.request

        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.peer[name]}/metrics", timeout=10
        ).read().decode()
        for line in text.splitlines():
            if line.startswith(series + " ") or line.startswith(series + "{") and series.endswith("}"):
                return float(line.rsplit(" ", 1)[1])
            if line.split(" ")[0] == series:
                return float(line.rsplit(" ", 1)[1])
        return None

    def rss_kb(self, name):
        with open(f"/proc/{self.procs[name].pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def pipelined(port, lines):
    """Sends `lines` (bytes, each ending in LF) on one connection; returns the replies."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    want = len(lines)
    replies = []

    def reader():
        buf = b""
        while len(replies) < want:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            replies.extend(done)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(0, want, 2000):
        s.sendall(b"".join(lines[i : i + 2000]))
    t.join()
    s.close()
    return replies


def load(port, lines, connections=4):
    parts = [lines[i::connections] for i in range(connections)]
    out = [None] * connections
    threads = []
    for i, part in enumerate(parts):
        t = threading.Thread(target=lambda i=i, part=part: out.__setitem__(i, pipelined(port, part)))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    # Back in the order of `lines`: connection i carried lines i, i + n, ...
    replies = [None] * len(lines)
    for i, part in enumerate(out):
        replies[i::connections] = part
    return replies


def at_line(port, client):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"WHATSAT " + client + b" 1 0\n")
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return buf.split(b"\n", 1)[0]


def wait(what, probe, timeout, step=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = probe()
        if v:
            return v
        time.sleep(step)
    raise SystemExit(f"timed out after {timeout} s waiting for {what}")


def heal(herd, records, k, round_no, rng):
    """One cut and heal with `k` records changed meanwhile; returns the figures."""
    b = herd.procs["B"]
    before = int(herd.link("B", "A").get("updatesReceived", 0))
    has_floors = herd.floors("A") is not None
    os.kill(b.pid, signal.SIGSTOP)
    wait("A to see its link to B down", lambda: herd.link("A", "B").get("state") != "up", 30, 0.2)
    changed = sorted(rng.sample(range(records), k))
    t = f"{1_800_000_000 + round_no}"
    lines = [f"IAMAT c{i} +2+2 {t}.{i:09d}\n".encode() for i in changed]
    replies = load(herd.client["A"], lines) if lines else []
    expect = {f"c{i}".encode(): r for i, r in zip(changed, replies)}
    sample = rng.sample(sorted(expect), min(200, len(expect)))
    bytes_before = herd.metric("A", 'herd_backbone_catch_up_bytes_total{server="A",neighbour="B"}')
    resumed = time.time()
    os.kill(b.pid, signal.SIGCONT)

    def link_up():
        link = herd.link("A", "B")
        since = int(link.get("sinceUnixMs", 0)) / 1000
        return link.get("state") == "up" and since >= resumed - 0.001 and since


    # Timed with cheap probes (grpcurl takes a quarter of a second a call): the
    # client changed last and 20 sampled ones hold A's new line at B. Then checked
    # in full, untimed: all 200 samples, and the digests where Inspect/Floors exists.
    probe = sample[:20] + ([f"c{changed[-1]}".encode()] if changed else [])

    def agreed():
        return all(at_line(herd.client["B"], c) == expect[c] for c in probe)

    def same_tables():
        if not has_floors:
            return True
        fa, fb = herd.floors("A"), herd.floors("B")
        return fa.get("digest") == fb.get("digest") and fa.get("records") == fb.get("records")

    try:
        wait("B to agree with A", agreed, 120, 0.005)
        agreed_at = time.time()
        # The link's own record of when it came up (probing it costs a grpcurl call).
        up_at = wait("the link to come back", link_up, 60)
        differ = [c for c in sample if at_line(herd.client["B"], c) != expect[c]]
        assert not differ, f"sampled clients differ at B: {differ[:3]}"
        wait("the two tables to have the same digest", same_tables, 60, 0.1)
    except SystemExit:
        for name in ["A", "B"]:
            print(name, json.dumps(herd.floors(name)), json.dumps(herd.rpc(name, "herd.v1.Inspect/Links")), file=sys.stderr)
        bad = [c for c in sample if at_line(herd.client["B"], c) != expect[c]]
        print(f"{len(bad)} of {len(sample)} sampled clients differ at B, e.g. {bad[:3]}", file=sys.stderr)
        raise
    # Let late traffic land: the counter must stand still for 1.5 s.
    last, still = -1, time.time()
    while time.time() - still < 1.5:
        now = int(herd.link("B", "A").get("updatesReceived", 0))
        if now != last:
            last, still = now, time.time()
        time.sleep(0.1)
    bytes_after = herd.metric("A", 'herd_backbone_catch_up_bytes_total{server="A",neighbour="B"}')
    sent = last - before
    return {
        "changed": k,
        "records_sent": sent,
        "bytes_sent": None if bytes_after is None else bytes_after - (bytes_before or 0),
        "link_up_s": round(up_at - resumed, 3),
        "agreed_after_link_up_s": round(max(0.0, agreed_at - up_at), 3),
        "agreed_after_resume_s": round(agreed_at - resumed, 3),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--herd", default=os.environ.get("HERD_BIN", os.path.join(ROOT, "target/release/herd")))
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--changes", type=int, default=10_000)
    p.add_argument("--grpcurl", default=os.environ.get("GRPCURL") or shutil.which("grpcurl") or "grpcurl")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="herd-heal-")
    herd = Herd(args.herd, args.grpcurl, workdir)
    try:
        wait("the link A-B", lambda: herd.link("A", "B").get("state") == "up", 60, 0.2)
        started = time.time()
        lines = [f"IAMAT c{i} +1+1 1700000000.{i:09d}\n".encode() for i in range(args.records)]
        replies = load(herd.client["A"], lines)
        assert all(r.startswith(b"AT A ") for r in replies), "every IAMAT applied"
        last = b"c%d" % (args.records - 1)
        wait("B to hold every record", lambda: at_line(herd.client["B"], last).startswith(b"AT A "), 300, 0.2)
        wait(
            "B to have received every record",
            lambda: int(herd.link("B", "A").get("updatesReceived", 0)) >= args.records,
            300,
            0.2,
        )
        print(f"loaded {args.records} records in {time.time() - started:.1f} s; "
              f"RSS A {herd.rss_kb('A') / 1024:.0f} MiB, B {herd.rss_kb('B') / 1024:.0f} MiB")
        results = [heal(herd, args.records, args.changes, 1, rng), heal(herd, args.records, 0, 2, rng)]
        for r in results:
            k = r["changed"]
            mean = f"{r['bytes_sent'] / r['records_sent']:.0f} B/record" if r["bytes_sent"] and r["records_sent"] else "n/a"
            print(
                f"K={k:>6}: records sent at heal {r['records_sent']:>8} "
                f"(goal <= {int(1.1 * k)} + markers), bytes {r['bytes_sent'] if r['bytes_sent'] is not None else 'n/a'} "
                f"({mean}); link up {r['link_up_s']} s after SIGCONT, tables agree "
                f"{r['agreed_after_link_up_s']} s after link-up"
            )
        print(json.dumps({"records": args.records, "heals": results}))
    finally:
        herd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
