#!/usr/bin/env bash
# herd against Redis, side by side, in one run (issue 6's scenarios and targets).
#
# Installs redis-server from Debian's packages if missing, starts it on loopback with
# persistence off, builds herd and its load generator (`herd-bench`, the bench/ crate) in
# release, and runs every scenario with the same client code against both; then prints a
# table of figures, ratios and targets.
# Everything it starts runs on 127.0.0.1, on free ports, and is stopped on exit, even on failure.
#
# Usage: bench/compare.sh
# Environment:
#   DURATION=10s          measured time of each throughput/propagation scenario
#   WARMUP=1s             warm-up before each, excluded from the figures
#   CONNECTIONS=10000     idle connections for the connections scenario
#   RECORDS=1000000       client records for the memory scenario
#   ROUNDS=3              rounds of each throughput scenario, herd and Redis back to back
#                         (order swapped every round); the table shows the median ratio
#   HERD_BENCH_THREADS=N  threads of the load generator, the same for herd and Redis
#                         (default: one per core, as herd's server has)
#   OUT=DIR               where the JSON reports and logs go (default target/bench/DATE)
#   ONLY=herd             run only the whole-herd scenarios (five `herd serve` processes
#                         against Redis with four replicas); default: everything
#   SAMPLE=1000           clients read back from every server after each whole-herd run
#   KEEP_LOGS=1           keep the servers' logs (every line and reply: gigabytes a run);
#                         by default they are deleted once the run has finished
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
CONNECTIONS=${CONNECTIONS:-10000}
RECORDS=${RECORDS:-1000000}
ROUNDS=${ROUNDS:-3}
ONLY=${ONLY:-all}
SAMPLE=${SAMPLE:-1000}
export HERD_BENCH_THREADS=${HERD_BENCH_THREADS:-$(nproc)}
export RUST_LOG=${RUST_LOG:-warn}
OUT=${OUT:-target/bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# stop/cleanup (on exit), say, free_ports, wait_port, herd_file; raises the fd limit.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((CONNECTIONS + 100)) ]; then
    echo "warning: open-file limit $(ulimit -n) is below $CONNECTIONS connections" >&2
fi

if ! command -v redis-server >/dev/null 2>&1; then
    say "installing redis-server"
    apt-get install -y redis-server >"$OUT/apt.log" 2>&1 ||
        { apt-get update >>"$OUT/apt.log" 2>&1 && apt-get install -y redis-server >>"$OUT/apt.log" 2>&1; }
fi

say "building herd and herd-bench (release)"
cargo build --release --locked -p herd --bin herd -p herd-bench --bin herd-bench
HERD=$PWD/target/release/herd
HERD_BENCH=$PWD/target/release/herd-bench

start_redis() {
    REDIS_PORT=$(free_ports 1)
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --dir "$(redis_dir)" --appendonly no \
        --maxclients $((CONNECTIONS + 1000)) --daemonize no --logfile "$OUT/redis.log" &
    REDIS_PID=$!
    started+=("$REDIS_PID")
    wait_port "$REDIS_PORT"
    REDIS=127.0.0.1:$REDIS_PORT
}

start_one() {
    local ports
    read -r -a ports <<<"$(free_ports 2)"
    herd_file "$OUT/one.toml" Goloman "${ports[@]}"
    # Every connection of the connections scenario comes from 127.0.0.1: past the
    # default max_clients_per_ip (1024) the rest would be refused.
    printf '[gateway]\nmax_clients_per_ip = %d\n' $((CONNECTIONS + 1000)) >>"$OUT/one.toml"
    "$HERD" serve Goloman --config "$OUT/one.toml" --log-dir "$OUT/logs" 2>>"$OUT/herd-serve.log" &
    HERD_PID=$!
    started+=("$HERD_PID")
    wait_port "${ports[0]}"
    ONE=127.0.0.1:${ports[0]}
    warm "$ONE"
}

# `bench NAME ARGS...`: runs `herd-bench ARGS --json` into $OUT/NAME.json. A run with errors
# (exit 3) still has its report; one that could not run leaves its reason in NAME.err.
bench() {
    local name=$1 rc=0; shift
    say "$name: herd-bench $*"
    "$HERD_BENCH" "$@" --json >"$OUT/$name.json" 2>"$OUT/$name.err" || rc=$?
    [ -s "$OUT/$name.err" ] && sed 's/^/   /' "$OUT/$name.err" >&2
    case $rc in
        0) ;;
        3) echo "   (completed with errors; see the report)" >&2 ;;
        *) echo "   failed (exit $rc)" >&2; rm -f "$OUT/$name.json" ;;
    esac
    return 0
}

LOAD=(--duration "$DURATION" --warmup "$WARMUP")

# `pair NAME ROUND ARGS...`: the scenario against herd and Redis, back to back, the order
# swapped every round so that neither always runs first.
pair() {
    local name=$1 round=$2; shift 2
    if [ $((round % 2)) = 1 ]; then
        bench "$name-herd-r$round" "$@" --addr "$ONE"
        bench "$name-redis-r$round" "$@" --redis --addr "$REDIS"
    else
        bench "$name-redis-r$round" "$@" --redis --addr "$REDIS"
        bench "$name-herd-r$round" "$@" --addr "$ONE"
    fi
}
# Fresh servers for every scenario: the IAMAT scenarios add a client per request (herd
# holds millions more after one), and what a scenario measures should not depend on
# what ran before it. (WHATSAT on a herd holding ~7 million records ran about 8% slower.)
fresh() {
    if [ -n "${HERD_PID:-}" ]; then stop "$HERD_PID"; fi
    if [ -n "${REDIS_PID:-}" ]; then stop "$REDIS_PID"; fi
    start_redis
    bench redis-places load-redis-places --addr "$REDIS"
    start_one
}
if [ "$ONLY" = all ]; then
for round in $(seq "$ROUNDS"); do
    fresh
    pair iamat-d1 "$round" iamat -c 50 -d 1 "${LOAD[@]}"
    fresh
    pair iamat-d16 "$round" iamat -c 50 -d 16 "${LOAD[@]}"
    fresh
    pair whatsat "$round" whatsat -c 50 -d 1 --radius 10 --bound 20 "${LOAD[@]}"
done
fresh
bench connections-herd connections --addr "$ONE" --count "$CONNECTIONS" --server-pid "$HERD_PID"
bench connections-redis connections --redis --addr "$REDIS" --count "$CONNECTIONS" --server-pid "$REDIS_PID"

# Memory per record on fresh servers.
stop "$HERD_PID"
stop "$REDIS_PID"
start_one
start_redis
bench records-herd records --addr "$ONE" --records "$RECORDS" --server-pid "$HERD_PID"
bench records-redis records --redis --addr "$REDIS" --records "$RECORDS" --server-pid "$REDIS_PID"
stop "$HERD_PID"
stop "$REDIS_PID"

# The whole herd in one process: Welsh -> Holiday -> Goloman|Wilkes -> Hands.
read -r -a ports <<<"$(free_ports 10)"
herd_file "$OUT/herd.toml" Goloman,Hands,Holiday,Welsh,Wilkes "${ports[@]}"
"$HERD" up --config "$OUT/herd.toml" --log-dir "$OUT/logs" 2>>"$OUT/herd-up.log" &
started+=("$!")
WELSH=127.0.0.1:${ports[6]}
HANDS=127.0.0.1:${ports[2]}
HANDS_PEER=127.0.0.1:${ports[3]}
wait_port "${ports[6]}"
bench propagation-idle-watch propagation --at "$WELSH" --watch "$HANDS_PEER" "${LOAD[@]}"
bench propagation-idle-poll propagation --at "$WELSH" --seen "$HANDS" "${LOAD[@]}"
bench propagation-20k-watch propagation --at "$WELSH" --watch "$HANDS_PEER" --background-rate 20000 "${LOAD[@]}"
stop "${started[-1]}"
fi

# The whole herd as five processes (`herd serve` each), IAMATs spread over all five, against
# Redis with four replicas (five redis-server processes, `replicaof` the first, persistence
# off; GEOADDs go to the primary, the only one that takes writes). Fresh servers every run.
NAMES=(Goloman Hands Holiday Welsh Wilkes)
start_herd5() {
    local ports i server
    read -r -a ports <<<"$(free_ports 10)"
    HERD5_PORTS=("${ports[@]}")
    herd_file "$OUT/herd5.toml" "$(IFS=,; echo "${NAMES[*]}")" "${ports[@]}"
    HERD5_PIDS=()
    for server in "${NAMES[@]}"; do
        "$HERD" serve "$server" --config "$OUT/herd5.toml" --log-dir "$OUT/logs" 2>>"$OUT/herd5.log" &
        HERD5_PIDS+=("$!")
        started+=("$!")
    done
    for i in 0 2 4 6 8; do wait_port "${ports[$i]}"; done
    # Every link up before the load (`herd status` exits 0 then).
    for i in $(seq 300); do
        "$HERD" status --config "$OUT/herd5.toml" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the five-server herd's links did not all come up in 30 s" >&2
    return 1
}
start_redis5() {
    local i
    read -r -a REDIS5_PORTS <<<"$(free_ports 5)"
    REDIS5_PIDS=()
    for i in 0 1 2 3 4; do
        local replica=()
        [ "$i" -gt 0 ] && replica=(--replicaof 127.0.0.1 "${REDIS5_PORTS[0]}")
        redis-server --bind 127.0.0.1 --port "${REDIS5_PORTS[$i]}" --save "" --dir "$(redis_dir)" --appendonly no \
            --daemonize no --logfile "$OUT/redis5-$i.log" "${replica[@]}" &
        REDIS5_PIDS+=("$!")
        started+=("$!")
    done
    for i in 0 1 2 3 4; do wait_port "${REDIS5_PORTS[$i]}"; done
    for i in $(seq 300); do
        redis-cli -p "${REDIS5_PORTS[0]}" info replication 2>/dev/null | grep -q '^connected_slaves:4' && return 0
        sleep 0.1
    done
    echo "the four Redis replicas did not all connect in 30 s" >&2
    return 1
}
stop_all() { local pid; for pid in "$@"; do stop "$pid"; done; }
herd5() {
    local name=$1; shift
    start_herd5
    bench "$name" herd --config "$OUT/herd5.toml" --server-pid "$(IFS=,; echo "${HERD5_PIDS[*]}")" \
        --sample "$SAMPLE" "$@"
    stop_all "${HERD5_PIDS[@]}"
}
redis5() {
    local name=$1; shift
    start_redis5
    bench "$name" herd --redis --addrs "$(printf '127.0.0.1:%s,' "${REDIS5_PORTS[@]}" | sed 's/,$//')" \
        --server-pid "$(IFS=,; echo "${REDIS5_PIDS[*]}")" --sample "$SAMPLE" "$@"
    stop_all "${REDIS5_PIDS[@]}"
}
for round in $(seq "$ROUNDS"); do
    for depth in 16 1; do
        if [ $((round % 2)) = 1 ]; then
            herd5 "herd5-d$depth-herd-r$round" -c 50 -d "$depth" "${LOAD[@]}"
            redis5 "herd5-d$depth-redis-r$round" -c 50 -d "$depth" "${LOAD[@]}"
        else
            redis5 "herd5-d$depth-redis-r$round" -c 50 -d "$depth" "${LOAD[@]}"
            herd5 "herd5-d$depth-herd-r$round" -c 50 -d "$depth" "${LOAD[@]}"
        fi
    done
done
# Propagation Welsh -> Hands (three hops) under half of the load above: the median
# 50 x 16 round's IAMAT/s, halved, open loop, over 50 connections spread over all five
# servers; the probes at Welsh, seen through Hands' Inspect/Watch.
HALF=$(python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, os, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rates = []
for i in range(1, rounds + 1):
    try:
        with open(os.path.join(out, f"herd5-d16-herd-r{i}.json")) as f:
            rates.append(json.load(f)["throughput_ops_s"])
    except (OSError, ValueError, KeyError):
        pass
rates.sort()
print(int(rates[(len(rates) - 1) // 2] / 2) if rates else 0)
EOF
)
if [ "$HALF" -gt 0 ]; then
    start_herd5
    bench herd5-propagation-half propagation --at "127.0.0.1:${HERD5_PORTS[6]}" \
        --watch "127.0.0.1:${HERD5_PORTS[3]}" --background-rate "$HALF" \
        --background-connections 50 \
        --background-at "$(for i in 0 2 4 6 8; do printf '127.0.0.1:%s,' "${HERD5_PORTS[$i]}"; done | sed 's/,$//')" \
        "${LOAD[@]}"
    stop_all "${HERD5_PIDS[@]}"
fi

# A lone server under the same load, for the herd-wide CPU per IAMAT against it.
start_one
bench herd1-d16 herd --config "$OUT/one.toml" --server-pid "$HERD_PID" --sample "$SAMPLE" \
    -c 50 -d 16 "${LOAD[@]}"
stop "$HERD_PID"

say "results (JSON reports in $OUT)"
[ "$ONLY" = all ] && python3 - "$OUT" "$ROUNDS" "$HERD_BENCH_THREADS" <<'EOF'
import json, os, sys
out, rounds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def load(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def n(v):
    return "-" if v is None else f"{v:,.0f}"

def errs(r):
    return "" if r is None or r["errors"]["total"] == 0 else f' ({r["errors"]["total"]:,} errors)'

rows = []
def row(what, herd, redis, ratio, target, verdict):
    rows.append((what, herd, redis, ratio, target, verdict))

def check(ok):
    return "-" if ok is None else ("met" if ok else "NOT met")

notes = []
for name, title, goal in [
    ("iamat-d1", "IAMAT 50 conns x 1 (ops/s)", 1.2),
    ("iamat-d16", "IAMAT 50 conns x 16 (ops/s)", 1.0),
    ("whatsat", "WHATSAT 10 km, 20, LA (ops/s)", 1.0),
]:
    # Each round's ratio comes from one herd run and one Redis run back to back; the row
    # shows the round with the median ratio, and every round's ratio is listed below.
    done = []
    for i in range(1, rounds + 1):
        h, r = load(f"{name}-herd-r{i}"), load(f"{name}-redis-r{i}")
        ht = h and h["throughput_ops_s"]
        rt = r and r["throughput_ops_s"]
        done.append((ht / rt if ht and rt else None, h, r))
    measured = sorted((d for d in done if d[0] is not None), key=lambda d: d[0])
    ratio, h, r = measured[(len(measured) - 1) // 2] if measured else (None, None, None)
    if measured and len(measured) % 2 == 0:
        # An even count: the median is the mean of the middle two; show the lower round.
        ratio = (measured[len(measured) // 2 - 1][0] + measured[len(measured) // 2][0]) / 2
    ht = h and h["throughput_ops_s"]
    rt = r and r["throughput_ops_s"]
    row(title, n(ht) + errs(h), n(rt) + errs(r),
        "-" if ratio is None else f"{ratio:.2f}", f">= {goal} x Redis",
        check(None if ratio is None else ratio >= goal))
    for q, label in [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")]:
        row(f"  latency {label} (us)", n(h and h["latency_us"][q]), n(r and r["latency_us"][q]),
            "", "", "")
    if name == "whatsat" and h and r:
        row("  places per reply (sampled)", f'{h.get("results_per_reply", 0):.1f}',
            f'{r.get("results_per_reply", 0):.1f}', "", "", "")
    notes.append(f"{name}: " + ", ".join(
        "failed" if d[0] is None else f"{d[1]['throughput_ops_s']:,.0f}/{d[2]['throughput_ops_s']:,.0f} = {d[0]:.2f}"
        for d in done))

for name, title, quant, limit in [
    ("propagation-idle-watch", "Welsh->Hands idle, Watch (us)", "p50", 1000),
    ("propagation-idle-poll", "Welsh->Hands idle, polling (us)", "p50", 1000),
    ("propagation-20k-watch", "Welsh->Hands at 20k IAMAT/s (us)", "p99", 5000),
]:
    p = load(name)
    if p is None:
        row(title, "failed", "", "", f"{quant} < {limit:,} us", "-")
        continue
    l = p["latency_us"]
    bg = p["background"]
    extra = f' (bg {bg["achieved_rate"]:,.0f}/s)' if bg["target_rate"] else ""
    extra += f', {p["seen"]:,} probes'
    if p.get("watch_fallbacks"):
        extra += f' ({p["watch_fallbacks"]:,} via Lookup)'
    row(title, f'p50 {l["p50"]:,} p99 {l["p99"]:,}{extra}{errs(p)}', "n/a", "",
        f"{quant} < {limit:,} us", check(l[quant] < limit and p["errors"]["total"] == 0))

h, r = load("connections-herd"), load("connections-redis")
def conns(c):
    if c is None:
        return "failed"
    per = c.get("bytes_per_connection")
    return f'{c["answered"]:,}/{c["count"]:,} answer' + (f", {per:,} B each" if per is not None else "")
row("idle connections", conns(h), conns(r), "", f"{h and h['count'] or 10000:,} held",
    check(None if h is None else h["answered"] == h["count"]))

h, r = load("records-herd"), load("records-redis")
def rss(c):
    if c is None or c.get("rss_kb_after") is None:
        return "failed"
    grew = (c["rss_kb_after"] - c["rss_kb_before"]) * 1024 / max(c["requests"], 1)
    return (f'{c["rss_kb_after"] / 1024:,.0f} MB RSS, {c["requests"]:,} records'
            f' ({grew:,.0f} B each){errs(c)}')
row("client records, memory", rss(h), rss(r),
    "" if not (h and r and h.get("rss_kb_after") and r.get("rss_kb_after"))
    else f'{h["rss_kb_after"] / r["rss_kb_after"]:.2f}',
    "< 300 MB", check(None if h is None or h.get("rss_kb_after") is None
                      else h["rss_kb_after"] < 300 * 1024 and h["requests"] >= 1_000_000))

widths = [max(len(str(r[i])) for r in rows + [("scenario", "herd", "redis", "herd/redis", "target", "")]) for i in range(6)]
head = ("scenario", "herd", "redis", "herd/redis", "target", "")
for r in [head] + rows:
    print("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)).rstrip())
print(f"\nthroughput rounds (herd/Redis ops/s = ratio), {threads} generator thread(s); "
      "the table shows the median round:")
for line in notes:
    print("  " + line)
EOF

python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, os, sys
out, rounds = sys.argv[1], int(sys.argv[2])

def load(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def back(r):
    if r is None:
        return "failed"
    b = r["read_back"]
    text = f'{b["identical"]:,}/{b["sampled"]:,} identical'
    if r["errors"]["total"]:
        text += f' ({r["errors"]["total"]:,} errors)'
    return text

print("\nwhole herd: five herd serve processes vs Redis with four replicas, "
      "50 connections (herd: spread over all five; Redis: at the primary)")
print(f'  {"load":<10} {"herd ops/s":>12} {"redis ops/s":>12} {"ratio":>6}  {"goal":<15} '
      f'{"CPU us/IAMAT herd":>17} {"redis":>6}  read-back herd | redis')
for depth, goal in [(16, 1.5), (1, 1.2)]:
    done = []
    for i in range(1, rounds + 1):
        h, r = load(f"herd5-d{depth}-herd-r{i}"), load(f"herd5-d{depth}-redis-r{i}")
        ratio = h["throughput_ops_s"] / r["throughput_ops_s"] if h and r and r["throughput_ops_s"] else None
        done.append((ratio, h, r))
    measured = sorted((d for d in done if d[0] is not None), key=lambda d: d[0])
    if not measured:
        print(f"  depth {depth:<4} failed")
        continue
    ratio, h, r = measured[(len(measured) - 1) // 2]
    verdict = "met" if ratio >= goal else "NOT met"
    print(f'  depth {depth:<4} {h["throughput_ops_s"]:>12,.0f} {r["throughput_ops_s"]:>12,.0f} {ratio:>6.2f}  '
          f'>= {goal} {verdict:<8} {h.get("server_cpu_us_per_iamat") or 0:>17.1f} {r.get("server_cpu_us_per_iamat") or 0:>6.1f}'
          f'  {back(h)} | {back(r)}')
    print("    rounds: " + ", ".join("failed" if d[0] is None else f"{d[0]:.2f}" for d in done))
p = load("herd5-propagation-half")
if p:
    l, bg = p["latency_us"], p["background"]
    print(f'  update Welsh -> Hands (3 hops) under {bg["achieved_rate"]:,.0f} IAMAT/s spread over all five '
          f'(half the median 50 x 16 round): p50 {l["p50"]:,} us, p99 {l["p99"]:,} us, {p["seen"]:,} probes'
          f'{", %d errors" % p["errors"]["total"] if p["errors"]["total"] else ""} '
          f'(goal p99 < 2,000 us: {"met" if l["p99"] < 2000 and not p["errors"]["total"] else "NOT met"})')
one = load("herd1-d16")
h = load("herd5-d16-herd-r1")
if one and h and one.get("server_cpu_us_per_iamat") and h.get("server_cpu_us_per_iamat"):
    k = h["server_cpu_us_per_iamat"] / one["server_cpu_us_per_iamat"]
    print(f'  CPU per IAMAT, herd-wide {h["server_cpu_us_per_iamat"]:.1f} us vs a lone server '
          f'{one["server_cpu_us_per_iamat"]:.1f} us ({one["throughput_ops_s"]:,.0f} ops/s): '
          f'{k:.2f} x (goal <= 2.5: {"met" if k <= 2.5 else "NOT met"})')
EOF

# Durability (DURABLE=1; not part of the default run): herd with a data dir against Redis
# with `appendonly yes` and the same `appendfsync`, IAMAT 50 x 16 per policy; then the
# time to restart with $RECORDS records (herd: until "herd ready"; Redis: until it
# answers PING after loading its AOF), and the bytes on disk per record.
if [ "${DURABLE:-0}" = 1 ]; then
    start_one_data() {  # POLICY
        local ports
        read -r -a ports <<<"$(free_ports 2)"
        herd_file "$OUT/one.toml" Goloman "${ports[@]}"
        rm -rf "$OUT/data"
        "$HERD" serve Goloman --config "$OUT/one.toml" --log-dir "$OUT/logs" \
            --data-dir "$OUT/data" --fsync "$1" 2>>"$OUT/herd-serve.log" &
        HERD_PID=$!
        started+=("$HERD_PID")
        wait_port "${ports[0]}"
        ONE=127.0.0.1:${ports[0]}
        ONE_PORTS=("${ports[@]}")
    }
    start_redis_aof() {  # POLICY [keep]
        REDIS_PORT=$(free_ports 1)
        [ "${2:-}" = keep ] || rm -rf "$OUT/redis-data"
        mkdir -p "$OUT/redis-data"
        redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly yes \
            --appendfsync "$1" --dir "$OUT/redis-data" --maxclients $((CONNECTIONS + 1000)) \
            --daemonize no --logfile "$OUT/redis-aof.log" &
        REDIS_PID=$!
        started+=("$REDIS_PID")
        wait_port "$REDIS_PORT"
        REDIS=127.0.0.1:$REDIS_PORT
    }
    for policy in everysec always; do
        redis_policy=$policy
        start_one_data "$policy"
        bench "durable-$policy-herd" iamat -c 50 -d 16 "${LOAD[@]}" --addr "$ONE"
        stop "$HERD_PID"
        start_redis_aof "$redis_policy"
        bench "durable-$policy-redis" iamat -c 50 -d 16 "${LOAD[@]}" --redis --addr "$REDIS"
        stop "$REDIS_PID"
    done
    # Restart times: load, SIGKILL, start again on the same files.
    start_one_data everysec
    bench durable-load-herd records --addr "$ONE" --records "$RECORDS" --server-pid "$HERD_PID"
    sleep 2
    kill -9 "$HERD_PID"; wait "$HERD_PID" 2>/dev/null || true
    herd_bytes=$(du -sb "$OUT/data" | cut -f1)
    t0=$(date +%s.%N)
    "$HERD" serve Goloman --config "$OUT/one.toml" --log-dir "$OUT/logs" \
        --data-dir "$OUT/data" 2>"$OUT/herd-restart.log" &
    HERD_PID=$!
    started+=("$HERD_PID")
    until grep -q "herd ready" "$OUT/herd-restart.log"; do sleep 0.01; done
    herd_restart=$(echo "$(date +%s.%N) - $t0" | bc)
    stop "$HERD_PID"
    start_redis_aof everysec
    bench durable-load-redis records --redis --addr "$REDIS" --records "$RECORDS" --server-pid "$REDIS_PID"
    sleep 2
    kill -9 "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
    redis_bytes=$(du -sb "$OUT/redis-data" | cut -f1)
    t0=$(date +%s.%N)
    start_redis_aof everysec keep
    until redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; do sleep 0.01; done
    redis_restart=$(echo "$(date +%s.%N) - $t0" | bc)
    stop "$REDIS_PID"
    python3 - "$OUT" "$RECORDS" "$herd_restart" "$redis_restart" "$herd_bytes" "$redis_bytes" <<'PY'
import json, os, sys
out, records = sys.argv[1], int(sys.argv[2])
hr, rr, hb, rb = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def ops(name):
    try:
        return json.load(open(os.path.join(out, name + ".json")))["throughput_ops_s"]
    except (OSError, ValueError, KeyError):
        return None
for policy in ["everysec", "always"]:
    h, r = ops(f"durable-{policy}-herd"), ops(f"durable-{policy}-redis")
    ratio = f"{h / r:.2f}" if h and r else "-"
    print(f"IAMAT 50 x 16, fsync {policy}: herd {h or 0:,.0f} ops/s, Redis AOF {r or 0:,.0f} ops/s ({ratio})")
print(f"restart with {records:,} records: herd {hr:.2f} s, Redis AOF {rr:.2f} s")
print(f"on disk per record: herd {hb / records:.0f} B, Redis AOF {rb / records:.0f} B")
PY
fi

if [ "${KEEP_LOGS:-0}" != 1 ]; then
    echo "(deleting the servers' logs, $(du -sh "$OUT/logs" 2>/dev/null | cut -f1); KEEP_LOGS=1 keeps them)" >&2
    rm -rf "$OUT/logs"
fi
