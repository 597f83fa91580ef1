#!/usr/bin/env bash
# Tests deploy/ for real on this machine's Docker Engine, with no registry:
# builds the static binary on the host, makes the base image with `docker import`
# and the herd image with `docker build --network none` (nothing is pulled),
# brings the five containers up under a compose project of its own, and shows
# through the published ports only that updates flood, that stopping Holiday or
# cutting it off the network isolates Welsh, that restarting or reconnecting it
# restores the flooding without touching the other containers, and that
# `down` leaves nothing running. It cleans up (containers, network, volume,
# images) on any exit, and ends with one line: `N passed, M failed`.
#
# Usage: deploy/test.sh                  (from anywhere)
# Environment:
#   HERD_PORT_BASE  published ports are BASE+1..BASE+5 (client) and
#                   BASE+1001..BASE+1005 (peer); default 12000, the herd's own.
set -uo pipefail
cd "$(dirname "$0")/.."
. deploy/image-lib.sh

project=herdtest$$
image=herdtest$$:latest
base_image=herdtest$$-base:latest
services=(goloman hands holiday welsh wilkes)
names=(Goloman Hands Holiday Welsh Wilkes)
port_base=${HERD_PORT_BASE:-12000}
started=$SECONDS
cargo_secs=0
docker_start=
certs_made=
certs_saved=deploy/certs.before-test$$

passed=0
failed=0
# pass, fail, check, abort, step; herd_call, ports_free, wait_for, holds_for, iamat,
# whatsat_line, at_from, knows, unknown_at.
source "$(dirname "${BASH_SOURCE[0]}")/check-lib.sh"

compose=()
dc() { "${compose[@]}" -p "$project" -f deploy/docker-compose.yml "$@"; }

cleanup() {
    trap - EXIT INT TERM
    if ((${#compose[@]})); then
        step "cleanup: $project down -v, images removed"
        dc down -v --remove-orphans >/dev/null 2>&1
    fi
    docker rm -f "$project-probe" >/dev/null 2>&1
    image_remove "$project"
    # The certificates and secret this run made; the operator's own come back.
    if [[ -n $certs_made ]]; then
        rm -rf deploy/certs
        [[ -d $certs_saved ]] && mv "$certs_saved" deploy/certs
    fi
    if [[ -n $docker_start ]]; then
        echo "time: cargo build ${cargo_secs}s, docker $((SECONDS - docker_start))s, total $((SECONDS - started))s"
    fi
    echo "$passed passed, $failed failed"
    if ((failed > 0 || passed == 0)); then exit 1; fi
    exit 0
}
trap cleanup EXIT
trap 'fail "interrupted"; exit 130' INT TERM

# ---- helpers ---------------------------------------------------------------

# GET /metrics through a published peer port, over TLS with the herd's CA (the
# certificate must name server NAME); true when it answers 200 with metrics.
metrics_ok() { # PORT NAME
    python3 - "$1" "$2" deploy/certs/ca.pem <<'PY'
import socket, ssl, sys
port, name, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname=name) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
head, _, body = reply.partition(b"\r\n\r\n")
sys.exit(0 if head.startswith(b"HTTP/1.1 200") and b"herd_" in body else 1)
PY
}

client_port() { echo $((port_base + $1)); }       # 1..5 in PROTOCOL.md order
peer_port() { echo $((port_base + 1000 + $1)); }
GOLOMAN=1 HANDS=2 HOLIDAY=3 WELSH=4

container() { # SERVICE -> container id (running or not)
    docker ps -aq --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1"
}
healthy() { # SERVICE...
    local s
    for s in "$@"; do
        [[ $(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' \
            "$(container "$s")" 2>/dev/null) == healthy ]] || return 1
    done
}
# Id and start time of each container but the one named, to show it was not touched.
others_state() { # SERVICE
    local s
    for s in "${services[@]}"; do
        [[ $s == "$1" ]] && continue
        docker inspect -f "$s {{.Id}} {{.State.StartedAt}} {{.RestartCount}}" "$(container "$s")"
    done
}
project_left() { # prints any container, network or volume of the project
    docker ps -aq --filter "label=com.docker.compose.project=$project"
    docker network ls -q --filter "label=com.docker.compose.project=$project"
    docker network ls -q --filter "name=^${project}_default\$"
}

# ---- preflight ---------------------------------------------------------------

step "preflight"
command -v python3 >/dev/null || abort "python3 is needed"
docker info >/dev/null 2>&1 || abort "cannot reach the Docker Engine (docker info)"
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    abort "neither 'docker compose' nor 'docker-compose' is installed"
fi
echo "compose: ${compose[*]} ($("${compose[@]}" version --short 2>/dev/null || echo '?'))"
dc config -q || abort "deploy/docker-compose.yml does not validate"

published=()
for i in 1 2 3 4 5; do
    n=${names[i - 1]^^}
    export "HERD_${n}_CLIENT_PORT=$(client_port "$i")" "HERD_${n}_PEER_PORT=$(peer_port "$i")"
    published+=("$(client_port "$i")" "$(peer_port "$i")")
done
ports_free "${published[@]}" ||
    abort "published ports must be free (another herd running?); set HERD_PORT_BASE to move them"
pass "published ports free: $(client_port 1)-$(client_port 5), $(peer_port 1)-$(peer_port 5)"

# ---- the static binary (host) ------------------------------------------------

image_build_binary
docker_start=$SECONDS

# ---- the backbone's secret and certificates ----------------------------------------

step "herd secret and certificates (herd certs) in deploy/certs"
[[ -e deploy/certs ]] && mv deploy/certs "$certs_saved"
certs_made=1
image_make_certs deploy/herd-compose.toml deploy/certs

# ---- images, with nothing pulled ----------------------------------------------

image_build "$image" "$base_image" "$project"

user=$(docker image inspect -f '{{.Config.User}}' "$image")
size=$(docker image inspect -f '{{.Size}}' "$image")
docker create --name "$project-probe" "$image" >/dev/null
files=$(docker export "$project-probe" | tar -t)
docker rm "$project-probe" >/dev/null
check "image runs as non-root user ($user)" [ "$user" = 10001:10001 ]
check "image holds the CA bundle" grep -qx 'etc/ssl/certs/ca-certificates.crt' <<<"$files"
check "image holds the licence and the data credit" \
    bash -c 'grep -qx usr/share/doc/herd/LICENSE <<<"$1" && grep -qx usr/share/doc/herd/DATA.md <<<"$1"' _ "$files"
check "image declares no ports of its own (compose declares each service's)" \
    [ "$(docker image inspect -f '{{json .Config.ExposedPorts}}' "$image")" = null ]
check "image is small and has no shell or compiler ($((size / 1000000)) MB, $(grep -vc '/$' <<<"$files") files)" \
    bash -c '! grep -qE "(^|/)(sh|bash|cc|gcc|rustc|cargo)$" <<<"$1" && (( $2 < 30000000 ))' _ "$files" "$size"

# ---- up ------------------------------------------------------------------------

step "up: project $project"
export HERD_IMAGE=$image
dc up -d --no-build || abort "compose up"
wait_for 60 healthy "${services[@]}" || {
    dc ps
    dc logs --tail 20
    abort "five containers healthy within 60 s"
}
pass "five containers healthy (compose healthcheck: herd health)"

health_ok() {
    local i
    for i in 1 2 3 4 5; do
        "$binary" health --config deploy/herd-compose.toml --server "${names[i - 1]}" \
            --addr "127.0.0.1:$(peer_port "$i")" >/dev/null 2>&1 || return 1
        metrics_ok "$(peer_port "$i")" "${names[i - 1]}" 2>/dev/null || return 1
    done
}
check "health and /metrics answer over TLS on the five published peer ports" wait_for 10 health_ok
check "a peer port does not speak plaintext" \
    bash -c '! HERD_CONFIG= "$1" health --addr "127.0.0.1:$2" >/dev/null 2>&1' _ "$binary" "$(peer_port 1)"
peer_bind=$(docker port "$(container goloman)" 13001/tcp | head -n 1)
check "peer ports are published on the loopback only ($peer_bind)" \
    bash -c '[[ $1 == 127.0.0.1:* ]]' _ "$peer_bind"
if [[ $port_base == 12000 ]]; then # herd status dials the herd file's ports
    status_ok() { "$binary" status --config deploy/herd-compose.toml --host 127.0.0.1 --interval 100ms >/dev/null 2>&1; }
    check "herd status with the secret: every server serving and every link up (TLS)" \
        wait_for 20 status_ok
    echo wrong-secret-0123456789abcdef >"deploy/certs/wrong.secret"
    check "herd status with a wrong secret sees no link (Inspect refused)" \
        bash -c '! HERD_SECRET_FILE=deploy/certs/wrong.secret "$1" status --config deploy/herd-compose.toml --host 127.0.0.1 --interval 100ms >/dev/null 2>&1' _ "$binary"
fi

# ---- flooding ------------------------------------------------------------------

step "flooding: IAMAT at Welsh, WHATSAT at Hands"
c1=kiwi.$project.1
at1=$(iamat $WELSH "$c1")
check "IAMAT at Welsh answered: $at1" at_from Welsh "$at1"
check "WHATSAT at Hands returns Welsh's AT line byte for byte" wait_for 15 knows $HANDS "$c1" "$at1"

# ---- stop / start Holiday --------------------------------------------------------

step "compose stop holiday"
holiday=$(container holiday)
others=$(others_state holiday)
dc stop holiday 2>&1 | sed 's/^/  /'
c2=kiwi.$project.2
at2=$(iamat $WELSH "$c2")
check "Welsh still answers IAMAT with Holiday stopped" at_from Welsh "$at2"
check "with Holiday stopped, Welsh's IAMAT does not reach Goloman (3 s)" holds_for 3 unknown_at $GOLOMAN "$c2"

step "compose start holiday"
dc start holiday 2>&1 | sed 's/^/  /'
check "Holiday healthy again" wait_for 60 healthy holiday
c3=kiwi.$project.3
at3=$(iamat $WELSH "$c3")
check "after start, a new IAMAT at Welsh reaches Goloman" wait_for 20 knows $GOLOMAN "$c3" "$at3"
check "the IAMAT made while Holiday was down reaches Goloman too (catch-up)" \
    wait_for 10 knows $GOLOMAN "$c2" "$at2"
check "start restarted the same Holiday container" [ "$(container holiday)" = "$holiday" ]
check "the other four containers were not touched (ids, start times, restarts)" \
    [ "$(others_state holiday)" = "$others" ]

# ---- network disconnect / connect Holiday ---------------------------------------

network=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$holiday")
network=${network%% *}
aliases=$(docker inspect -f "{{range \$k, \$v := .NetworkSettings.Networks}}{{if eq \$k \"$network\"}}{{range \$v.Aliases}}{{.}} {{end}}{{end}}{{end}}" "$holiday")
step "docker network disconnect $network holiday (aliases: $aliases)"
others=$(others_state holiday)
holiday_started=$(docker inspect -f '{{.State.StartedAt}}' "$holiday")
docker network disconnect "$network" "$holiday" || fail "docker network disconnect"
c4=kiwi.$project.4
at4=$(iamat $WELSH "$c4")
check "Welsh still answers IAMAT with Holiday cut off" at_from Welsh "$at4"
check "with Holiday cut off, Welsh's IAMAT does not reach Goloman (3 s)" holds_for 3 unknown_at $GOLOMAN "$c4"

step "docker network connect $network holiday (same aliases)"
alias_args=()
for a in $aliases; do alias_args+=(--alias "$a"); done
docker network connect "${alias_args[@]}" "$network" "$holiday" || fail "docker network connect"
c5=kiwi.$project.5
at5=$(iamat $WELSH "$c5")
check "after connect, a new IAMAT at Welsh reaches Goloman" wait_for 30 knows $GOLOMAN "$c5" "$at5"
check "the IAMAT made while Holiday was cut off reaches Goloman too (catch-up)" \
    wait_for 10 knows $GOLOMAN "$c4" "$at4"
check "Holiday kept running through the cut (same start time)" \
    [ "$(docker inspect -f '{{.State.StartedAt}}' "$holiday")" = "$holiday_started" ]
check "the other four containers were not touched (ids, start times, restarts)" \
    [ "$(others_state holiday)" = "$others" ]

# ---- logs volume -------------------------------------------------------------------

logs=$(docker cp "$(container goloman)":/var/log/herd - 2>/dev/null | tar -t)
check "one log file per server on the shared logs volume" \
    bash -c 'for n in Goloman Hands Holiday Welsh Wilkes; do grep -qx "herd/$n.log" <<<"$1" || exit 1; done' _ "$logs"

# ---- down ------------------------------------------------------------------------------

step "compose down"
dc down 2>&1 | sed 's/^/  /'
left=$(project_left)
check "down leaves no container and no network of the project" [ -z "$left" ]
[[ -z $left ]] || docker ps -a --filter "label=com.docker.compose.project=$project"
