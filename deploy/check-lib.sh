# Shared by deploy/test.sh and deploy/swarm-test.sh (sourced): PASS/FAIL counting,
# one-line calls to a server's client port, port checks, polling, and the IAMAT and
# WHATSAT checks. A script that sources it sets `passed=0 failed=0` and defines
# `client_port I` (the client port of server I, 1..5 in PROTOCOL.md order).

pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
# A failure the rest of the run cannot go on from.
abort() {
    fail "$*"
    exit 1
}
step() { echo "== $*"; }

# Sends one line to 127.0.0.1:PORT, half-closes, prints the whole reply as is.
herd_call() { # PORT LINE
    python3 - "$1" "$2" <<'PY'
import socket, sys
port, line = int(sys.argv[1]), sys.argv[2].encode("utf-8", "surrogateescape")
try:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(line + b"\n")
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
except OSError as e:
    sys.exit(f"127.0.0.1:{port}: {e}")
sys.stdout.buffer.write(reply)
PY
}

# Fails, naming them, when any of the ports cannot be bound on every interface.
ports_free() { # PORT...
    python3 - "$@" <<'PY'
import socket, sys
busy = []
for p in map(int, sys.argv[1:]):
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", p))
        except OSError:
            busy.append(p)
if busy:
    sys.exit("ports in use: " + " ".join(map(str, busy)))
PY
}

now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }

# Runs COMMAND until it succeeds or SECONDS pass.
wait_for() { # SECONDS COMMAND...
    local end=$(( $(now_ms) + $1 * 1000 ))
    shift
    until "$@"; do
        (( $(now_ms) >= end )) && return 1
        sleep 0.2
    done
}

# True while COMMAND keeps succeeding for all of SECONDS (checked every 0.3 s).
holds_for() { # SECONDS COMMAND...
    local end=$(( $(now_ms) + $1 * 1000 ))
    shift
    while (( $(now_ms) < end )); do
        "$@" || return 1
        sleep 0.3
    done
    "$@"
}

# IAMAT CLIENT at the server of index I; prints the AT line it got.
iamat() { # I CLIENT
    herd_call "$(client_port "$1")" "IAMAT $2 +34.068930-118.445127 $(date +%s.%N)"
}
# The first line of WHATSAT CLIENT at the server of index I.
whatsat_line() { # I CLIENT
    herd_call "$(client_port "$1")" "WHATSAT $2 10 1" | head -n 1
}
at_from() { [[ $2 == "AT $1 "* && $2 != *$'\n'* ]]; }                 # NAME REPLY
knows() { [[ $(whatsat_line "$1" "$2") == "$3" ]]; }               # I CLIENT AT-LINE
unknown_at() { [[ $(whatsat_line "$1" "$2") == "? WHATSAT $2 10 1" ]]; } # I CLIENT
