#!/usr/bin/env python3
"""The whole herd under faults, checked like Jepsen: crashes, hangs and partitions.

Five real `herd serve` processes, each in its own network namespace with its own
address on a bridge (ip netns, veth; links cut with iptables inside the namespaces),
each with its data dir. Writers send a steady IAMAT load spread over all five (each
client's times strictly increasing) and record every acknowledged AT reply; readers poll
every server meanwhile and record what each answered for each client. A seeded schedule
of faults runs, several at once: SIGKILL and restart with the data dir, SIGSTOP/SIGCONT,
partitions, one link cut, one direction cut, random loss, a whole-herd kill and restart.
Then everything is healed, and the checks are printed as a table:

  1. lost acknowledged writes: every acknowledged IAMAT, or a newer one of the same
     client, is held by every server (must be 0);
  2. servers going back in time: no server ever answered an older record for a client
     than one it had answered before, across its own restarts too, and none that had
     answered for a client later said it did not know it (must be 0);
  3. tables identical (the Floors RPC's digest and record count, on every server);
  4. time from the last heal to convergence (a figure; goal under 2 s);
  5. what the faults cost, from the servers' metrics.

Without network namespaces (not root, or `ip netns` refused) it runs on loopback, with
process stops standing in for network faults, and says so. Every run prints its seed;
the same seed replays the same schedule. Exit 0 when every check passes, 1 on any
violation, 2 when the herd could not be set up.

Usage: tests/chaos/chaos.py [--herd PATH] [--duration S] [--seed N] [--seeds K]
                            [--fsync always|everysec|no] [--grpcurl PATH] [--keep]
"""

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

NAMES = ["Goloman", "Hands", "Holiday", "Welsh", "Wilkes"]
LINKS = {
    "Goloman": ["Hands", "Holiday", "Wilkes"],
    "Hands": ["Goloman", "Wilkes"],
    "Holiday": ["Goloman", "Welsh", "Wilkes"],
    "Welsh": ["Holiday"],
    "Wilkes": ["Goloman", "Hands", "Holiday"],
}
CLIENT_PORT, PEER_PORT = 12001, 13001
SUBNET = "10.199.77"
PREFIX = "herdc"  # namespace and interface names: herdc-sw, herdc-0.., herdcv0.., herdcc

WRITERS, CLIENTS_PER_WRITER, READERS = 6, 4, 4
IO_TIMEOUT = 2.0
CONVERGE_LIMIT = 30.0


def log(msg):
    print(msg, flush=True)


def sh(*cmd, check=True):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out


# ---------------------------------------------------------------------------- network


class Net:
    """Where the servers are, and how links between them are cut."""

    def __init__(self, use_netns):
        self.netns = use_netns
        self.rules = {}  # per server: the iptables rules of its HERD chain

    def addr(self, i):
        return f"{SUBNET}.{i + 1}" if self.netns else "127.0.0.1"

    def ports(self, i):
        if self.netns:
            return CLIENT_PORT, PEER_PORT
        return self.free_ports[2 * i], self.free_ports[2 * i + 1]

    def setup(self):
        if not self.netns:
            socks = []
            for _ in range(2 * len(NAMES)):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            self.free_ports = [s.getsockname()[1] for s in socks]
            for s in socks:
                s.close()
            return
        self.teardown()
        sw = f"{PREFIX}-sw"
        sh("ip", "netns", "add", sw)
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        for i in range(len(NAMES)):
            ns, veth = f"{PREFIX}-{i}", f"{PREFIX}v{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "netns", sw)
            sh("ip", "-n", sw, "link", "set", veth, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "iptables", "-N", "HERD")
            sh("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-j", "HERD")
            sh("ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-j", "HERD")
        # The test's own end (clients, readers, grpcurl, metrics), in this namespace.
        sh("ip", "link", "add", f"{PREFIX}c", "type", "veth", "peer", "name", f"{PREFIX}cp", "netns", sw)
        sh("ip", "-n", sw, "link", "set", f"{PREFIX}cp", "master", "br0", "up")
        sh("ip", "addr", "add", f"{SUBNET}.254/24", "dev", f"{PREFIX}c")
        sh("ip", "link", "set", f"{PREFIX}c", "up")

    def teardown(self):
        if not self.netns:
            return
        for i in range(len(NAMES)):
            sh("ip", "netns", "del", f"{PREFIX}-{i}", check=False)
        sh("ip", "netns", "del", f"{PREFIX}-sw", check=False)
        sh("ip", "link", "del", f"{PREFIX}c", check=False)

    def prefix(self, i):
        return ["ip", "netns", "exec", f"{PREFIX}-{i}"] if self.netns else []

    def apply(self, faults):
        """Rebuilds every server's HERD chain from the network faults in force."""
        want = {i: [] for i in range(len(NAMES))}
        for f in faults:
            for a, b, kind in f.drops():
                ia, ib = NAMES.index(a), NAMES.index(b)
                # Packets from a to b are dropped on leaving a.
                rule = ["-A", "HERD", "-d", self.addr(ib)]
                if kind != "all":
                    rule += ["-m", "statistic", "--mode", "random", "--probability", kind]
                want[ia].append(rule + ["-j", "DROP"])
        for i, rules in want.items():
            if rules == self.rules.get(i, []):
                continue
            sh(*self.prefix(i), "iptables", "-F", "HERD")
            for r in rules:
                sh(*self.prefix(i), "iptables", *r)
            self.rules[i] = rules


# ---------------------------------------------------------------------------- servers


class Herd:
    def __init__(self, binary, net, workdir, fsync, grpcurl):
        self.binary, self.net, self.dir, self.fsync, self.grpcurl = binary, net, workdir, fsync, grpcurl
        self.procs = {}
        self.config = os.path.join(workdir, "herd.toml")
        lines = []
        for i, name in enumerate(NAMES):
            cp, pp = net.ports(i)
            nb = ", ".join(f'"{n}"' for n in LINKS[name])
            lines += [
                "[[server]]",
                f'name = "{name}"',
                f'host = "{net.addr(i)}"',
                f"client_port = {cp}",
                f"peer_port = {pp}",
                f"neighbours = [{nb}]",
                "",
            ]
        with open(self.config, "w") as f:
            f.write("\n".join(lines))

    def client_addr(self, name):
        i = NAMES.index(name)
        return self.net.addr(i), self.net.ports(i)[0]

    def peer_addr(self, name):
        i = NAMES.index(name)
        return f"{self.net.addr(i)}:{self.net.ports(i)[1]}"

    def start(self, name):
        i = NAMES.index(name)
        data = os.path.join(self.dir, "data", name)
        logs = os.path.join(self.dir, "logs")
        os.makedirs(logs, exist_ok=True)
        err = open(os.path.join(logs, f"{name}.stderr"), "ab")
        cmd = self.net.prefix(i) + [
            self.binary, "serve", name, "--config", self.config,
            "--data-dir", data, "--fsync", self.fsync, "--log-dir", logs,
        ]
        env = dict(os.environ, RUST_LOG="warn")
        self.procs[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env)

    def wait_up(self, name, limit=30.0):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            p = self.procs[name]
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}; see {self.dir}/logs/{name}.stderr")
            # Answered, not only connected: the port is bound before a data dir is
            # restored, and a connection is accepted by the kernel meanwhile.
            try:
                with socket.create_connection(self.client_addr(name), timeout=0.5) as c:
                    c.settimeout(limit)
                    c.sendall(b"READY?\n")
                    if c.recv(64).startswith(b"? READY?"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not listen within {limit} s")

    def signal(self, name, sig):
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            p.send_signal(sig)

    def kill(self, name):
        p = self.procs.get(name)
        if p is not None:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def stop_all(self):
        for name in NAMES:
            self.signal(name, signal.SIGCONT)
            self.kill(name)

    def rpc(self, name, method):
        cmd = [self.grpcurl, "-plaintext", "-max-time", "5", self.peer_addr(name), method]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            return None
        return json.loads(out.stdout)

    def metrics(self, name):
        try:
            text = urllib.request.urlopen(f"http://{self.peer_addr(name)}/metrics", timeout=5).read().decode()
        except OSError:
            return {}
        sums = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            series, value = line.rsplit(" ", 1)
            metric = series.split("{", 1)[0]
            try:
                sums[metric] = sums.get(metric, 0.0) + float(value)
            except ValueError:
                pass
        return sums


# ---------------------------------------------------------------------------- the line protocol


def parse_time(text):
    sec, _, frac = text.partition(".")
    return int(sec), int((frac + "000000000")[:9])


def at_time(line):
    """The client time of an AT line: AT server diff client location time."""
    parts = line.split()
    return parse_time(parts[5]) if len(parts) == 6 and parts[0] == "AT" else None


class Conn:
    """One line-protocol connection to one server, reconnected on failure."""

    def __init__(self, addr):
        self.addr, self.sock, self.buf = addr, None, b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = None, b""

    def ask(self, line, until):
        """Sends a line and returns the reply up to `until` (bytes), or None."""
        try:
            if self.sock is None:
                self.sock = socket.create_connection(self.addr, timeout=IO_TIMEOUT)
                self.sock.settimeout(IO_TIMEOUT)
            self.sock.sendall(line.encode() + b"\n")
            while True:
                end = self.buf.find(b"\n")
                if self.buf.startswith(b"? ") and end >= 0:
                    reply, self.buf = self.buf[: end + 1], self.buf[end + 1 :]
                    return reply.decode(errors="replace")
                end = self.buf.find(until)
                if end >= 0:
                    reply, self.buf = self.buf[: end + len(until)], self.buf[end + len(until) :]
                    return reply.decode(errors="replace")
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise OSError("closed")
                self.buf += chunk
        except OSError:
            self.close()
            return None


def whatsat(conn, client):
    """(known, time): what the server holds for the client; None when it did not answer."""
    reply = conn.ask(f"WHATSAT {client} 1 1", b"\n\n")
    if reply is None:
        return None
    if reply.startswith("? "):
        return (False, None)
    t = at_time(reply.split("\n", 1)[0])
    return None if t is None else (True, t)


# ---------------------------------------------------------------------------- load and readers


class History:
    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}  # client: newest acknowledged time
        self.sent = 0
        self.acks = 0
        # (server, client): every answer that named a record, as (completed, time),
        # completed being the monotonic clock when the reply had been read.
        self.seen = {}
        self.reads = 0
        self.unanswered = 0
        self.back_in_time = []
        self.forgot = []


def writer(herd, hist, w, stop, rng):
    clients = [f"chaos-{w}-{k}" for k in range(CLIENTS_PER_WRITER)]
    conns = {n: Conn(herd.client_addr(n)) for n in NAMES}
    last = {c: (0, 0) for c in clients}
    while not stop.is_set():
        c = rng.choice(clients)
        ns = time.time_ns()
        t = max((ns // 10**9, ns % 10**9), (last[c][0], last[c][1] + 1))
        if t[1] >= 10**9:
            t = (t[0] + 1, 0)
        last[c] = t
        name = rng.choice(NAMES)
        loc = f"+{rng.randint(0, 89)}.{rng.randint(0, 999999):06d}-{rng.randint(0, 179)}.{rng.randint(0, 999999):06d}"
        stamp = f"{t[0]}.{t[1]:09d}"
        with hist.lock:
            hist.sent += 1
        reply = conns[name].ask(f"IAMAT {c} {loc} {stamp}", b"\n")
        if reply is not None and reply.startswith("AT ") and at_time(reply.strip()) == t:
            with hist.lock:
                hist.acks += 1
                if t > hist.acked.get(c, (0, 0)):
                    hist.acked[c] = t
        time.sleep(0.005)
    for conn in conns.values():
        conn.close()


def reader(herd, hist, stop, rng, clients):
    conns = {n: Conn(herd.client_addr(n)) for n in NAMES}
    while not stop.is_set():
        name, c = rng.choice(NAMES), rng.choice(clients)
        sent = time.monotonic()
        got = whatsat(conns[name], c)
        if got is None:
            with hist.lock:
                hist.unanswered += 1
            time.sleep(0.01)
            continue
        known, t = got
        done = time.monotonic()
        with hist.lock:
            hist.reads += 1
            # Only the answers completed before this read was sent come before it:
            # two reads of one server on two connections that overlap in time have no
            # order (the server may answer the later-sent first), as in Jepsen's
            # real-time order. A read sent after a newer answer was received must not
            # see anything older, nor nothing at all.
            answers = hist.seen.setdefault((name, c), [])
            before = max((a for completed, a in answers if completed < sent), default=None)
            if known:
                if before is not None and t < before:
                    hist.back_in_time.append((name, c, before, t))
                answers.append((done, t))
            elif before is not None:
                hist.forgot.append((name, c, before))
        time.sleep(0.002)
    for conn in conns.values():
        conn.close()


# ---------------------------------------------------------------------------- faults
class Fault:
    def __init__(self, kind, start, length, targets, prob=None):
        self.kind, self.start, self.length, self.targets, self.prob = kind, start, length, targets, prob

    def __str__(self):
        what = ",".join(self.targets) if isinstance(self.targets[0], str) else " | ".join(",".join(g) for g in self.targets)
        extra = f" p={self.prob}" if self.prob else ""
        return f"{self.start:6.2f}s +{self.length:4.2f}s  {self.kind:<9} {what}{extra}"

    def drops(self):
        """(from, to, all|probability) packet drops while this network fault is in force."""
        if self.kind == "partition":
            a, b = self.targets
            return [(x, y, "all") for x in a for y in b] + [(y, x, "all") for x in a for y in b]
        if self.kind == "link":
            a, b = self.targets
            return [(a, b, "all"), (b, a, "all")]
        if self.kind == "oneway":
            a, b = self.targets
            return [(a, b, "all")]
        if self.kind == "loss":
            a, b = self.targets
            return [(a, b, str(self.prob)), (b, a, str(self.prob))]
        return []


def schedule(rng, duration, netns):
    """A seeded list of faults, overlapping; process faults never overlap on one server."""
    faults, t, busy_until = [], 1.0, {n: 0.0 for n in NAMES}
    edges = [(a, b) for a in NAMES for b in LINKS[a] if a < b]
    kinds = ["kill", "stop", "partition", "link", "oneway", "loss", "kill", "herd"]
    while t < duration - 2.0:
        kind = rng.choice(kinds)
        length = round(rng.uniform(0.5, 3.0), 2)
        length = min(length, duration - 1.0 - t)
        if not netns and kind in ("partition", "link", "oneway", "loss"):
            kind = "stop"  # loopback: a hung server stands in for a cut network
        if kind in ("kill", "stop"):
            free = [n for n in NAMES if busy_until[n] <= t]
            if free:
                n = rng.choice(free)
                busy_until[n] = t + length + 0.5
                faults.append(Fault(kind, t, length, [n]))
        elif kind == "herd":
            if all(b <= t for b in busy_until.values()):
                length = min(length, 1.5)
                for n in NAMES:
                    busy_until[n] = t + length + 1.0
                faults.append(Fault("herd", t, length, list(NAMES)))
        elif kind == "partition":
            shuffled = NAMES[:]
            rng.shuffle(shuffled)
            k = rng.randint(1, len(NAMES) - 1)
            faults.append(Fault("partition", t, length, [sorted(shuffled[:k]), sorted(shuffled[k:])]))
        else:
            a, b = rng.choice(edges)
            if rng.random() < 0.5:
                a, b = b, a
            prob = round(rng.uniform(0.1, 0.5), 2) if kind == "loss" else None
            faults.append(Fault(kind, t, length, [a, b], prob))
        t += round(rng.uniform(0.3, 2.0), 2)
    return faults


def run_schedule(herd, net, faults, t0, stop):
    """Starts and ends every fault at its time (from t0). Returns when all have ended."""
    events = []
    for f in faults:
        events.append((f.start, 0, f))
        events.append((f.start + f.length, 1, f))
    events.sort(key=lambda e: (e[0], e[1]))
    active = []
    for at, end, f in events:
        delay = t0 + at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        if f.kind in ("partition", "link", "oneway", "loss"):
            if end:
                active.remove(f)
            else:
                active.append(f)
            net.apply(active)
        elif f.kind == "stop":
            herd.signal(f.targets[0], signal.SIGCONT if end else signal.SIGSTOP)
        elif f.kind in ("kill", "herd"):
            for n in f.targets:
                if end:
                    herd.start(n)
                else:
                    herd.kill(n)
            if end:
                for n in f.targets:
                    herd.wait_up(n)
    net.apply([])


# ---------------------------------------------------------------------------- one run


COST = [
    ("updates dropped (full queues)", "herd_backbone_queue_drops_total"),
    ("catch-ups", "herd_backbone_catch_ups_total"),
    ("catch-up records", "herd_backbone_catch_up_records_total"),
    ("catch-up bytes", "herd_backbone_catch_up_bytes_total"),
    ("whole-table catch-ups", "herd_backbone_full_table_catch_ups_total"),
    ("link state changes", "herd_link_state_changes_total"),
]


def one_run(args, seed, netns):
    rng = random.Random(seed)
    faults = schedule(rng, args.duration, netns)
    log(f"== seed {seed}: {args.duration:.0f} s, fsync {args.fsync}, "
        f"{'network namespaces (iptables faults)' if netns else 'LOOPBACK FALLBACK: no network namespaces, process stops stand in for network faults'}")
    for f in faults:
        log("   " + str(f))
    workdir = tempfile.mkdtemp(prefix=f"herd-chaos-{seed}-")
    net = Net(netns)
    herd = None
    try:
        net.setup()
        herd = Herd(args.herd, net, workdir, args.fsync, args.grpcurl)
        for n in NAMES:
            herd.start(n)
        for n in NAMES:
            herd.wait_up(n)
        hist, stop = History(), threading.Event()
        clients = [f"chaos-{w}-{k}" for w in range(WRITERS) for k in range(CLIENTS_PER_WRITER)]
        threads = [threading.Thread(target=writer, args=(herd, hist, w, stop, random.Random(seed * 100 + w))) for w in range(WRITERS)]
        threads += [threading.Thread(target=reader, args=(herd, hist, stop, random.Random(seed * 1000 + r), clients)) for r in range(READERS)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        run_schedule(herd, net, faults, t0, threading.Event())
        # Everything is healed (networks, stopped and killed servers): the load ends too.
        for n in NAMES:
            herd.signal(n, signal.SIGCONT)
        healed = time.monotonic()
        log(f"   healed at {time.strftime('%H:%M:%S', time.gmtime())}.{int(time.time() * 1000) % 1000:03d} UTC (the servers' logs use UTC)")
        stop.set()
        for t in threads:
            t.join()

        converged, tables = None, {}
        # The five servers are asked at once (a grpcurl process each): asked in turn
        # on a loaded machine, a round took over a second, all of it counted.
        pool = concurrent.futures.ThreadPoolExecutor(len(NAMES))
        while time.monotonic() - healed < CONVERGE_LIMIT:
            answers = pool.map(lambda n: herd.rpc(n, "herd.v1.Inspect/Floors"), NAMES)
            tables = dict(zip(NAMES, answers))
            keys = {(t.get("records"), t.get("digest")) if t else None for t in tables.values()}
            if None not in keys and len(keys) == 1:
                converged = time.monotonic() - healed
                break
            time.sleep(0.05)
        pool.shutdown()

        lost = []
        for c, t in sorted(hist.acked.items()):
            for n in NAMES:
                conn = Conn(herd.client_addr(n))
                got = whatsat(conn, c)
                conn.close()
                if got is None or not got[0] or got[1] < t:
                    lost.append((n, c, t, got))
        cost = {label: sum(herd.metrics(n).get(m, 0.0) for n in NAMES) for label, m in COST}
    except RuntimeError as e:
        log(f"setup failed: {e}")
        return 2
    finally:
        if herd is not None:
            herd.stop_all()
        net.teardown()

    ok = not lost and not hist.back_in_time and not hist.forgot and converged is not None
    rows = [
        ("IAMATs sent / acknowledged", f"{hist.sent} / {hist.acks}", ""),
        ("reads answered / not", f"{hist.reads} / {hist.unanswered}", ""),
        ("1. lost acknowledged writes", f"{len(lost)}", "must be 0"),
        ("2. answers older than an earlier one", f"{len(hist.back_in_time)}", "must be 0"),
        ("2. known, later unknown", f"{len(hist.forgot)}", "must be 0"),
        ("3. tables identical", "yes" if converged is not None else "NO", "must be yes"),
        ("4. last heal to convergence", f"{converged:.2f} s" if converged is not None else f"> {CONVERGE_LIMIT:.0f} s", "goal < 2 s"),
    ]
    # Counters restart with their process: these are since each server's last start.
    rows += [(f"5. {label}", f"{v:.0f}", "since last start") for label, v in cost.items()]
    width = max(len(r[0]) for r in rows)
    log(f"-- seed {seed}: {'PASS' if ok else 'FAIL'}")
    for label, value, goal in rows:
        log(f"   {label:<{width}}  {value:>12}  {goal}")
    for n, c, t, got in lost[:10]:
        log(f"   lost: {n} holds {got} for {c}, acknowledged {t}")
    for v in hist.back_in_time[:10]:
        log(f"   back in time: {v[0]} answered {v[3]} for {v[1]} after {v[2]}")
    for v in hist.forgot[:10]:
        log(f"   forgot: {v[0]} did not know {v[1]} after answering {v[2]}")
    if converged is None:
        for n, t in tables.items():
            log(f"   {n}: {None if t is None else (t.get('records'), t.get('digest'))}")
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"   logs and data dirs kept in {workdir}")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--herd", default="target/debug/herd", help="the herd binary")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of faults per seed")
    ap.add_argument("--seed", type=int, help="the first seed (default: from the clock)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds to run, from --seed up")
    ap.add_argument("--fsync", default="everysec", choices=["always", "everysec", "no"])
    ap.add_argument("--grpcurl", default=os.environ.get("GRPCURL", "grpcurl"))
    ap.add_argument("--keep", action="store_true", help="keep the work dirs of passing runs")
    args = ap.parse_args()
    if shutil.which(args.grpcurl) is None and not os.path.exists(args.grpcurl):
        log(f"grpcurl not found ({args.grpcurl}): set GRPCURL or --grpcurl")
        return 2
    netns = os.geteuid() == 0 and sh("ip", "netns", "list", check=False).returncode == 0 and shutil.which("iptables")
    first = args.seed if args.seed is not None else int(time.time()) % 100000
    worst = 0
    for seed in range(first, first + args.seeds):
        worst = max(worst, one_run(args, seed, bool(netns)))
    return worst


if __name__ == "__main__":
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))
    sys.exit(main())
