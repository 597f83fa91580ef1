#!/usr/bin/env bash
# The whole herd as five `herd serve` processes of a herd file, one `herd-bench herd` run
# against them, and (MODE=callgrind) every server under callgrind, instrumented only while
# the load runs: its instruction count per IAMAT herd-wide does not move with the machine's
# load, unlike ops/s. How the figures of README's "Whole herd" table were taken.
#
# Usage: bench/herd5.sh HERD_FILE [herd-bench herd ARGS...]
#   e.g. bench/herd5.sh herd5.toml -c 50 -d 16 --duration 3s --sample 500
#        MODE=callgrind bench/herd5.sh herd5.toml -c 10 -d 16 --requests 5000 --warmup 0s --sample 0
# Environment: HERD, HERD_BENCH (default target/release/...), MODE=plain|callgrind,
# OUT (default target/bench/herd5-DATE). The herd file's servers must be free to start here.
set -u
cd "$(dirname "$0")/.."
CFG=$1; shift
HERD=${HERD:-$PWD/target/release/herd}
HERD_BENCH=${HERD_BENCH:-$PWD/target/release/herd-bench}
MODE=${MODE:-plain}
OUT=${OUT:-target/bench/herd5-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
names=$(python3 -c 'import sys,tomllib; print(" ".join(s["name"] for s in tomllib.load(open(sys.argv[1],"rb"))["server"]))' "$CFG")
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait' EXIT
for s in $names; do
    if [ "$MODE" = callgrind ]; then
        RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.$s" \
            "$HERD" serve "$s" --config "$CFG" --log-dir "$OUT/logs" 2>"$OUT/$s.err" &
    else
        RUST_LOG=warn "$HERD" serve "$s" --config "$CFG" --log-dir "$OUT/logs" 2>"$OUT/$s.err" &
    fi
    pids+=("$!")
done
for _ in $(seq 600); do "$HERD" status --config "$CFG" >/dev/null 2>&1 && break; sleep 0.2; done
if [ "$MODE" = callgrind ]; then
    # Warm-up, uncounted: the offline places index is built on the first WHATSAT.
    "$HERD_BENCH" herd --config "$CFG" -c 5 --requests 50 --warmup 0s --sample 50 --timeout 200s \
        --settle 60s --json >"$OUT/warm.json" 2>&1
    for p in "${pids[@]}"; do callgrind_control -i on "$p" >/dev/null; done
fi
"$HERD_BENCH" herd --config "$CFG" --server-pid "$(IFS=,; echo "${pids[*]}")" "$@" --json >"$OUT/report.json"
rc=$?
[ "$MODE" = callgrind ] && for p in "${pids[@]}"; do callgrind_control -i off "$p" >/dev/null; done
for p in "${pids[@]}"; do kill -TERM "$p"; done
wait
pids=()
python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
r = json.load(open(os.path.join(out, "report.json")))
b = r["read_back"]
print(f'{r["throughput_ops_s"]:,.0f} IAMAT/s, {r["errors"]["total"]} errors, read-back {b["identical"]}/{b["sampled"]} '
      f'identical ({b["settle_ms"]} ms to settle), server CPU {r.get("server_cpu_us_per_iamat")} us per IAMAT')
total = 0
for f in sorted(glob.glob(os.path.join(out, "callgrind.*"))):
    ir = max((int(l.split()[1]) for l in open(f) if l.startswith(("summary:", "totals:"))), default=0)
    total += ir
    print(f"  {os.path.basename(f)}: {ir:,} instructions")
if total:
    print(f'instructions per IAMAT herd-wide: {total / max(r["requests"], 1):,.0f} ({r["requests"]:,} IAMATs)')
PY
exit $rc
