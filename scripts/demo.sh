#!/usr/bin/env bash
# The newcomer's demo: services up, build, migrate, start the engine, run a
# flash sale with the load generator (scenario $SCENARIO, default burst),
# print its report, stop the engine. Exits with the load generator's code.
#
# Needs SECKILL_ADMIN_TOKEN and SECKILL_JWT_SECRET in the environment
# (`make demo` passes dev-only values).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

: "${SECKILL_ADMIN_TOKEN:?set SECKILL_ADMIN_TOKEN (make demo sets a dev-only value)}"
: "${SECKILL_JWT_SECRET:?set SECKILL_JWT_SECRET (make demo sets a dev-only value)}"
export SECKILL_ADMIN_TOKEN SECKILL_JWT_SECRET
export SECKILL_BIND="${SECKILL_BIND:-127.0.0.1:8080}"
export SECKILL_DATABASE_URL="${SECKILL_DATABASE_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/seckill}}"
# The whole crowd comes from one loopback address, so the per-IP limiter
# (meant for real clients) would turn the demo into a 429 test. Per-user and
# global limits stay on.
export SECKILL_RATE_IP_RPS="${SECKILL_RATE_IP_RPS:-0}"
SCENARIO="${SCENARIO:-burst}"
LOG=.local/demo-engine.log
READY_SECS=30

# A client needs a concrete address: 0.0.0.0 / [::] listen everywhere, so
# reach them through loopback.
host="${SECKILL_BIND%:*}"
port="${SECKILL_BIND##*:}"
case "$host" in
    0.0.0.0 | "") host=127.0.0.1 ;;
    "[::]") host="[::1]" ;;
esac
BASE_URL="http://$host:$port"

# shellcheck source=scripts/engine.sh
source scripts/engine.sh
stop_engine() { engine_stop demo; }
trap stop_engine EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

scripts/services.sh

echo "demo: building (release)"
cargo build --release --workspace

echo "demo: migrating $SECKILL_DATABASE_URL"
target/release/seckill migrate

if curl -fsS -o /dev/null "$BASE_URL/healthz" 2>/dev/null; then
    echo "demo: something already answers on $BASE_URL; stop it or set SECKILL_BIND" >&2
    exit 1
fi

mkdir -p .local
echo "demo: starting the engine on $SECKILL_BIND (log: $LOG)"
engine_start demo "$LOG" "$BASE_URL"
echo "demo: engine ready at $BASE_URL"

echo "demo: running the load generator, scenario '$SCENARIO'"
set +e
target/release/seckill-loadtest --base-url "$BASE_URL" --scenario "$SCENARIO"
rc=$?
set -e

stop_engine
echo "demo: engine stopped; its log is $LOG"
if [[ "$rc" -eq 0 ]]; then
    echo "demo: scenario '$SCENARIO' passed"
else
    echo "demo: scenario '$SCENARIO' FAILED (exit code $rc)" >&2
fi
exit "$rc"
