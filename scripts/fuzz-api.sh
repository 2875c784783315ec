#!/usr/bin/env bash
# Fuzz the engine against its own OpenAPI document with schemathesis.
#
#   scripts/fuzz-api.sh --short   bounded examples, < 2 min (part of `make test`)
#   scripts/fuzz-api.sh           the long run (`make fuzz-api`; FUZZ_MAX_TIME=600 by default)
#
# Installs the pinned schemathesis into .venv-fuzz/ (gitignored) when needed,
# builds the engine, serves it on a free loopback port with its own database
# and Redis key prefix, seeds an open sale and wallets, runs every phase
# (examples, coverage, fuzzing, stateful over the document's links) with
# the checks below, then audits Postgres and Redis: nothing a rejected
# request sent may have been created (scripts/fuzz-api/audit.py). Exits
# non-zero on any failure; leaves its reports in fuzz-out/ (gitignored).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
HERE="$ROOT/scripts/fuzz-api"
# shellcheck source=scripts/engine.sh
source "$ROOT/scripts/engine.sh"

MODE=long
if [[ "${1:-}" == "--short" ]]; then
    MODE=short
fi
if [[ "$MODE" == short ]]; then
    MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-25}"
    MAX_TIME="${FUZZ_MAX_TIME:-75}"
    PROFILE=debug
else
    MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-500}"
    MAX_TIME="${FUZZ_MAX_TIME:-600}"
    PROFILE=release
fi
SEED_ARGS=()
if [[ -n "${FUZZ_SEED:-}" ]]; then
    SEED_ARGS=(--seed "$FUZZ_SEED")
fi
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection,ignored_auth,missing_required_header,unsupported_method,allow_header_conformance

PG_ADMIN_URL="${SECKILL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS_URL="${SECKILL_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
RUN_ID="fuzz_$$_$(date +%s)"
DB_URL="${PG_ADMIN_URL%/*}/$RUN_ID"
OUT="$ROOT/fuzz-out"
mkdir -p "$OUT"
LOG="$OUT/engine.log"

# --- the fuzzer ---------------------------------------------------------------
VENV="$ROOT/.venv-fuzz"
installed="$("$VENV/bin/python" -m pip freeze 2>/dev/null || true)"
if ! grep -qxFf <(grep -v '^#' "$HERE/requirements.txt") <<<"$installed"; then
    echo "fuzz-api: installing $(grep -v '^#' "$HERE/requirements.txt") into .venv-fuzz/"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$HERE/requirements.txt"
fi

# --- the engine ----------------------------------------------------------------
if [[ "$PROFILE" == release ]]; then
    cargo build -q --release --bin seckill
else
    cargo build -q --bin seckill
fi
ENGINE_BIN="target/$PROFILE/seckill"
PORT="$(free_port)"
BASE="http://127.0.0.1:$PORT"
ADMIN_TOKEN="fuzz-admin-$(openssl rand -hex 16 2>/dev/null || echo "$RUN_ID-0123456789")"
JWT_SECRET="fuzz-jwt-secret-$(openssl rand -hex 24 2>/dev/null || echo "$RUN_ID-0123456789abcdef0123456789")"
ENGINE_ENV=(
    SECKILL_BIND="127.0.0.1:$PORT"
    SECKILL_DATABASE_URL="$DB_URL"
    SECKILL_REDIS_URL="$REDIS_URL"
    SECKILL_REDIS_PREFIX="$RUN_ID"
    SECKILL_ADMIN_TOKEN="$ADMIN_TOKEN"
    SECKILL_JWT_SECRET="$JWT_SECRET"
    # One shopper and one client send everything: limits that would answer
    # most requests 429 would leave little fuzzed. 429 stays documented.
    SECKILL_RATE_USER_RPS=100000 SECKILL_RATE_USER_BURST=100000
    SECKILL_RATE_IP_RPS=100000 SECKILL_RATE_IP_BURST=100000
    SECKILL_LOG_FORMAT=json RUST_LOG="${RUST_LOG:-warn}"
)

cleanup() {
    local status=$?
    engine_stop fuzz-api
    redis-cli -u "$REDIS_URL" --scan --pattern "$RUN_ID:*" 2>/dev/null \
        | xargs -r -n 32 redis-cli -u "$REDIS_URL" UNLINK >/dev/null 2>&1 || true
    psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$RUN_ID\" WITH (FORCE)" >/dev/null 2>&1 || true
    exit "$status"
}
trap cleanup EXIT

env "${ENGINE_ENV[@]}" "$ENGINE_BIN" migrate >/dev/null
ENGINE_BIN="$ENGINE_BIN" engine_start fuzz-api "$LOG" "$BASE" "${ENGINE_ENV[@]}"

# --- the sale the fuzzer finds ---------------------------------------------------
SHOPPER=1
SHOPPER_TOKEN="$(env SECKILL_JWT_SECRET="$JWT_SECRET" "$ENGINE_BIN" token --user "$SHOPPER" --ttl-secs 7200)"
admin() {
    curl -sf -X "$1" -H "authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
        ${3:+--data "$3"} "$BASE$2"
}
starts="$(date -u -d '-1 minute' +%Y-%m-%dT%H:%M:%SZ)"
ends="$(date -u -d '+3 hours' +%Y-%m-%dT%H:%M:%SZ)"
EVENT_ID="$(admin POST /admin/events \
    "{\"name\":\"fuzz sale\",\"price\":100,\"stock\":100000,\"per_user_limit\":1000,\"starts_at\":\"$starts\",\"ends_at\":\"$ends\"}" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')"
admin POST "/admin/events/$EVENT_ID/preheat" >/dev/null
admin POST /admin/wallets/seed '{"first_user_id":1,"count":100,"balance":100000000}' >/dev/null
echo "fuzz-api: engine on $BASE (database $RUN_ID), sale $EVENT_ID open, shopper $SHOPPER funded"

# --- fuzz ------------------------------------------------------------------------
echo "fuzz-api: $MODE run, at most $MAX_EXAMPLES examples per operation and ${MAX_TIME}s"
status=0
SECKILL_FUZZ_SHOPPER_TOKEN="$SHOPPER_TOKEN" SECKILL_FUZZ_ADMIN_TOKEN="$ADMIN_TOKEN" \
    "$VENV/bin/st" --config-file "$HERE/schemathesis.toml" run "$BASE/openapi.json" \
    --checks "$CHECKS" \
    --max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" "${SEED_ARGS[@]}" \
    --workers 1 --request-timeout 60 \
    --report har --report-har-path "$OUT/requests.har" \
    --report junit --report-junit-path "$OUT/junit.xml" \
    --warnings off \
    || status=$?

# --- nothing created by a rejected request -------------------------------------------
python3 "$HERE/audit.py" --har "$OUT/requests.har" --base "$BASE" --admin-token "$ADMIN_TOKEN" \
    --database-url "$DB_URL" --redis-url "$REDIS_URL" --prefix "$RUN_ID" \
    --seeded-event "$EVENT_ID" --seeded-wallets 1:100 \
    || status=$?

if [[ "$status" -ne 0 ]]; then
    echo "fuzz-api: FAILED (reports in fuzz-out/, engine log in fuzz-out/engine.log)" >&2
    exit "$status"
fi
echo "fuzz-api: passed"
