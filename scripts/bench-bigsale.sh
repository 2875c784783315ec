#!/usr/bin/env bash
# `make bench`, part "bigsale": the cost that must not grow with the size of
# a sale. Runs alone too, after `cargo build --release --workspace`:
#   scripts/bench-bigsale.sh            (1 000 000 buyers)
#   BIGSALE_BUYERS=200000 scripts/bench-bigsale.sh
#
#  1. Its own redis-server (loopback, no persistence) so that the slow log
#     holds this part's commands only, and a fresh database.
#  2. Fill: one event bought by BIGSALE_BUYERS distinct shoppers, one unit
#     each, through the engine's purchase path (closed loop, 64 connections),
#     drained (BIGSALE_FILL: fast, or scenario: every answer also verified
#     client-side, about 5x slower).
#  3. Measure: while that event stays live in Redis with all its buyers, a
#     second sale at a fixed arrival rate (latency from each request's due
#     time), with the reconciler passing every second over both events and
#     an operator polling the first event's admin view and the dashboard's
#     data every second; then the invariant checker over the first event.
#  4. Redis's slow log (threshold 100 µs) during 2-3, each entry with the
#     window it ended in, and one stall probe per CPU (`seckill-loadtest
#     stalls`: pinned, SCHED_FIFO above Redis); judged by
#     scripts/bigsale-slowlog.jq: the slowest command of each kind, every
#     command over the bound beside the machine stall measured inside it;
#     purchase p99 in 3 and the reconciler passes it overlapped, the
#     engine's peak RSS and its RSS once idle after the sale.
#
# Why the probes: the slow log times a command by the wall clock, so when
# the hypervisor runs something else on Redis's vCPU (steal time; on the
# 2-vCPU VM this was measured on, stalls of 5-7.8 ms every 5-20 s,
# phase-locked to the wall clock's 100 ms grid, also with no Redis running)
# the stall is charged to whatever command was running: an O(1) purchase
# script shows as 7.8 ms. The bound (no command over 1 000 µs) is judged on a
# command's own time, its slow-log time less the probe stall inside it. The
# raw maximum and every command over the bound, with its stall, stay in
# bigsale.json (redis.slowest, redis.over_bound) and are printed. Where Redis
# cannot run at real-time priority no probe runs and the raw time is judged.
#
# Writes $OUT_DIR/bigsale.json. Exit 0 when the figures meet the bounds
# below, 3 when one is missed, other codes when the run failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export SECKILL_ADMIN_TOKEN="${SECKILL_ADMIN_TOKEN:-dev-only-admin-token-change-me}"
export SECKILL_JWT_SECRET="${SECKILL_JWT_SECRET:-dev-only-jwt-secret-change-me-0123456789abcdef}"
TEST_DB_URL="${SECKILL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
BUYERS="${BIGSALE_BUYERS:-1000000}"
# fast: `seckill-loadtest fill` (the benchmark's lean client, checked by the
# engine's invariant checker); scenario: a `burst` scenario run that also
# verifies every answer client-side (about 5x slower).
FILL="${BIGSALE_FILL:-fast}"
RATE="${BIGSALE_RATE:-3000}"
MEASURE_SECS="${BIGSALE_SECS:-20}"
OUT_DIR="${SECKILL_LOADTEST_OUT_DIR:-loadtest/out}"
# Bounds: no Redis command longer than this (µs), idle RSS below this (MiB).
SLOWEST_BOUND_US="${BIGSALE_SLOWEST_BOUND_US:-1000}"
RSS_BOUND_MB="${BIGSALE_RSS_BOUND_MB:-160}"

REDIS_PORT="${BIGSALE_REDIS_PORT:-16391}"
BIND=127.0.0.1:18182
BASE_URL="http://$BIND"
LOG=.local/bench-bigsale-engine.log
REDIS_DIR=.local/bigsale-redis
DB="seckill_bigsale_$(date +%s)_$$"
PG_SERVER="${TEST_DB_URL%%\?*}"
PG_SERVER="${PG_SERVER%/*}"
export SECKILL_DATABASE_URL="$PG_SERVER/$DB"
export SECKILL_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
# This run's order events go to a stream of its own, deleted after it (event
# ids restart at 1 in every fresh database: in the shared stream the fill's
# stream check would count an earlier run's events of event 1 as foreign).
NATS_URL="${SECKILL_TEST_NATS_URL:-nats://127.0.0.1:4222}"
export SECKILL_NATS_URL="$NATS_URL"
stream="SECKILL_BIGSALE_$$"
export SECKILL_NATS_STREAM="$stream" SECKILL_NATS_SUBJECT_PREFIX="bench.bigsale.$$"

say() { echo "bigsale: $*"; }
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
admin() { curl -fsS -H "Authorization: Bearer $SECKILL_ADMIN_TOKEN" "$BASE_URL$1"; }
rss_kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$engine_pid/status"; }

# shellcheck source=scripts/engine.sh
source scripts/engine.sh
db_created=""
poller=""
stats_poller=""
stall_probes=()
# This run's stream, deleted once (nats_delete_stream, scripts/engine.sh).
delete_stream() {
    if [[ -n "$stream" ]]; then nats_delete_stream "$NATS_URL" "$stream"; fi
    stream=""
}
stop_probes() {
    local p
    for p in "${stall_probes[@]}"; do kill "$p" 2>/dev/null || true; done
    stall_probes=()
}
# Called by the EXIT trap.
# shellcheck disable=SC2317
cleanup() {
    if [[ -n "${slow_stop:-}" ]]; then touch "$slow_stop" 2>/dev/null || true; fi
    if [[ -n "$poller" ]]; then kill "$poller" 2>/dev/null || true; fi
    if [[ -n "$stats_poller" ]]; then kill "$stats_poller" 2>/dev/null || true; fi
    stop_probes
    engine_stop bigsale
    delete_stream
    rcli shutdown nosave >/dev/null 2>&1 || true
    if [[ -n "$db_created" ]]; then
        psql "$TEST_DB_URL" -q -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for bin in target/release/seckill target/release/seckill-loadtest; do
    [[ -x "$bin" ]] || { say "$bin missing: cargo build --release --workspace first" >&2; exit 2; }
done
command -v redis-server >/dev/null || { say "redis-server not installed" >&2; exit 2; }

mkdir -p .local "$REDIS_DIR" "$OUT_DIR"
if rcli ping >/dev/null 2>&1; then
    say "something already answers on Redis port $REDIS_PORT; stop it first" >&2
    exit 2
fi
# Real-time priority (SCHED_FIFO) where allowed: on a 2-core box shared by
# client, engine and Postgres, a Redis thread waiting for a core would show
# in the slow log as a 10 ms TIME; the log is meant to measure the commands.
rt=()
if chrt -f 10 true 2>/dev/null; then rt=(chrt -f 10); fi
"${rt[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$REDIS_DIR" --daemonize yes --logfile redis.log \
    --slowlog-log-slower-than 0 --slowlog-max-len 128 >/dev/null
for _ in $(seq 1 40); do rcli ping >/dev/null 2>&1 && break; sleep 0.25; done
psql "$TEST_DB_URL" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$DB\""
db_created=1
target/release/seckill migrate >/dev/null

engine_start bigsale "$LOG" "$BASE_URL" \
    SECKILL_BIND="$BIND" SECKILL_RECONCILE_INTERVAL_MS=1000 \
    SECKILL_RATE_GLOBAL_RPS=0 SECKILL_RATE_USER_RPS=0 SECKILL_RATE_IP_RPS=0 \
    SECKILL_LOG_FORMAT=json RUST_LOG=warn
rss_start_kb="$(rss_kb VmRSS)"
say "engine pid $engine_pid, RSS at start $((rss_start_kb / 1024)) MiB; Redis on port $REDIS_PORT"

# Every command slower than 100 µs is logged (a purchase script takes
# 10-20). One redis-cli connection reads it ten times a second, by entry id
# (the log is never reset: nothing is lost between a read and a reset),
# each read between two TIME calls: an entry first seen in a read ended after
# the previous read's first TIME ("after_us") and before this read's second
# ("seen_us"), on Redis's clock, which is this machine's. Kept per entry: id,
# second ([1]), µs, command and its first arguments (the key; the sha and the
# first key for EVALSHA), client. A read that did not reach back to the last
# entry seen leaves a {"lost": n} line. Redis also logs the commands a script
# runs, under the client "?:0" (the HMGET inside an EVALSHA): those are
# nested in their EVALSHA's time, listed apart and not counted twice. Its own
# SLOWLOG/CONFIG/INFO/LATENCY/TIME calls are left out. Beside it, once a
# second: the CPUs' steal time (/proc/stat) and INFO memory/stats/cpu
# figures; and the phase boundaries.
slow_file=.local/bigsale-slowlog.ndjson
slow_stop=.local/bigsale-slowlog.stop
stall_file=.local/bigsale-stalls.txt
steal_file=.local/bigsale-steal.txt
info_file=.local/bigsale-info.ndjson
phase_file=.local/bigsale-phases.txt
rm -f "$slow_stop"
: >"$slow_file"
: >"$stall_file"
: >"$steal_file"
: >"$info_file"
: >"$phase_file"
now_us() { date +%s%6N; }
mark() { echo "$1 $(now_us)" >>"$phase_file"; }
rcli config set slowlog-log-slower-than 100 >/dev/null
rcli config set slowlog-max-len 10000 >/dev/null
rcli config set latency-monitor-threshold 1 >/dev/null
rcli slowlog reset >/dev/null
rcli latency reset >/dev/null
watch_slowlog() {
    while [[ ! -e "$slow_stop" ]]; do
        printf 'TIME\nSLOWLOG GET 512\nTIME\n'
        sleep 0.1
    done | rcli --json 2>/dev/null | jq -cn --unbuffered '
        def us: (.[0] | tonumber) * 1000000 + (.[1] | tonumber);
        foreach inputs as $x ({i: 0, pre: 0, after: null, last: -1, got: [], emit: []};
            (.i % 3) as $k | .i += 1
            | if $k == 0 then .pre = ($x | us) | .emit = []
              elif $k == 1 then .got = $x | .emit = []
              else ($x | us) as $seen | .last as $last | (.after // .pre) as $after
                | ([.got[][0]] | min) as $oldest
                | .emit = [.got[] | select(.[0] > $last)
                    | {id: .[0], t: .[1], us: .[2], cmd: (.[3][0] | ascii_upcase), args: .[3][1:4],
                       client: .[4], after_us: $after, seen_us: $seen}
                    | select(.cmd | IN("SLOWLOG", "CONFIG", "INFO", "LATENCY", "TIME") | not)]
                  + (if $last >= 0 and $oldest != null and $oldest > $last + 1
                     then [{lost: ($oldest - $last - 1), after_us: $after, seen_us: $seen}] else [] end)
                | .last = ([.got[][0], $last] | max) | .after = .pre
              end;
            .emit[])' >>"$slow_file"
}
watch_stats() {
    while [[ ! -e "$slow_stop" ]]; do
        local now
        now="$(now_us)"
        echo "$now $(awk '/^cpu[0-9]/ {printf "%s ", $9}' /proc/stat)" >>"$steal_file"
        rcli info everything 2>/dev/null | tr -d '\r' | jq -Rnc --argjson at "$now" '
            [inputs | select(test("^[a-z_0-9]+:")) | capture("^(?<key>[^:]+):(?<value>.*)$")] | from_entries
            | {at_us: $at} + {used_memory, used_memory_rss, mem_fragmentation_ratio,
               allocator_frag_ratio, lazyfree_pending_objects, instantaneous_ops_per_sec,
               total_commands_processed, used_cpu_sys_main_thread, used_cpu_user_main_thread,
               db0}' >>"$info_file" 2>/dev/null || true
        sleep 1
    done
}
watch_stats &
stats_poller=$!
watch_slowlog &
poller=$!
# The machine's own stalls: one probe per CPU, pinned, at a real-time
# priority above Redis's, printing every wakeup more than 500 µs late
# (`seckill-loadtest stalls`). Only meaningful when Redis itself runs at
# real-time priority (then nothing in user space can delay either).
stall_probes=()
probes_ran=false
if ((${#rt[@]})) && command -v taskset >/dev/null; then
    probes_ran=true
    for cpu in $(seq 0 $(($(nproc) - 1))); do
        taskset -c "$cpu" chrt -f 20 target/release/seckill-loadtest stalls \
            --label "cpu$cpu" --threshold-us 500 >>"$stall_file" 2>/dev/null &
        stall_probes+=($!)
    done
fi

mark fill_start
fill_started=$(date +%s.%N)
mkdir -p "$OUT_DIR/bigsale-fill"
if [[ "$FILL" == scenario ]]; then
    say "fill: $BUYERS distinct shoppers buy one unit each (a scenario run, every answer verified)"
    target/release/seckill-loadtest --base-url "$BASE_URL" --scenario burst \
        --users "$BUYERS" --stock "$BUYERS" --requests "$BUYERS" --per-user-limit 1 --quantity 1 \
        --concurrency 64 --start-delay-ms 2000 --duration-secs 3600 --drain-timeout-secs 900 \
        --out-dir "$OUT_DIR/bigsale-fill"
    big_event="$(jq -r .event_id "$OUT_DIR/bigsale-fill/report-burst.json")"
else
    say "fill: $BUYERS distinct shoppers buy one unit each (seckill-loadtest fill: every answer a 202, drained; the invariant checker runs after the measure)"
    target/release/seckill-loadtest fill --base-url "$BASE_URL" --buyers "$BUYERS" --connections 64 --no-invariants \
        >"$OUT_DIR/bigsale-fill/fill.json"
    big_event="$(jq -r .event_id "$OUT_DIR/bigsale-fill/fill.json")"
fi
fill_secs="$(echo "$(date +%s.%N) - $fill_started" | bc)"
mark fill_end
buyers_in_redis="$(rcli --raw eval "return redis.call('HLEN', KEYS[1])" 1 \
    "$(target/release/seckill redis-keys --event "$big_event" --prefix sk | sed -n 3p)")"
rss_peak_kb="$(rss_kb VmHWM)"
say "fill done in ${fill_secs}s; event $big_event holds $buyers_in_redis buyers in Redis; engine peak RSS $((rss_peak_kb / 1024)) MiB"

# The order events of the fill are published before the measure (the relay
# yields to a crowd, then catches up): the measure is of the sale and the
# reconciler passes, not of a million events going out.
metric() { curl -fsS "$BASE_URL/metrics" | awk -v m="$1" '$1 == m {print $2+0}'; }
# (The gauge is refreshed every second: nothing owed twice, 1.2 s apart.)
for _ in $(seq 1 600); do
    if [[ "$(metric seckill_outbox_backlog)" == 0 ]]; then
        sleep 1.2
        [[ "$(metric seckill_outbox_backlog)" == 0 ]] && break
    fi
    sleep 1
done
say "outbox relay caught up with the fill (backlog $(metric seckill_outbox_backlog))"
runs() { metric seckill_reconcile_runs_total; }
runs_before="$(runs)"
# An operator's tabs: the big event's view and the dashboard every second.
# Its invariant checker runs once, after the measured sale and still inside
# the slow log's window (over a million orders its Postgres side takes tens
# of seconds of one core of this 2-core box; its Redis reads are the bounded
# ones this part judges).
(
    while true; do
        admin "/admin/events/$big_event" >/dev/null 2>&1 || true
        admin "/admin/dashboard/data" >/dev/null 2>&1 || true
        sleep 1
    done
) &
checker=$!
mark measure_start
say "measure: a second sale at $RATE purchases/s for ${MEASURE_SECS}s beside the big event"
set +e
target/release/seckill-loadtest --base-url "$BASE_URL" --scenario burst \
    --users $((RATE * MEASURE_SECS)) --stock $((RATE * MEASURE_SECS / 2)) \
    --requests $((RATE * MEASURE_SECS)) --per-user-limit 1 --quantity 1 \
    --rate "$RATE" --duration-secs "$MEASURE_SECS" --concurrency 256 --start-delay-ms 2000 \
    --out-dir "$OUT_DIR/bigsale-measure"
measure_rc=$?
set -e
mark measure_end
kill "$checker" 2>/dev/null || true
checked_from=$(date +%s.%N)
admin "/admin/events/$big_event/invariants" >"$OUT_DIR/bigsale-invariants.json" 2>/dev/null || true
invariants_ok="$(jq -r '.ok // false' "$OUT_DIR/bigsale-invariants.json" 2>/dev/null || echo false)"
checker_secs="$(printf '%.1f' "$(echo "$(date +%s.%N) - $checked_from" | bc)")"
say "invariant checker over the big event: ok=$invariants_ok in ${checker_secs}s"
mark checker_end
sleep 0.5
touch "$slow_stop"
wait "$poller" "$stats_poller" 2>/dev/null || true
poller=""
stats_poller=""
stop_probes
latency_latest="$(rcli --json latency latest 2>/dev/null || echo '[]')"
runs_after="$(runs)"
measure_json="$OUT_DIR/bigsale-measure/report-burst.json"

# Idle: give the limiter eviction and the allocator a few seconds.
sleep 15
rss_idle_kb="$(rss_kb VmRSS)"

# The slow log judged (scripts/bigsale-slowlog.jq): by kind, every command
# over the bound beside the machine stall the probes saw at that instant.
names_json="$(target/release/seckill lua | jq -R 'split(" ") | {(.[0]): .[1]}' | jq -s 'add // {}')"
# Through files, not arguments: a sale of a million buyers logs tens of
# thousands of commands over 100 µs, more than an argument list holds.
stalls_file=.local/bigsale-stalls.json
judged_file=.local/bigsale-slowlog-judged.json
jq -Rn '[inputs | split(" ") | select(length == 3)
    | {at_us: (.[0] | tonumber), cpu: .[1], late_us: (.[2] | tonumber)}]' "$stall_file" >"$stalls_file"
phases_json="$(jq -Rn '[inputs | split(" ") | {(.[0]): (.[1] | tonumber)}] | add // {}' "$phase_file")"
jq -n --slurpfile slow "$slow_file" --slurpfile stalls_in "$stalls_file" \
    --argjson phases "$phases_json" --argjson names "$names_json" --argjson bound "$SLOWEST_BOUND_US" \
    -f scripts/bigsale-slowlog.jq >"$judged_file"
read -r slowest_us slowest_cmd < <(jq -r '.slowest | "\(.us) \(.command)"' "$judged_file")
read -r own_us own_cmd own_raw_us < <(jq -r '.slowest_own | "\(.own_us) \(.command) \(.us)"' "$judged_file")
if [[ "$probes_ran" != true ]]; then own_us="$slowest_us"; own_cmd="$slowest_cmd"; own_raw_us="$slowest_us"; fi
p99="$(jq -r '.stats.selling.latency.p99_ms // .stats.latency_all.p99_ms' "$measure_json" 2>/dev/null || echo null)"
jq -n --argjson buyers "$BUYERS" --argjson buyers_in_redis "${buyers_in_redis:-0}" \
    --argjson fill_secs "$fill_secs" --argjson rate "$RATE" --argjson secs "$MEASURE_SECS" \
    --argjson p99 "${p99:-null}" --argjson passes "$((runs_after - runs_before))" \
    --slurpfile slowlog_in "$judged_file" --argjson probes_ran "$probes_ran" \
    --argjson latency_latest "${latency_latest:-[]}" \
    --argjson rss_start_mb "$((rss_start_kb / 1024))" --argjson rss_peak_mb "$((rss_peak_kb / 1024))" \
    --argjson rss_idle_mb "$((rss_idle_kb / 1024))" \
    --argjson slowest_bound_us "$SLOWEST_BOUND_US" --argjson rss_bound_mb "$RSS_BOUND_MB" \
    --argjson measure_rc "$measure_rc" --arg priority "${rt[*]:-none}" \
    --argjson invariants_ok "$invariants_ok" --argjson checker_secs "$checker_secs" \
    '$slowlog_in[0] as $slowlog | {buyers: $buyers, buyers_in_redis: $buyers_in_redis, fill_secs: $fill_secs,
      measure: {rate: $rate, secs: $secs, p99_ms: $p99, reconciler_passes: $passes, exit_code: $measure_rc},
      invariants: {ok: $invariants_ok, checker_secs: $checker_secs},
      redis: ({priority: $priority, bound_us: $slowest_bound_us, stall_probes: $probes_ran,
               latency_latest: $latency_latest} + $slowlog),
      engine_rss_mb: {start: $rss_start_mb, peak: $rss_peak_mb, idle_after_sale: $rss_idle_mb, bound: $rss_bound_mb}}' \
    >"$OUT_DIR/bigsale.json"
cat "$OUT_DIR/bigsale.json"

rc=0
if [[ "$invariants_ok" != true ]]; then
    say "FAIL: the invariant checker over the big event did not pass (see $OUT_DIR/bigsale-invariants.json)"
    rc=1
fi
if ((measure_rc != 0 && measure_rc != 3)); then
    say "FAIL: the measured sale exited with $measure_rc"
    rc=1
fi
# The bound is on a command's own time: its slow-log time less a machine
# stall measured inside it by the probes (none without them). Both the raw
# figure and every command over the bound stay in bigsale.json.
if ((slowest_us > SLOWEST_BOUND_US)); then
    say "slowest Redis command by the slow log: $slowest_cmd ${slowest_us} µs (bound ${SLOWEST_BOUND_US} µs); the commands over the bound and the machine stall inside each:"
    # (at most 40 lines, cut in jq: `| head` would end jq with SIGPIPE under pipefail)
    jq -r '(.over_bound[0:40][] | "  \(.phase) t=\(.t) \(.command) \(.key) \(.us) µs: " +
        (if .stall then "\(.stall.count) probe stall(s) on \(.stall.cpu), \(.stall.late_us) µs in all, the last at \(.stall.at_us) -> own \(.own_us) µs"
         else "no machine stall seen -> own \(.own_us) µs" end)),
        (if (.over_bound | length) > 40 then "  ... and \((.over_bound | length) - 40) more in bigsale.json" else empty end)' \
        "$judged_file"
fi
if ((own_us > SLOWEST_BOUND_US)); then
    say "NOT MET: slowest Redis command by its own time $own_cmd ${own_us} µs (${own_raw_us} µs in the slow log; bound ${SLOWEST_BOUND_US} µs)"
    ((rc)) || rc=3
fi
if ((rss_idle_kb / 1024 > RSS_BOUND_MB)); then
    say "NOT MET: engine RSS idle after the sale $((rss_idle_kb / 1024)) MiB (bound ${RSS_BOUND_MB} MiB)"
    ((rc)) || rc=3
fi
say "buyers $buyers_in_redis in one event; purchase p99 ${p99} ms at $RATE/s over $((runs_after - runs_before)) reconciler passes; slowest Redis command ${slowest_us} µs ($slowest_cmd), by its own time ${own_us} µs ($own_cmd); engine RSS idle $((rss_idle_kb / 1024)) MiB (peak $((rss_peak_kb / 1024)))"
exit "$rc"
