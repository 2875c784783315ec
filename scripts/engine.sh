# shellcheck shell=bash
# Start and stop a release engine for a script (demo, bench). Source it, then:
#   engine_start TAG LOG BASE_URL [VAR=value ...]   # serve in the background, wait for /readyz
#                                                   # (ENGINE_BIN: another build than target/release/seckill)
#                                                   # (with "${engine_serve_args[@]}" if set)
#   engine_stop TAG                                 # SIGTERM, wait for the drain, SIGKILL after 30 s
#   free_port                                       # prints a loopback port for an engine
#   nats_delete_stream NATS_URL STREAM              # deletes a JetStream stream a run made
# The engine's pid is in $engine_pid while it runs.

READY_SECS="${READY_SECS:-30}"
engine_pid=""
# Extra arguments of `seckill serve` for the next engine_start (e.g. --ablation script).
engine_serve_args=()

engine_start() {
    local tag="$1" log="$2" base_url="$3"
    shift 3
    env "$@" "${ENGINE_BIN:-target/release/seckill}" serve "${engine_serve_args[@]}" >"$log" 2>&1 &
    engine_pid=$!
    local _
    for _ in $(seq 1 $((READY_SECS * 4))); do
        if ! kill -0 "$engine_pid" 2>/dev/null; then
            echo "$tag: the engine exited during start-up; last lines of $log:" >&2
            tail -n 20 "$log" >&2
            engine_pid=""
            exit 1
        fi
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' "$base_url/readyz" 2>/dev/null || true)" == "200" ]]; then
            return 0
        fi
        sleep 0.25
    done
    echo "$tag: the engine was not ready within ${READY_SECS}s; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
}

engine_stop() {
    local tag="$1"
    if [[ -n "$engine_pid" ]] && kill -0 "$engine_pid" 2>/dev/null; then
        echo "$tag: stopping the engine (pid $engine_pid)"
        kill -TERM "$engine_pid" 2>/dev/null || true
        # Graceful shutdown drains the writer channel; give it time, then insist.
        local _
        for _ in $(seq 1 60); do
            kill -0 "$engine_pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$engine_pid" 2>/dev/null; then
            echo "$tag: engine still running after 30 s, sending SIGKILL" >&2
            kill -KILL "$engine_pid" 2>/dev/null || true
        fi
        wait "$engine_pid" 2>/dev/null || true
    fi
    engine_pid=""
}

# A loopback port free a moment ago, drawn below the kernel's ephemeral range
# (32768-60999 by default) as tests/common/ports.rs does: one from bind(:0)
# lies inside it and may be taken by an outgoing connection before the
# engine binds it.
free_port() {
    python3 -c '
import random, socket
while True:
    port = random.randrange(12000, 22000)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    break'
}

# Deletes a JetStream stream ($JS.API.STREAM.DELETE over the NATS protocol on
# a plain TCP connection: no NATS client is needed). Says so when NATS
# answered but did not delete it.
nats_delete_stream() {
    local hostport="${1#nats://}" stream="$2" reply=""
    hostport="${hostport%%/*}"
    # The braces keep 2>/dev/null to the connect: on a bare `exec`, it would
    # silence the calling script's stderr from here on.
    if { exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}"; } 2>/dev/null; then
        # shellcheck disable=SC2016  # $JS is a NATS subject, not a variable
        printf 'CONNECT {"verbose":false}\r\nSUB _INBOX.del 1\r\nPUB $JS.API.STREAM.DELETE.%s _INBOX.del 0\r\n\r\n' \
            "$stream" >&3
        reply="$(timeout 5 grep -m1 -a -o '"success":true' <&3 || true)"
        exec 3<&- 3>&-
        [[ -n "$reply" ]] || echo "could not delete NATS stream $stream" >&2
    fi
}
