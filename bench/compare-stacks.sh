#!/usr/bin/env bash
# herd against the reference herds of bench/reference/ (Python asyncio, optionally on
# uvloop, and Node.js) and Redis, the same scenarios with the same load generator
# (herd-bench) in one run: the design paper's open question ("there wasn't a test").
#
# For each system: IAMAT throughput and latency at one server (closed loop), CPU time per
# IAMAT, herd-wide IAMAT throughput (five server processes, a generator per server),
# propagation Welsh -> Hands idle and under background load, memory per idle connection and
# per client record; then an open-loop rate sweep (`herd-bench iamat --rate`) for the plot of
# latency against offered load. Redis has no herd: it gets the one-server rows only.
# Prints one table, writes the JSON reports and the plot (PNG, matplotlib) under $OUT.
# Everything runs on 127.0.0.1, on free ports, and is stopped on exit, even on failure.
#
# Usage: bench/compare-stacks.sh
# Environment:
#   DURATION=5s            measured time of each throughput/propagation scenario
#   WARMUP=1s              warm-up before each, excluded from the figures
#   SWEEP_DURATION=3s      measured time of each point of the rate sweep
#   RATES="1000 2000 5000 10000 20000 40000"   offered IAMATs/s of the sweep
#   BG_RATE=5000           background IAMATs/s for "propagation under load"
#   CONNECTIONS=2000       idle connections for memory per connection
#   RECORDS=200000         client records for memory per record
#   SYSTEMS="herd asyncio uvloop node redis"   which to run (uvloop only if it imports)
#   HERD_BENCH_THREADS=N   generator threads (default: one per core)
#   OUT=DIR                where reports go (default target/bench/stacks-DATE)
#   PLOT=FILE              the PNG (default $OUT/latency-vs-load.png)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
SWEEP_DURATION=${SWEEP_DURATION:-3s}
RATES=${RATES:-"1000 2000 5000 10000 20000 40000"}
BG_RATE=${BG_RATE:-5000}
CONNECTIONS=${CONNECTIONS:-2000}
RECORDS=${RECORDS:-200000}
SYSTEMS=${SYSTEMS:-"herd asyncio uvloop node redis"}
export HERD_BENCH_THREADS=${HERD_BENCH_THREADS:-$(nproc)}
export RUST_LOG=${RUST_LOG:-warn}
OUT=${OUT:-target/bench/stacks-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PLOT=${PLOT:-$OUT/latency-vs-load.png}
PYLIB=$PWD/target/stacks-py   # uvloop and matplotlib, pip-installed here, not system-wide

# stop/cleanup (on exit), say, free_ports, wait_port, herd_file; raises the fd limit.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! command -v redis-server >/dev/null 2>&1 && [[ " $SYSTEMS " == *" redis "* ]]; then
    say "installing redis-server"
    apt-get install -y redis-server >"$OUT/apt.log" 2>&1 ||
        { apt-get update >>"$OUT/apt.log" 2>&1 && apt-get install -y redis-server >>"$OUT/apt.log" 2>&1; }
fi
if ! PYTHONPATH=$PYLIB python3 -c 'import matplotlib, uvloop' 2>/dev/null; then
    say "installing matplotlib and uvloop into $PYLIB"
    python3 -m pip install -q --target "$PYLIB" matplotlib uvloop >"$OUT/pip.log" 2>&1 ||
        echo "   pip failed (see $OUT/pip.log): no plot, no uvloop" >&2
fi
if ! PYTHONPATH=$PYLIB python3 -c 'import uvloop' 2>/dev/null; then
    SYSTEMS=${SYSTEMS//uvloop/}
fi

say "building herd and herd-bench (release)"
cargo build --release --locked -p herd --bin herd -p herd-bench --bin herd-bench
HERD=$PWD/target/release/herd
HERD_BENCH=$PWD/target/release/herd-bench

# `server_cmd SYSTEM`: the command that runs one server of SYSTEM (`serve NAME --config F` follows).
server_cmd() {
    case $1 in
        herd) echo "$HERD" ;;
        asyncio) echo "python3 bench/reference/asyncio/herd.py" ;;
        uvloop) echo "env PYTHONPATH=$PYLIB python3 bench/reference/asyncio/herd.py --uvloop" ;;
        node) echo "node bench/reference/node/herd.js" ;;
    esac
}

# `start SYSTEM NAMES`: one process per server named (comma-separated), on free ports.
# Sets PIDS (name -> pid) and ADDR (name -> client address).
declare -A PIDS ADDR
start() {
    local system=$1 names=$2 ports i name cmd
    local -a list
    IFS=, read -r -a list <<<"$names"
    read -r -a ports <<<"$(free_ports $((2 * ${#list[@]})))"
    herd_file "$OUT/$system.toml" "$names" "${ports[@]}"
    PIDS=() ADDR=()
    read -r -a cmd <<<"$(server_cmd "$system")"
    for i in "${!list[@]}"; do
        name=${list[$i]}
        # `env` keeps uvloop's PYTHONPATH; `exec` makes the pid the server's own.
        if [ "${cmd[0]}" = env ]; then
            env "${cmd[@]:1}" serve "$name" --config "$OUT/$system.toml" 2>>"$OUT/$system-$name.log" &
        else
            "${cmd[@]}" serve "$name" --config "$OUT/$system.toml" 2>>"$OUT/$system-$name.log" &
        fi
        PIDS[$name]=$!
        started+=("$!")
        ADDR[$name]=127.0.0.1:${ports[$((2 * i))]}
    done
    for i in "${!list[@]}"; do wait_port "${ports[$((2 * i))]}"; done
}
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do stop "$pid"; done
    PIDS=()
}

start_redis() {
    local port
    port=$(free_ports 1)
    redis-server --bind 127.0.0.1 --port "$port" --save "" --dir "$(redis_dir)" --appendonly no \
        --maxclients $((CONNECTIONS + 1000)) --daemonize no --logfile "$OUT/redis.log" &
    PIDS=([Goloman]=$!) ADDR=([Goloman]=127.0.0.1:$port)
    started+=("$!")
    wait_port "$port"
}

# CPU time (user + system, in clock ticks) of the given pids.
cpu_ticks() {
    local total=0 pid f
    for pid in "$@"; do
        read -r -a f <"/proc/$pid/stat"
        # Fields 14 and 15 (utime, stime); the command name (field 2) has no spaces here.
        total=$((total + f[13] + f[14]))
    done
    echo "$total"
}

bench() {
    local name=$1 rc=0; shift
    say "$name: herd-bench $*"
    "$HERD_BENCH" "$@" --json >"$OUT/$name.json" 2>"$OUT/$name.err" || rc=$?
    [ -s "$OUT/$name.err" ] && sed 's/^/   /' "$OUT/$name.err" | head -5 >&2
    case $rc in
        0 | 3) ;;
        *) echo "   failed (exit $rc)" >&2; rm -f "$OUT/$name.json" ;;
    esac
    return 0
}

LOAD=(--duration "$DURATION" --warmup "$WARMUP")
for system in $SYSTEMS; do
    redis=()
    if [ "$system" = redis ]; then redis=(--redis); fi
    begin() { if [ "$system" = redis ]; then start_redis; else start "$system" Goloman; fi; }

    # One server: closed-loop throughput and latency, and its CPU time per IAMAT.
    begin
    before=$(cpu_ticks "${PIDS[Goloman]}")
    bench "$system-iamat" iamat "${redis[@]}" --addr "${ADDR[Goloman]}" -c 50 -d 1 "${LOAD[@]}"
    echo "$(($(cpu_ticks "${PIDS[Goloman]}") - before)) $(getconf CLK_TCK)" >"$OUT/$system-iamat.cpu"
    # The open-loop sweep, on the same server (each point adds fresh clients).
    for rate in $RATES; do
        bench "$system-rate-$rate" iamat "${redis[@]}" --addr "${ADDR[Goloman]}" -c 20 -d 1000 \
            --rate "$rate" --duration "$SWEEP_DURATION" --warmup "$WARMUP" --timeout 10s
    done
    stop_all

    begin
    bench "$system-connections" connections "${redis[@]}" --addr "${ADDR[Goloman]}" \
        --count "$CONNECTIONS" --server-pid "${PIDS[Goloman]}"
    stop_all
    begin
    bench "$system-records" records "${redis[@]}" --addr "${ADDR[Goloman]}" \
        --records "$RECORDS" --server-pid "${PIDS[Goloman]}"
    stop_all
    [ "$system" = redis ] && continue

    # The whole herd, five processes: a generator at every server at once, then propagation.
    start "$system" Goloman,Hands,Holiday,Welsh,Wilkes
    pids=("${PIDS[@]}")
    before=$(cpu_ticks "${pids[@]}")
    gens=()
    for name in Goloman Hands Holiday Welsh Wilkes; do
        HERD_BENCH_THREADS=1 "$HERD_BENCH" iamat --addr "${ADDR[$name]}" -c 10 -d 1 "${LOAD[@]}" \
            --json >"$OUT/$system-wide-$name.json" 2>"$OUT/$system-wide-$name.err" &
        gens+=("$!")
    done
    for pid in "${gens[@]}"; do wait "$pid" || true; done
    echo "$(($(cpu_ticks "${pids[@]}") - before)) $(getconf CLK_TCK)" >"$OUT/$system-wide.cpu"
    bench "$system-prop-idle" propagation --at "${ADDR[Welsh]}" --seen "${ADDR[Hands]}" "${LOAD[@]}"
    bench "$system-prop-load" propagation --at "${ADDR[Welsh]}" --seen "${ADDR[Hands]}" \
        --background-rate "$BG_RATE" "${LOAD[@]}"
    stop_all
done

say "results (JSON reports in $OUT)"
PYTHONPATH=$PYLIB python3 - "$OUT" "$PLOT" "$RATES" $SYSTEMS <<'EOF'
import json, os, sys
out, plot, rates, systems = sys.argv[1], sys.argv[2], [int(r) for r in sys.argv[3].split()], sys.argv[4:]

def load(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def cpu(name):
    try:
        ticks, hz = open(os.path.join(out, name + ".cpu")).read().split()
        return int(ticks) / int(hz)
    except (OSError, ValueError):
        return None

def n(v, unit=""):
    return "-" if v is None else f"{v:,.0f}{unit}"

def errs(r):
    return "" if r is None or r["errors"]["total"] == 0 else f' ({r["errors"]["total"]:,} err)'

rows = []
def row(what, f):
    rows.append([what] + [f(s) for s in systems])

def lat(name, q):
    return lambda s: n((load(f"{s}-{name}") or {}).get("latency_us", {}).get(q))

row("IAMAT one server, 50x1 (ops/s)", lambda s: (lambda r: n(r and r["throughput_ops_s"]) + errs(r))(load(f"{s}-iamat")))
for q, label in [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")]:
    row(f"  latency {label} (us)", lat("iamat", q))
def cpu_per(s):
    r, c = load(f"{s}-iamat"), cpu(f"{s}-iamat")
    return "-" if not r or c is None or not r["requests"] else f'{c * 1e6 / r["requests"]:.1f}'
row("  CPU per IAMAT (us)", cpu_per)
def wide(s):
    if s == "redis":
        return "n/a"
    rs = [load(f"{s}-wide-{m}") for m in ["Goloman", "Hands", "Holiday", "Welsh", "Wilkes"]]
    if any(r is None for r in rs):
        return "-"
    ops = sum(r["throughput_ops_s"] for r in rs)
    c = cpu(f"{s}-wide")
    total = sum(r["requests"] for r in rs)
    per = "" if c is None or not total else f", {c * 1e6 / total:.0f} us CPU each"
    return f"{ops:,.0f}{per}" + "".join(errs(r) for r in rs[:1])
row("IAMAT herd-wide, 5x(10x1) (ops/s)", wide)
def prop(name):
    def f(s):
        if s == "redis":
            return "n/a"
        p = load(f"{s}-{name}")
        if p is None:
            return "-"
        l = p["latency_us"]
        bg = p["background"]
        extra = f' @{bg["achieved_rate"]:,.0f}/s' if bg["target_rate"] else ""
        return f'{l["p50"]:,}/{l["p99"]:,}{extra}{errs(p)}'
    return f
row("Welsh->Hands idle p50/p99 (us)", prop("prop-idle"))
row("Welsh->Hands loaded p50/p99 (us)", prop("prop-load"))
def per(name, key):
    def f(s):
        r = load(f"{s}-{name}")
        if not r or r.get("rss_kb_after") is None:
            return "-"
        count = r.get(key) or 1
        return f'{(r["rss_kb_after"] - r["rss_kb_before"]) * 1024 / count:,.0f}'
    return f
row("memory per connection (B)", per("connections", "count"))
row("memory per record (B)", per("records", "requests"))
def sat(s):
    best = None
    for rate in rates:
        r = load(f"{s}-rate-{rate}")
        if r and r["errors"]["total"] == 0 and r["latency_us"]["p99"] < 10_000 and r["throughput_ops_s"] >= 0.95 * rate:
            best = rate
    return n(best)
row("highest rate with p99 < 10 ms (ops/s)", sat)

head = ["scenario"] + systems
widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
for r in [head] + rows:
    print("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)).rstrip())
print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
for r in rows:
    print("| " + " | ".join(str(c) for c in r) + " |")

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("\n(no matplotlib: no plot)", file=sys.stderr)
    sys.exit(0)
fig, ax = plt.subplots(figsize=(8, 5))
for i, s in enumerate(systems):
    pts = [(rate, load(f"{s}-rate-{rate}")) for rate in rates]
    pts = [(rate, r) for rate, r in pts if r is not None]
    if not pts:
        continue
    c = f"C{i}"
    ax.plot([p[0] for p in pts], [p[1]["latency_us"]["p50"] / 1000 for p in pts], "-o", color=c, label=f"{s} p50")
    ax.plot([p[0] for p in pts], [p[1]["latency_us"]["p99"] / 1000 for p in pts], "--s", color=c, label=f"{s} p99")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("offered load, IAMAT/s (open loop, one server)")
ax.set_ylabel("latency, ms (from when each request was due)")
ax.set_title("IAMAT latency against offered load")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8, ncol=2)
fig.tight_layout()
fig.savefig(plot, dpi=110)
print(f"\nplot: {plot}")
EOF
