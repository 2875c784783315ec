#!/usr/bin/env bash
# Instructions per request, counted by callgrind: the part of the cost table
# that does not move with the machine's noise. For each row, a release engine
# runs under `valgrind --tool=callgrind` (instrumentation off at start), takes a
# warm-up of requests, then counts its instructions over MEASURED sequential
# requests (every thread: HTTP, Redis client, writers); Redis itself is a
# private redis-server, also under callgrind, counted over the same window.
# Postgres is not counted (many processes; see the CPU-time cost table).
#
# Rows: healthz, event_page, sold_out and selling (the full engine, plain
# purchases, as in make bench's HTTP phases), and the purchase path layer by
# layer (script, token, limits, idempotency, full: `seckill serve --ablation
# LAYER`; every purchase keyed, as in make bench's ablation). Requests go
# over INSTR_CONNECTIONS (16) connections at once, so batching happens as
# under a crowd; a purchase row counts until the writers have drained.
#
# Writes $OUT_DIR/instructions.json and prints the table. Needs valgrind
# (Debian package; installed when missing), the release build, Postgres.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export SECKILL_ADMIN_TOKEN="${SECKILL_ADMIN_TOKEN:-dev-only-admin-token-change-me}"
export SECKILL_JWT_SECRET="${SECKILL_JWT_SECRET:-dev-only-jwt-secret-change-me-0123456789abcdef}"
PG_ADMIN_URL="${SECKILL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_SERVER="${PG_ADMIN_URL%%\?*}"
PG_SERVER="${PG_SERVER%/*}"
DB="seckill_instr_$(date +%s)_$$"
export SECKILL_DATABASE_URL="$PG_SERVER/$DB"
OUT_DIR="${SECKILL_LOADTEST_OUT_DIR:-loadtest/out}"
WARMUP="${INSTR_WARMUP:-600}"
MEASURED="${INSTR_MEASURED:-1000}"
ROWS="${INSTR_ROWS:-healthz event_page sold_out selling script token limits idempotency full}"
REDIS_PORT="${INSTR_REDIS_PORT:-16393}"
# Extra redis-server arguments (e.g. "--hash-max-listpack-entries 64").
INSTR_REDIS_ARGS="${INSTR_REDIS_ARGS:-}"
BIND=127.0.0.1:18193
WORK=.local/instructions
mkdir -p "$WORK" "$OUT_DIR"

say() { echo "instructions: $*"; }

if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
    say "installing valgrind"
    if [[ $(id -u) -eq 0 ]]; then apt-get install -y -q valgrind >/dev/null; else sudo apt-get install -y -q valgrind >/dev/null; fi
fi
[[ -x target/release/seckill ]] || cargo build --release --bin seckill

redis_pid=""
engine_pid=""
cleanup() {
    [[ -n "$engine_pid" ]] && kill -TERM "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null
    [[ -n "$redis_pid" ]] && kill -TERM "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    true
}
trap cleanup EXIT

target/release/seckill migrate >/dev/null

# Sum of the instructions (Ir) of every callgrind dump file with this prefix.
total_ir() {
    local sum=0 n
    for f in "$1".*; do
        [[ -f "$f" ]] || continue
        n=$(awk '/^totals:/ {print $2}' "$f")
        sum=$((sum + ${n:-0}))
    done
    echo "$sum"
}

json_rows=()
printf '\n%-12s %14s %14s %14s   %s\n' row "engine Ir/req" "redis Ir/req" "sum Ir/req" answers
for row in $ROWS; do
    kind=$row layer=full
    case "$row" in
        script|token|limits|idempotency|full) kind=keyed layer=$row ;;
    esac
    rm -f "$WORK/engine-$row".* "$WORK/redis-$row".*
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/redis-$row.%p" \
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no ${INSTR_REDIS_ARGS:-} \
        >"$WORK/redis-$row.log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 1 120); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.25; done
    env SECKILL_BIND="$BIND" SECKILL_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
        SECKILL_REDIS_PREFIX="instr-$row" SECKILL_LOG_FORMAT=json RUST_LOG=warn \
        SECKILL_RATE_GLOBAL_RPS=10000000 SECKILL_RATE_USER_RPS=1000 SECKILL_RATE_IP_RPS=10000000 \
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/engine-$row.%p" \
        target/release/seckill serve --ablation "$layer" >"$WORK/engine-$row.log" 2>&1 &
    engine_pid=$!
    ready=""
    for _ in $(seq 1 240); do
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$BIND/readyz" || true)" == 200 ]]; then ready=1; break; fi
        sleep 0.5
    done
    [[ -n "$ready" ]] || { say "engine for $row not ready"; tail "$WORK/engine-$row.log"; exit 1; }
    answers=$(INSTR_DRAIN=$([[ $layer == full ]] && echo 1 || echo 0) python3 scripts/instructions-drive.py "http://$BIND" "$kind" "$WARMUP" "$MEASURED" "$engine_pid,$redis_pid")
    kill -TERM "$engine_pid"; wait "$engine_pid" 2>/dev/null || true; engine_pid=""
    kill -TERM "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; redis_pid=""
    e=$(total_ir "$WORK/engine-$row") r=$(total_ir "$WORK/redis-$row")
    printf '%-12s %14d %14d %14d   %s\n' "$row" $((e / MEASURED)) $((r / MEASURED)) \
        $(((e + r) / MEASURED)) "$(jq -c .answers <<<"$answers")"
    json_rows+=("$(jq -c --arg row "$row" --arg layer "$layer" --argjson e "$e" --argjson r "$r" \
        --argjson m "$MEASURED" \
        '{row: $row, layer: $layer, engine_ir_per_request: ($e / $m | floor),
          redis_ir_per_request: ($r / $m | floor), answers: .answers}' <<<"$answers")")
done
printf '%s\n' "${json_rows[@]}" | jq -s --arg measured "$MEASURED" \
    '{measured_requests: ($measured | tonumber), rows: .}' >"$OUT_DIR/instructions.json"
say "written $OUT_DIR/instructions.json"
