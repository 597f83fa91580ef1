#!/usr/bin/env bash
# Tests deploy/stack.yml for real on this machine's Docker Engine, as a single-node
# swarm, with no registry: the image is built as deploy/test.sh builds it (shared:
# deploy/image-lib.sh; nothing is pulled), the swarm is made with `docker swarm
# init` when the engine has none, and the stack deployed with `docker stack deploy`:
# five services, one server each, the herd secret and certificates as swarm
# secrets. Through the published client ports and a probe container on the
# attachable overlay network it shows that updates flood, that scaling Holiday to
# zero isolates Welsh and scaling it back to one serves it again (its record kept
# in its data volume), that cutting Holiday off the overlay (packets dropped in the
# task's network namespace) does the same without the swarm restarting anything,
# and that `docker stack rm` leaves no service, network or secret. It cleans up
# (stack, volumes, probe, images, the swarm it made: `docker swarm leave --force`)
# on any exit, and ends with one line: `N passed, M failed`.
#
# Usage: deploy/swarm-test.sh           (from anywhere; as root: nsenter, iptables)
# The client ports 12001-12005 (stack.yml's) must be free.
set -uo pipefail
cd "$(dirname "$0")/.."
. deploy/image-lib.sh

stack=herdswarm$$
image=herdswarm$$:latest
base_image=herdswarm$$-base:latest
services=(goloman hands holiday welsh wilkes)
names=(Goloman Hands Holiday Welsh Wilkes)
started=$SECONDS
cargo_secs=0
docker_start=
certs_made=
certs_saved=deploy/certs.before-test$$
swarm_made=
gwbridge_made=
deployed=
cut_pid=
cut_subnet=

passed=0
failed=0
# pass, fail, check, abort, step; herd_call, ports_free, wait_for, holds_for, iamat,
# whatsat_line, at_from, knows, unknown_at.
source "$(dirname "${BASH_SOURCE[0]}")/check-lib.sh"

# Drops (or with -D, stops dropping) every packet between the network namespace
# of process PID and SUBNET.
cut_rules() { # -A|-D PID SUBNET
    nsenter -t "$2" -n iptables "$1" INPUT -s "$3" -j DROP &&
        nsenter -t "$2" -n iptables "$1" OUTPUT -d "$3" -j DROP
}

stack_containers() { docker ps -aq --filter "label=com.docker.stack.namespace=$stack"; }

cleanup() {
    trap - EXIT INT TERM
    [[ -n $cut_pid ]] && cut_rules -D "$cut_pid" "$cut_subnet" 2>/dev/null
    docker rm -f "$stack-probe" >/dev/null 2>&1
    if [[ -n $deployed ]]; then
        step "cleanup: stack $stack removed, its volumes, images"
        docker stack rm "$stack" >/dev/null 2>&1
        # Volumes and the network go once the tasks' containers have.
        wait_for 60 bash -c '[[ -z $(docker ps -aq --filter "label=com.docker.stack.namespace=$1") ]]' _ "$stack"
        local v round
        for v in $(docker volume ls -q --filter "label=com.docker.stack.namespace=$stack"); do
            for round in 1 2 3 4 5; do
                docker volume rm "$v" >/dev/null 2>&1 && break
                sleep 1
            done
        done
    fi
    image_remove "$stack"
    if [[ -n $certs_made ]]; then
        rm -rf deploy/certs
        [[ -d $certs_saved ]] && mv "$certs_saved" deploy/certs
    fi
    if [[ -n $swarm_made ]]; then
        docker swarm leave --force >/dev/null 2>&1 || echo "cleanup: docker swarm leave --force failed" >&2
        # swarm init makes this bridge (the tasks' way out) and leave keeps it.
        [[ -n $gwbridge_made ]] && docker network rm docker_gwbridge >/dev/null 2>&1
        echo "cleanup: swarm left ($(docker info -f '{{.Swarm.LocalNodeState}}' 2>/dev/null))"
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

client_port() { echo $((12000 + $1)); } # 1..5 in PROTOCOL.md order (stack.yml's)
GOLOMAN=1 HANDS=2 HOLIDAY=3 WELSH=4

container() { # SERVICE -> the id of its running task's container (none when scaled to 0)
    docker ps -q --filter "label=com.docker.swarm.service.name=${stack}_$1"
}
healthy() { # SERVICE...
    local s c
    for s in "$@"; do
        c=$(container "$s")
        [[ -n $c && $c != *$'\n'* ]] || return 1
        [[ $(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c" 2>/dev/null) == healthy ]] || return 1
    done
}
# Container id and start time of each service but the one named: not touched?
others_state() { # SERVICE
    local s
    for s in "${services[@]}"; do
        [[ $s == "$1" ]] && continue
        docker inspect -f "$s {{.Id}} {{.State.StartedAt}}" "$(container "$s")"
    done
}

# herd status from a probe container on the stack's overlay network (the herd
# file's hosts are the service names, resolved by the swarm's DNS).
probe_status() {
    docker run --rm --name "$stack-probe" --network "${stack}_herd" \
        -v "$PWD/deploy/certs:/etc/herd/certs:ro" "$image" status --interval 100ms 2>&1
}
status_ok() { probe_status >/dev/null; }
# True when herd status shows server NAME with LINKS (e.g. "0/1 up") in its row.
links_are() { # NAME LINKS
    local out # (herd status fails while a server is down: not a pipe, under pipefail)
    out=$(probe_status)
    grep -qE "^$1 .* $2\$" <<<"$out"
}
# True when herd status shows Holiday down and Welsh with no link up.
cut_seen() {
    local out
    out=$(probe_status)
    grep -qE '^Welsh .* 0/1 up$' <<<"$out" && grep -qE '^Holiday .* DOWN' <<<"$out"
}
words() { tr ' ' '\n' | grep . | sort | tr '\n' ' '; } # sorted, one space after each

# ---- preflight ---------------------------------------------------------------

step "preflight"
command -v python3 >/dev/null || abort "python3 is needed"
command -v nsenter >/dev/null && command -v iptables >/dev/null || abort "nsenter and iptables are needed"
[[ $(id -u) == 0 ]] || abort "run as root (the network cut enters a container's network namespace)"
docker info >/dev/null 2>&1 || abort "cannot reach the Docker Engine (docker info)"
ports_free 12001 12002 12003 12004 12005 ||
    abort "client ports 12001-12005 must be free (another herd running?)"
pass "client ports 12001-12005 free"

# ---- the static binary, certificates, image ------------------------------------

image_build_binary
docker_start=$SECONDS
step "herd secret and certificates (herd certs) in deploy/certs"
[[ -e deploy/certs ]] && mv deploy/certs "$certs_saved"
certs_made=1
image_make_certs deploy/herd-compose.toml deploy/certs
image_build "$image" "$base_image" "$stack"

# ---- the swarm ---------------------------------------------------------------------

state=$(docker info -f '{{.Swarm.LocalNodeState}}')
if [[ $state == inactive ]]; then
    step "docker swarm init (single node, advertised on 127.0.0.1)"
    docker network inspect docker_gwbridge >/dev/null 2>&1 || gwbridge_made=1
    swarm_made=1
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null || abort "docker swarm init"
elif [[ $state == active && $(docker info -f '{{.Swarm.ControlAvailable}}') == true ]]; then
    step "using this engine's swarm (a manager; it is left as it is)"
else
    abort "the engine's swarm is $state and not a manager here"
fi
pass "single-node swarm: $(docker info -f '{{.Swarm.Nodes}}') node, manager"

# ---- deploy -----------------------------------------------------------------------

step "docker stack deploy -c deploy/stack.yml $stack"
deployed=1
HERD_IMAGE=$image docker stack deploy -c deploy/stack.yml "$stack" | sed 's/^/  /' ||
    abort "docker stack deploy"
wait_for 90 healthy "${services[@]}" || {
    docker stack ps --no-trunc "$stack"
    abort "five tasks healthy within 90 s"
}
pass "five services, one task each, healthy (healthcheck: herd health)"
check "herd status on the overlay: every server serving and every link up (TLS, secret)" \
    wait_for 30 status_ok
mounted=$(docker service inspect -f '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.File.Name}}:{{.File.UID}}:{{printf "%o" .File.Mode}} {{end}}' "${stack}_holiday")
check "Holiday gets the secret, the CA and its own key only, as user 10001, mode 0400 ($mounted)" \
    [ "$(words <<<"$mounted")" = \
        "/etc/herd/certs/Holiday.key:10001:400 /etc/herd/certs/Holiday.pem:10001:400 /etc/herd/certs/ca.pem:10001:400 /etc/herd/certs/herd.secret:10001:400 " ]

# ---- flooding -----------------------------------------------------------------------

step "flooding: IAMAT at Welsh, WHATSAT at Hands"
c1=kiwi.$stack.1
at1=$(iamat $WELSH "$c1")
check "IAMAT at Welsh answered: $at1" at_from Welsh "$at1"
check "WHATSAT at Hands returns Welsh's AT line byte for byte" wait_for 15 knows $HANDS "$c1" "$at1"
check "Holiday has it too" wait_for 10 knows $HOLIDAY "$c1" "$at1"

# ---- scale Holiday to zero and back ---------------------------------------------------

step "docker service scale ${stack}_holiday=0"
holiday=$(container holiday)
others=$(others_state holiday)
sleep 1.5 # Holiday's data dir syncs every second (fsync everysec)
docker service scale -d "${stack}_holiday=0" >/dev/null || fail "docker service scale =0"
check "Holiday's task is gone" wait_for 30 bash -c '[[ -z $(docker ps -aq --filter "label=com.docker.swarm.service.name=$1") ]]' _ "${stack}_holiday"
c2=kiwi.$stack.2
at2=$(iamat $WELSH "$c2")
check "Welsh still answers IAMAT with Holiday at zero" at_from Welsh "$at2"
if wait_for 30 links_are Welsh "0/1 up"; then
    pass "Welsh is isolated: its one link (to Holiday) down"
else
    fail "Welsh is isolated: its one link (to Holiday) down"
    probe_status | sed 's/^/  /'
fi
check "with Holiday at zero, Welsh's IAMAT does not reach Goloman (3 s)" holds_for 3 unknown_at $GOLOMAN "$c2"

step "docker service scale ${stack}_holiday=1"
docker service scale -d "${stack}_holiday=1" >/dev/null || fail "docker service scale =1"
check "Holiday healthy again" wait_for 60 healthy holiday
check "a new task (container) runs Holiday" [ "$(container holiday)" != "$holiday" ]
restored=$(docker logs "$(container holiday)" 2>&1 | grep -m1 'data dir restored')
check "the new task restored Holiday's record from its data volume: ${restored##*durable: }" \
    bash -c '[[ $1 =~ records=([0-9]+) ]] && (( BASH_REMATCH[1] >= 1 ))' _ "$restored"
check "Welsh served again: its link up" wait_for 30 links_are Welsh "1/1 up"
c3=kiwi.$stack.3
at3=$(iamat $WELSH "$c3")
check "after scaling back, a new IAMAT at Welsh reaches Goloman" wait_for 20 knows $GOLOMAN "$c3" "$at3"
check "the IAMAT made while Holiday was at zero reaches Goloman too (catch-up)" \
    wait_for 10 knows $GOLOMAN "$c2" "$at2"
check "the other four tasks were not touched (containers, start times)" \
    [ "$(others_state holiday)" = "$others" ]

# ---- cut Holiday off the overlay --------------------------------------------------------

holiday=$(container holiday)
cut_subnet=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "${stack}_herd")
pid=$(docker inspect -f '{{.State.Pid}}' "$holiday")
step "network cut: Holiday's namespace drops every packet to or from $cut_subnet"
others=$(others_state holiday)
holiday_started=$(docker inspect -f '{{.State.StartedAt}}' "$holiday")
cut_rules -A "$pid" "$cut_subnet" && cut_pid=$pid || fail "iptables in Holiday's network namespace"
c4=kiwi.$stack.4
at4=$(iamat $WELSH "$c4")
check "Welsh still answers IAMAT with Holiday cut off" at_from Welsh "$at4"
check "with Holiday cut off, Welsh's IAMAT does not reach Goloman (3 s)" holds_for 3 unknown_at $GOLOMAN "$c4"
check "herd status sees Holiday down and Welsh's link down" \
    wait_for 30 cut_seen

step "network restored: the rules removed"
cut_rules -D "$pid" "$cut_subnet" && cut_pid= || fail "iptables -D in Holiday's network namespace"
c5=kiwi.$stack.5
at5=$(iamat $WELSH "$c5")
check "after the cut, a new IAMAT at Welsh reaches Goloman" wait_for 30 knows $GOLOMAN "$c5" "$at5"
check "the IAMAT made while Holiday was cut off reaches Goloman too (catch-up)" \
    wait_for 10 knows $GOLOMAN "$c4" "$at4"
check "every link up again" wait_for 30 status_ok
check "Holiday kept running through the cut (same container, same start time)" \
    [ "$(container holiday) $(docker inspect -f '{{.State.StartedAt}}' "$holiday")" = "$holiday $holiday_started" ]
check "the other four tasks were not touched (containers, start times)" \
    [ "$(others_state holiday)" = "$others" ]

# ---- stack rm ---------------------------------------------------------------------------

step "docker stack rm $stack"
docker stack rm "$stack" | sed 's/^/  /'
gone() {
    [[ -z $(docker service ls -q --filter "label=com.docker.stack.namespace=$stack") &&
        -z $(docker secret ls -q --filter "label=com.docker.stack.namespace=$stack") &&
        -z $(stack_containers) &&
        -z $(docker network ls -q --filter "label=com.docker.stack.namespace=$stack") ]]
}
check "stack rm leaves no service, secret, container or network of the stack" wait_for 60 gone
volumes=$(docker volume ls -q --filter "label=com.docker.stack.namespace=$stack" | words)
check "the volumes stay until removed by hand (logs and one data volume per server): $volumes" \
    [ "$volumes" = "${stack}_goloman-data ${stack}_hands-data ${stack}_holiday-data ${stack}_logs ${stack}_welsh-data ${stack}_wilkes-data " ]
