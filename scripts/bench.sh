#!/usr/bin/env bash
# `make bench`: every SPEC §7 figure in one run on this (shared, noisy) box.
#
#  1. HTTP macro benchmark: a fresh database, the release engine on
#     127.0.0.1:18180 with rate limits off, and `seckill-loadtest bench`
#     (/healthz ceiling, purchases while stock lasts and after sell-out, as
#     ratios with p99s; loadtest/out/bench.json).
#  2. Writer drain rate vs one transaction per order (benches/writer_drain.rs).
#  3. Keyed rate-limiter memory at 1 M users (benches/limiter_memory.rs).
#  1e. One hot item on a Redis Cluster of 1, 2 and 3 masters, stock split into
#      as many buckets (scripts/bench-buckets.sh; loadtest/out/bench-buckets.json).
#  4. Raw Redis EVALSHA rate of purchase.lua (redis-benchmark): Redis' ceiling.
#  5. Criterion micro-benchmarks (benches/purchase_script.rs).
#  6. A summary of the figures and of which targets are met.
#
# Parts 2 and 3 run when their bench files exist. Uses dev-only secrets
# unless SECKILL_ADMIN_TOKEN / SECKILL_JWT_SECRET are set.
#
# The benchmark never touches a database it did not create: it makes its own
# (seckill_bench_<time>_<pid>) on the Postgres server of
# SECKILL_TEST_DATABASE_URL and drops that one, and only that one, on exit.
# SECKILL_DATABASE_URL from the environment is ignored.
#
# BENCH_PARTS selects parts (comma-separated: http,backlog,durable,ablation,instructions,bigsale,
# buckets,drain,limiter,redis,criterion;
# default all; "none" only checks the services and the database lifecycle).
# BENCH_RUNS: how many times the HTTP part runs (default 3); its targets are judged on the median.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# DEV-ONLY secrets (as scripts/demo.sh via the Makefile): never reuse them.
export SECKILL_ADMIN_TOKEN="${SECKILL_ADMIN_TOKEN:-dev-only-admin-token-change-me}"
export SECKILL_JWT_SECRET="${SECKILL_JWT_SECRET:-dev-only-jwt-secret-change-me-0123456789abcdef}"
export SECKILL_TEST_DATABASE_URL="${SECKILL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
BENCH_DB="seckill_bench_$(date +%s)_$$"
BENCH_DB_CREATED=""
# The server part of the admin URL (scheme, user, host, port), without its database.
PG_SERVER="${SECKILL_TEST_DATABASE_URL%%\?*}"
PG_SERVER="${PG_SERVER%/*}"
export SECKILL_DATABASE_URL="$PG_SERVER/$BENCH_DB"
BENCH_PARTS="${BENCH_PARTS:-http,backlog,durable,ablation,instructions,bigsale,buckets,drain,limiter,redis,criterion}"
ABLATION_PHASE_SECS="${BENCH_ABLATION_PHASE_SECS:-4}"
part() { [[ ",$BENCH_PARTS," == *",$1,"* ]]; }
export SECKILL_TEST_REDIS_URL="${SECKILL_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
# The engines' order events go to a stream of this run's own, deleted on exit:
# every fresh bench database numbers its events from 1, so in the shared
# stream (SECKILL_ORDERS) they would pass for the events of event 1 of the
# demo's database, whose stream check would count them as foreign. The
# bigsale and buckets parts set streams of their own.
BENCH_NATS_URL="${SECKILL_NATS_URL:-nats://127.0.0.1:4222}"
BENCH_STREAM="SECKILL_BENCH_$$"
export SECKILL_NATS_STREAM="$BENCH_STREAM" SECKILL_NATS_SUBJECT_PREFIX="bench.$$"

BIND=127.0.0.1:18180
BASE_URL="http://$BIND"
LOG=.local/bench-engine.log
OUT_DIR="${SECKILL_LOADTEST_OUT_DIR:-loadtest/out}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
PHASE_SECS="${BENCH_PHASE_SECS:-5}"
BENCH_RUNS="${BENCH_RUNS:-3}"
READY_SECS=30
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
# The Redis ceiling part's keys, from the engine's own key builder (set once built).
RB_PREFIX="bench-ceiling-$$"
RB_KEYS=()

say() { echo "bench: $*"; }
section() { printf '\n==== %s ====\n' "$*"; }

# shellcheck source=scripts/engine.sh
source scripts/engine.sh
stop_engine() { engine_stop bench; }
redis_cleanup() {
    if ((${#RB_KEYS[@]})); then
        redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" DEL "${RB_KEYS[@]}" >/dev/null 2>&1 || true
    fi
}
drop_bench_database() {
    if [[ -n "$BENCH_DB_CREATED" ]]; then
        psql "$SECKILL_TEST_DATABASE_URL" -q -v ON_ERROR_STOP=1 \
            -c "DROP DATABASE IF EXISTS \"$BENCH_DB_CREATED\" WITH (FORCE)" >/dev/null 2>&1 || true
        say "dropped its own database '$BENCH_DB_CREATED'"
        BENCH_DB_CREATED=""
    fi
}
# Called by the EXIT trap.
# shellcheck disable=SC2317
cleanup() {
    stop_engine
    redis_cleanup
    drop_bench_database
    # Quiet: with no engine run (BENCH_PARTS=none) there is no stream.
    case "$BENCH_NATS_URL" in
    nats://*) nats_delete_stream "$BENCH_NATS_URL" "$BENCH_STREAM" 2>/dev/null ;;
    esac
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# An empty bench database, migrated: every HTTP run starts on one, so the
# autovacuum of an earlier run's orders cannot fall into its phases.
fresh_bench_database() {
    psql "$SECKILL_TEST_DATABASE_URL" -q -v ON_ERROR_STOP=1 \
        -c "DROP DATABASE IF EXISTS \"$BENCH_DB\" WITH (FORCE)" -c "CREATE DATABASE \"$BENCH_DB\""
    target/release/seckill migrate >/dev/null
}

# One engine, one `seckill-loadtest bench` against it, the engine stopped: the
# run shared by the macro benchmark, the durable run and the ablation layers.
#   bench_engine_run REDIS_PREFIX OUT_DIR PHASE_SECS [ENV=value ...] [-- LOADTEST_ARGS ...]
# Rate limits are off unless ENV sets them. The load generator's exit code
# is left in $bench_engine_rc (3: it ran and a target was not met).
bench_engine_run() {
    local prefix="$1" out="$2" secs="$3"
    shift 3
    local env=()
    while (($#)) && [[ "$1" != -- ]]; do
        env+=("$1")
        shift
    done
    if (($#)); then shift; fi
    engine_start bench "$LOG" "$BASE_URL" SECKILL_BIND="$BIND" \
        SECKILL_RATE_GLOBAL_RPS=0 SECKILL_RATE_USER_RPS=0 SECKILL_RATE_IP_RPS=0 \
        SECKILL_REDIS_PREFIX="$prefix-$(date +%s)-$$" SECKILL_LOG_FORMAT=json RUST_LOG=warn "${env[@]}"
    mkdir -p "$out"
    set +e
    target/release/seckill-loadtest bench --base-url "$BASE_URL" --connections "$CONNECTIONS" \
        --phase-secs "$secs" --engine-pid "$engine_pid" --out-dir "$out" "$@"
    bench_engine_rc=$?
    set -e
    stop_engine
}

started=$(date +%s)

section "services, database and build"
SECKILL_DATABASE_URL="$SECKILL_TEST_DATABASE_URL" scripts/services.sh
psql "$SECKILL_TEST_DATABASE_URL" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$BENCH_DB\""
BENCH_DB_CREATED="$BENCH_DB"
say "created its own database '$BENCH_DB'"
if [[ "$BENCH_PARTS" == none ]]; then
    say "BENCH_PARTS=none: services and database checked, nothing measured"
    exit 0
fi
cargo build --release --workspace
# Compile the bench targets now, so no compilation runs during a measurement
# (the bench profile inherits release: the library is shared).
bench_targets=()
part criterion && bench_targets+=(--bench purchase_script)
part drain && [[ -f benches/writer_drain.rs ]] && bench_targets+=(--bench writer_drain)
part limiter && [[ -f benches/limiter_memory.rs ]] && bench_targets+=(--bench limiter_memory)
if ((${#bench_targets[@]})); then
    cargo bench --no-run "${bench_targets[@]}"
fi

# --- 1. HTTP macro benchmark --------------------------------------------------
# BENCH_RUNS runs (3 by default), each on a fresh engine: every run writes
# $OUT_DIR/runs/run-K/bench.json, the last one is also $OUT_DIR/bench.json
# (the per-run summary and cost table below), and the SPEC §7 targets are
# judged on the median of the runs (scripts/bench-spread.jq prints the spread).
http_rc=skipped
if part http; then
    if curl -fsS -o /dev/null "$BASE_URL/healthz" 2>/dev/null; then
        say "something already answers on $BASE_URL; stop it first" >&2
        exit 1
    fi
    mkdir -p .local "$OUT_DIR"
    rm -rf "$OUT_DIR/runs" "$OUT_DIR/bench.json"
    http_rc=0
    for run in $(seq 1 "$BENCH_RUNS"); do
        section "HTTP macro benchmark (seckill-loadtest bench), run $run of $BENCH_RUNS"
        fresh_bench_database
        say "starting the engine on $BIND (log: $LOG)"
        bench_engine_run "bench-$run" "$OUT_DIR/runs/run-$run" "$PHASE_SECS"
        run_rc=$bench_engine_rc
        # 3: it ran and a target was not met in this run (judged on the median below).
        if [[ "$run_rc" -ne 0 && "$run_rc" -ne 3 ]]; then
            say "seckill-loadtest bench exited with $run_rc in run $run (engine log: $LOG)" >&2
            http_rc=$run_rc
        fi
        if [[ -f "$OUT_DIR/runs/run-$run/bench.json" ]]; then
            cp "$OUT_DIR/runs/run-$run/bench.json" "$OUT_DIR/bench.json"
        fi
    done
    runs=("$OUT_DIR"/runs/run-*/bench.json)
    if [[ "$http_rc" -eq 0 && -f "${runs[0]}" ]]; then
        jq -s '{runs: length, commit: $commit, phases: [.[0].phases[].name], rows: .}' \
            --arg commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "${runs[@]}" \
            | jq -f scripts/bench-spread.jq >"$OUT_DIR/bench-spread.json"
        if [[ "$(jq -r .all_met "$OUT_DIR/bench-spread.json")" != true ]]; then
            http_rc=3
        fi
    fi
fi

# --- 1a. Sold out while the writers drain a large backlog -------------------
# The realistic sold-out flood: the crowd keeps clicking right after the
# stock is gone while the writers are still far behind. One writer with
# batches of 32 (SECKILL_WRITERS=1, SECKILL_BATCH_MAX=32) cannot keep up
# with the selling phase, so tens of thousands of orders are still pending
# when the sold-out phase starts; its p99 and ratio are judged (p99 ≤ 5 ms).
backlog_rc=skipped
if part backlog; then
    section "sold out while the writers drain a large backlog (one writer, batches of 32)"
    fresh_bench_database
    rm -f "$OUT_DIR/backlog/bench.json"
    bench_engine_run bench-backlog "$OUT_DIR/backlog" "$PHASE_SECS" SECKILL_WRITERS=1 SECKILL_BATCH_MAX=32
    backlog_rc=$bench_engine_rc
    # Judged here: the sold-out p99 (the other targets belong to the default writers).
    if [[ -f "$OUT_DIR/backlog/bench.json" ]]; then
        if jq -e '.sold_out_p99_ms <= 5 and .persisted.backlog_at_sold_out_start >= 10000' \
            "$OUT_DIR/backlog/bench.json" >/dev/null; then
            backlog_rc=0
        elif [[ "$backlog_rc" -eq 0 || "$backlog_rc" -eq 3 ]]; then
            backlog_rc=3
        fi
    fi
fi

# --- 1b. The same with SECKILL_ACK=durable -------------------------------------
durable_rc=skipped
if part durable; then
    section "HTTP macro benchmark, SECKILL_ACK=durable (a 202 after the commit)"
    fresh_bench_database
    say "starting the engine on $BIND with SECKILL_ACK=durable (log: $LOG)"
    rm -f "$OUT_DIR/durable/bench.json"
    bench_engine_run bench-durable "$OUT_DIR/durable" "$PHASE_SECS" SECKILL_ACK=durable
    durable_rc=$bench_engine_rc
fi

# --- 1c. Cost ablation: the purchase path layer by layer ---------------------
# One engine per layer (`seckill serve --ablation LAYER`, a benchmark-only
# switch: below `full` nothing is persisted), each measured against its own
# /healthz in the same run; every purchase carries an Idempotency-Key.
ablation_rc=skipped
ABLATION_LAYERS=(script token limits idempotency full)
if part ablation; then
    section "cost ablation: script, + token, + limits, + idempotency, + persistence"
    fresh_bench_database
    ablation_rc=0
    for layer in "${ABLATION_LAYERS[@]}"; do
        rm -f "$OUT_DIR/ablation/ablation-$layer.json"
        engine_serve_args=(--ablation "$layer")
        # The limits are on from the `limits` layer up, set high enough that
        # they are checked but never refuse (their cost, not their effect).
        bench_engine_run "bench-ablation-$layer" "$OUT_DIR/ablation" "$ABLATION_PHASE_SECS" \
            SECKILL_RATE_GLOBAL_RPS=10000000 SECKILL_RATE_USER_RPS=1000 SECKILL_RATE_IP_RPS=10000000 \
            -- --ablation-layer "$layer"
        engine_serve_args=()
        if [[ "$bench_engine_rc" -ne 0 ]]; then
            say "ablation layer $layer exited with $bench_engine_rc" >&2
            ablation_rc=$bench_engine_rc
        fi
    done
fi

# --- 1c'. Instructions per request (callgrind): the cost table without noise -
instructions_rc=skipped
if part instructions; then
    section "instructions per request, engine and Redis (callgrind; scripts/bench-instructions.sh)"
    set +e
    SECKILL_LOADTEST_OUT_DIR="$OUT_DIR" scripts/bench-instructions.sh
    instructions_rc=$?
    set -e
fi

# --- 1d. A sale of 1 M buyers: cost that must not grow with the sale --------
bigsale_rc=skipped
if part bigsale; then
    section "a sale of ${BIGSALE_BUYERS:-1000000} buyers: reconciler passes, Redis slow log, engine RSS"
    set +e
    SECKILL_LOADTEST_OUT_DIR="$OUT_DIR" scripts/bench-bigsale.sh
    bigsale_rc=$?
    set -e
fi

# --- 1e. One hot item across 1, 2 and 3 Redis masters (stock buckets) -------
buckets_rc=skipped
if part buckets; then
    section "one hot item on a Redis Cluster of ${BUCKETS_MASTERS:-1 2 3} master(s), one stock bucket per master"
    set +e
    SECKILL_LOADTEST_OUT_DIR="$OUT_DIR" scripts/bench-buckets.sh
    buckets_rc=$?
    set -e
fi

# --- 2. Writer drain rate ----------------------------------------------------
drain_rc=skipped
if part drain && [[ -f benches/writer_drain.rs ]]; then
    section "writer drain rate (cargo bench --bench writer_drain)"
    set +e
    cargo bench --bench writer_drain
    drain_rc=$?
    set -e
else
    section "writer drain rate: not selected (BENCH_PARTS)"
fi

# --- 3. Rate-limiter memory ----------------------------------------------------
limiter_rc=skipped
if part limiter && [[ -f benches/limiter_memory.rs ]]; then
    section "keyed rate-limiter memory (cargo bench --bench limiter_memory)"
    set +e
    cargo bench --bench limiter_memory
    limiter_rc=$?
    set -e
else
    section "rate-limiter memory: not selected (BENCH_PARTS)"
fi

# --- 4. Redis EVALSHA ceiling -------------------------------------------------
section "Redis ceiling: EVALSHA purchase.lua (redis-benchmark)"
rcli() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" "$@"; }
redis_rps=""
if ! part redis; then
    say "redis part not selected"
elif command -v redis-benchmark >/dev/null 2>&1; then
    # The script and the keys exactly as the engine runs them (prelude included).
    sha="$(rcli SCRIPT LOAD "$(target/release/seckill lua purchase)")"
    mapfile -t RB_KEYS < <(target/release/seckill redis-keys --event 1 --prefix "$RB_PREFIX")
    redis_cleanup
    # A preheated sale that never runs out, never ends and never hits the
    # per-user limit: every call is an acceptance (the full write path).
    rcli HSET "${RB_KEYS[0]}" price 1 limit 1000000 starts_ms 0 ends_ms 99999999999999 \
        total 1000000000 >/dev/null
    rcli SET "${RB_KEYS[1]}" 1000000000 >/dev/null
    # __rand_int__ is drawn per occurrence: a random shopper and a fresh order_no per call.
    rb_out="$(redis-benchmark -h "$REDIS_HOST" -p "$REDIS_PORT" -c 64 -n 200000 -r 100000000 --csv \
        EVALSHA "$sha" "${#RB_KEYS[@]}" "${RB_KEYS[@]}" __rand_int__ 1 __rand_int__)"
    echo "$rb_out"
    redis_rps="$(awk -F'","' 'NR==2 {print $2+0}' <<<"$rb_out")"
    left="$(rcli GET "${RB_KEYS[1]}")"
    accepted=$((1000000000 - left))
    say "EVALSHA purchase.lua: ${redis_rps} calls/s, ${accepted} of 200000 calls accepted"
    redis_cleanup
else
    say "redis-benchmark not installed: skipped"
fi

# --- 5. Criterion micro-benchmarks --------------------------------------------
micro_rc=skipped
if part criterion; then
    section "criterion micro-benchmarks (cargo bench --bench purchase_script)"
    set +e
    cargo bench --bench purchase_script
    micro_rc=$?
    set -e
fi

# --- 6. Summary ----------------------------------------------------------------
section "summary (SPEC §7)"
json="$OUT_DIR/bench.json"
if [[ -f "$json" ]]; then
    jq -r '
      def f(x): if x == null then "-" else (x * 100 | round) / 100 end;
      "machine: \(.cpus) CPUs shared by client, engine, Redis and Postgres; \(.connections) connections, \(.phase_secs)s per phase, \(.client) client",
      "healthz             \(.healthz_rps | round) req/s   p50 \(f(.healthz_p50_ms)) ms  p99 \(f(.healthz_p99_ms)) ms",
      "purchase selling    \(.selling_rps | round) req/s   p50 \(f(.selling_p50_ms)) ms  p99 \(f(.selling_p99_ms)) ms   ratio \(.ratio_selling * 1000 | round / 1000)",
      "purchase sold out   \(.sold_out_rps | round) req/s   p50 \(f(.sold_out_p50_ms)) ms  p99 \(f(.sold_out_p99_ms)) ms   ratio \(.ratio_sold_out * 1000 | round / 1000)",
      "orders persisted during bench: \(.persisted.orders)",
      (.phases[] | "CPU cores in \(.name): client \(f(.cpu.client_cores)) engine \(f(.cpu.engine_cores)) redis \(f(.cpu.redis_cores)) postgres \(f(.cpu.postgres_cores)) other \(f(.cpu.other_cores)); engine \(f(.cpu.engine_us_per_request)) µs CPU per request"),
      (.targets[] | "target \(.name) \(.target): \(.value * 1000 | round / 1000) \(if .met then "MET" else "NOT MET" end)"),
      (.warnings[] | "WARNING: \(.)")
    ' "$json"
else
    say "no $json: the HTTP benchmark failed (exit code $http_rc)"
fi
spread_json="$OUT_DIR/bench-spread.json"
if [[ -f "$spread_json" && "$http_rc" != skipped ]]; then
    echo
    jq -r '
      def n(x; d): if x == null then "-" else (x * d | round / d | tostring) end;
      def mmm(v; d): "\(n(v.min; d)) / \(n(v.median; d)) / \(n(v.max; d))";
      "spread over \(.runs) runs (min / median / max; commit \(.commit)); targets judged on the median:",
      "  phase               req/s                     ratio to /healthz     p99 ms",
      (.phases[] | "  \(.name + (" " * (18 - (.name | length))))  \(mmm(.rps; 1) | . + (" " * (24 - length)))  \(mmm(.ratio; 1000) | . + (" " * (20 - length)))  \(mmm(.p99_ms; 100))"),
      (.targets[] | "  target \(.name) \(.target): median \(n(.median; 1000)) (runs: \([.values[] | n(.; 1000)] | join(", "))) \(if .met then "MET" else "NOT MET" end)")
    ' "$spread_json"
fi
backlog_json="$OUT_DIR/backlog/bench.json"
if [[ -f "$backlog_json" && "$backlog_rc" != skipped ]]; then
    jq -r '
      def f(x): if x == null then "-" else (x * 100 | round) / 100 end;
      "sold out while the writers drain a large backlog (SECKILL_WRITERS=1, SECKILL_BATCH_MAX=32), separate engine run:",
      "  \(.persisted.backlog_at_sold_out_start) orders pending as the sold-out phase started, drained \(f(.persisted.selling_drain_secs)) s after the selling phase",
      "  purchase sold out   \(.sold_out_rps | round) req/s   p50 \(f(.sold_out_p50_ms)) ms  p99 \(f(.sold_out_p99_ms)) ms   ratio \(.ratio_sold_out * 1000 | round / 1000)  (target p99 <= 5 ms: \(if .sold_out_p99_ms <= 5 then "MET" else "NOT MET" end))"
    ' "$backlog_json"
fi
durable_json="$OUT_DIR/durable/bench.json"
if [[ -f "$durable_json" ]]; then
    jq -r '
      def f(x): if x == null then "-" else (x * 100 | round) / 100 end;
      "SECKILL_ACK=durable (202 after the commit), same machine, separate engine run:",
      "  healthz             \(.healthz_rps | round) req/s",
      "  purchase selling    \(.selling_rps | round) req/s   p50 \(f(.selling_p50_ms)) ms  p99 \(f(.selling_p99_ms)) ms   ratio \(.ratio_selling * 1000 | round / 1000)",
      "  purchase sold out   \(.sold_out_rps | round) req/s   p50 \(f(.sold_out_p50_ms)) ms  p99 \(f(.sold_out_p99_ms)) ms   ratio \(.ratio_sold_out * 1000 | round / 1000)"
    ' "$durable_json"
fi
if [[ -f "$json" ]]; then
    echo
    echo "cost table: CPU µs per counted request, by process and phase (same run)"
    jq -r '
      def u(x): if x == null then "     -" else (x * 10 | round / 10 | tostring | .[0:6] | (" " * (6 - length)) + .) end;
      "  phase                 client engine  redis postgr  other    total",
      (.phases[] | .cpu as $c |
        "  \(.name + (" " * (20 - (.name | length))))  \(u($c.client_us_per_request)) \(u($c.engine_us_per_request)) \(u($c.redis_us_per_request)) \(u($c.postgres_us_per_request)) \(u($c.other_us_per_request))   \(u(($c.client_us_per_request // 0) + ($c.engine_us_per_request // 0) + ($c.redis_us_per_request // 0) + ($c.postgres_us_per_request // 0)))"),
      (.relay // empty | .cpu as $c |
        "  relay, per event      \(u($c.client_us_per_request)) \(u($c.engine_us_per_request)) \(u($c.redis_us_per_request)) \(u($c.postgres_us_per_request)) \(u($c.other_us_per_request))   \(u(($c.engine_us_per_request // 0) + ($c.redis_us_per_request // 0) + ($c.postgres_us_per_request // 0) + ($c.other_us_per_request // 0)))  (published after the crowd: \(.events) events in \(.secs * 100 | round / 100)s)")
    ' "$json"
fi
ablation_rows=()
for layer in "${ABLATION_LAYERS[@]}"; do
    f="$OUT_DIR/ablation/ablation-$layer.json"
    if [[ -f "$f" && "$ablation_rc" != skipped ]]; then ablation_rows+=("$f"); fi
done
if ((${#ablation_rows[@]})); then
    echo
    echo "ablation of the purchase path (selling, every request keyed; one engine per layer, each ratio to its own /healthz)"
    jq -rs '
      def u(x): if x == null then "     -" else (x * 10 | round / 10 | tostring | .[0:6] | (" " * (6 - length)) + .) end;
      "  layer          purchases/s  ratio   p99 ms  engine  redis postgr client   (CPU µs per purchase)",
      (.[] | .selling.cpu as $c |
        "  \(.layer + (" " * (13 - (.layer | length))))  \(.selling.rps | round | tostring | (" " * (11 - length)) + .)  \(.ratio_selling * 1000 | round / 1000 | tostring | .[0:5] | (" " * (5 - length)) + .)  \(.selling.p99_ms * 100 | round / 100 | tostring | (" " * (7 - length)) + .)  \(u($c.engine_us_per_request)) \(u($c.redis_us_per_request)) \(u($c.postgres_us_per_request)) \(u($c.client_us_per_request))")
    ' "${ablation_rows[@]}"
fi
if [[ -f "$OUT_DIR/instructions.json" && "$instructions_rc" != skipped ]]; then
    echo
    echo "instructions per request (callgrind, deterministic; ratio = /healthz engine instructions ÷ the row's)"
    jq -r '
      ([.rows[] | select(.row == "healthz") | .engine_ir_per_request][0]) as $h |
      "  row           engine Ir  redis Ir   ratio",
      (.rows[] | "  \(.row + (" " * (12 - (.row | length))))  \(.engine_ir_per_request | tostring | (" " * (9 - length)) + .)  \(.redis_ir_per_request | tostring | (" " * (8 - length)) + .)   \(if $h then ($h / .engine_ir_per_request * 100 | round / 100 | tostring) else "-" end)")
    ' "$OUT_DIR/instructions.json"
fi
if [[ -f "$OUT_DIR/bigsale.json" && "$bigsale_rc" != skipped ]]; then
    echo
    jq -r '
      "sale of \(.buyers_in_redis) buyers in one event (filled in \(.fill_secs | round) s):",
      "  purchase p99 \(.measure.p99_ms) ms at \(.measure.rate)/s (open model) over \(.measure.reconciler_passes) reconciler passes, checker and dashboard polled every second",
      "  slowest Redis command by the slow log \(.redis.slowest.us) µs (\(.redis.slowest.command)), by its own time (less the machine stall the probes saw inside it) \(.redis.slowest_own.own_us) µs (\(.redis.slowest_own.command)), bound \(.redis.bound_us) µs; \(.redis.commands_over_100us) commands over 100 µs",
      "  \(.redis.commands_over_bound) commands over the bound: \(.redis.over_bound_with_a_machine_stall) within it less a machine stall measured inside them, \(.redis.own_work_over_bound) over it by their own time; machine stalls over 1 ms: \(.redis.machine_stalls.fill.over_1ms) in the fill, \(.redis.machine_stalls.measure.over_1ms) in the sale (largest \(.redis.machine_stalls.fill.max_us), \(.redis.machine_stalls.measure.max_us) µs)",
      (.redis.by_kind[] | "    \(.kind): max \(.max_us) µs, \(.over_100us) over 100 µs"),
      "  engine RSS: start \(.engine_rss_mb.start) MiB, peak \(.engine_rss_mb.peak) MiB, idle after the sale \(.engine_rss_mb.idle_after_sale) MiB (bound \(.engine_rss_mb.bound) MiB)"
    ' "$OUT_DIR/bigsale.json"
fi
if [[ -f "$OUT_DIR/bench-buckets.json" && "$buckets_rc" != skipped ]]; then
    echo
    echo "one hot item on a Redis Cluster, stock in buckets (CPU µs per accepted purchase; same run per row):"
    jq -r '
      def r(x): if x == null then "-" else (x * 10 | round / 10 | tostring) end;
      (.runs[] | "  \(.masters) master(s), \(.stock_buckets) bucket(s): \(.purchases_rps | round) purchases/s, ratio \(.ratio * 1000 | round / 1000), engine \(r(.cpu_us_per_purchase.engine)) µs, redis \([.redis_masters[] | r(.us_per_purchase)] | join(" + ")) µs, postgres \(r(.cpu_us_per_purchase.postgres)) µs; sell-out: \(.sellout.transfers // "-") transfers, \(.sellout.unsold // "-") unsold")
    ' "$OUT_DIR/bench-buckets.json"
fi
if [[ -n "$redis_rps" ]]; then
    echo "redis EVALSHA purchase.lua  ${redis_rps} calls/s (Redis ceiling, 64 clients)"
fi
echo "writer drain bench: $([[ $drain_rc == skipped ]] && echo "not present" || echo "exit $drain_rc, figures above")"
echo "limiter memory bench: $([[ $limiter_rc == skipped ]] && echo "not present" || echo "exit $limiter_rc, figures above")"
echo "criterion purchase_script: $([[ $micro_rc == skipped ]] && echo "not selected" || echo "exit $micro_rc, figures above")"
echo "total time: $(($(date +%s) - started))s"

# seckill-loadtest bench exits 3 when it ran but a SPEC §7 target was not met
# (named from bench.json); the durable run is a comparison (SPEC §7 is for the
# default ack), so only its other failures count.
failures=()
for part in "http $http_rc" "backlog $backlog_rc" "durable $durable_rc" "ablation $ablation_rc" \
    "instructions $instructions_rc" "bigsale $bigsale_rc" "buckets $buckets_rc" \
    "criterion $micro_rc" "drain $drain_rc" "limiter $limiter_rc"; do
    read -r name c <<<"$part"
    if [[ "$c" == skipped || "$c" == 0 || ("$name" == durable && "$c" == 3) ]]; then
        continue
    elif [[ "$name" == http && "$c" == 3 && -f "$spread_json" ]]; then
        failures+=("SPEC §7 targets not met (median of $BENCH_RUNS runs): $(jq -r '[.targets[] | select(.met | not) | .name] | join(", ")' "$spread_json")")
    elif [[ "$name" == backlog && "$c" == 3 ]]; then
        failures+=("sold out during a large drain: $(jq -r '"p99 \(.sold_out_p99_ms) ms with \(.persisted.backlog_at_sold_out_start) orders pending (needs p99 <= 5 ms and a backlog >= 10000)"' "$OUT_DIR/backlog/bench.json" 2>/dev/null || echo "no figures")")
    elif [[ "$name" == drain && "$c" == 3 ]]; then
        failures+=("writer drain below 30000 orders/s (median of the runs above)")
    elif [[ "$name" == bigsale && "$c" == 3 ]]; then
        failures+=("bigsale bounds not met: $(jq -r '[(if .redis.slowest_own.own_us > .redis.bound_us then "slowest Redis command by its own time \(.redis.slowest_own.own_us) µs > \(.redis.bound_us)" else empty end), (if .engine_rss_mb.idle_after_sale > .engine_rss_mb.bound then "idle RSS \(.engine_rss_mb.idle_after_sale) MiB > \(.engine_rss_mb.bound)" else empty end)] | join(", ")' "$OUT_DIR/bigsale.json")")
    else
        failures+=("$name part exited $c")
    fi
done
if ((${#failures[@]})); then
    printf -v why '%s; ' "${failures[@]}"
    say "FAIL: ${why%; }"
    exit 1
fi
if [[ "$http_rc" == skipped ]]; then
    say "done; the HTTP part was not selected, so no SPEC §7 target was judged"
else
    say "PASS: every SPEC §7 target measured here was met"
fi
