# Shell helpers shared by bench/compare.sh and bench/compare-stacks.sh: processes
# stopped on exit (append each server's pid to `started`), free ports, waiting for a
# listener, and herd files on loopback. Sourced, not run.

started=()
stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${started[@]}"; do stop "$pid"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n== %s\n' "$*" >&2; }

# A fresh, empty working dir for one redis-server under $OUT: with `--save ""` Redis
# writes no snapshot of its own, but a replica saves the RDB of its full sync into its
# dir, and any Redis started later in that dir loads it (answering -LOADING meanwhile,
# then holding the other run's keys). Run from the repository's root, every benchmark's
# Redis shared one dump.rdb that way.
redis_dir() { mktemp -d "$OUT/redis-dir.XXXXXX"; }

# `warm HOST:PORT`: one IAMAT and one WHATSAT at a herd server, waiting for the reply: a
# server builds its offline places index in the background at start (about 43 MB), and a
# WHATSAT waits for it, so the memory scenarios measure from a server that has finished
# starting (one client record more).
warm() {
    python3 - "$1" <<'PYEOF'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=120)
s.sendall(f"IAMAT bench-warm +34.068930-118.445127 {time.time():.9f}\nWHATSAT bench-warm 10 1\n".encode())
got = b""
while got.count(b"\n\n") < 1 or got.count(b"\n") < 3:
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("herd closed the connection before answering the warm-up WHATSAT")
    got += chunk
PYEOF
}

# Free loopback ports, chosen by the OS (released just before use: a tiny race).
free_ports() {
    python3 -c '
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))' "$1"
}

wait_port() {
    local port=$1 i
    for i in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$port after 30 s" >&2
    return 1
}

# Herd files on free loopback ports: any subset of the default five-server herd (the
# Node reference herd of compare-stacks.sh reads this subset of TOML itself).
herd_file() {
    local file=$1; shift
    python3 - "$file" "$@" <<'EOF'
import sys
path, names, ports = sys.argv[1], sys.argv[2].split(","), [int(p) for p in sys.argv[3:]]
links = [("Goloman", "Hands"), ("Goloman", "Holiday"), ("Goloman", "Wilkes"),
         ("Hands", "Wilkes"), ("Holiday", "Welsh"), ("Holiday", "Wilkes")]
with open(path, "w") as f:
    for i, name in enumerate(names):
        nb = [b if a == name else a for a, b in links if name in (a, b) and a in names and b in names]
        f.write(f'[[server]]\nname = "{name}"\nhost = "127.0.0.1"\n'
                f'client_port = {ports[2 * i]}\npeer_port = {ports[2 * i + 1]}\n'
                f'neighbours = [{", ".join(chr(34) + n + chr(34) for n in nb)}]\n\n')
EOF
}

# The servers and the load generator each need an open file per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
