#!/usr/bin/env bash
# The live dashboard in a real browser, during a running sale: starts an
# engine (debug build, its own database), runs a small open-model sale with
# seckill-loadtest, opens /admin/dashboard in headless Chromium (Debian's
# `chromium`, driven by `playwright-core` from npm), asserts that the charts
# and figures have data, presses the invariant check, and saves screenshots
# to .local/browser/out/ (gitignored).
#
# Installs what it needs: `chromium` with apt-get (as root) and
# `playwright-core` into .local/browser/. Skips, with a message and exit
# code 0, only when Chromium cannot be installed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
WORK="$ROOT/.local/browser"
OUT="$WORK/out"
CHROMIUM=/usr/bin/chromium
mkdir -p "$OUT"

say() { echo "dashboard-browser: $*"; }

if [[ ! -x "$CHROMIUM" ]]; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian's chromium"
        apt-get install -y -q chromium >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || true
    fi
fi
if [[ ! -x "$CHROMIUM" ]]; then
    say "SKIPPED: $CHROMIUM is missing and could not be installed (apt-get install chromium)"
    exit 0
fi
command -v node >/dev/null 2>&1 || { say "node is required (apt-get install nodejs npm)"; exit 1; }
if [[ ! -d "$WORK/node_modules/playwright-core" ]]; then
    say "installing playwright-core into .local/browser"
    npm install --prefix "$WORK" --no-audit --no-fund --silent playwright-core@1 >/dev/null
fi

scripts/services.sh >/dev/null
cargo build -q --bin seckill && cargo build -q -p seckill-loadtest

export SECKILL_ADMIN_TOKEN="browser-check-admin-token-0123456789"
export SECKILL_JWT_SECRET="browser-check-jwt-secret-0123456789abcdef"
admin_url="${SECKILL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db="seckill_browser_$$"
export SECKILL_DATABASE_URL="${admin_url%/*}/$db"
# shellcheck source=scripts/engine.sh
source scripts/engine.sh
port="$(free_port)"
base="http://127.0.0.1:$port"
log="$WORK/engine.log"

engine=""
load=""
cleanup() {
    [[ -n "$load" ]] && kill "$load" 2>/dev/null || true
    if [[ -n "$engine" ]]; then
        kill -TERM "$engine" 2>/dev/null || true
        wait "$engine" 2>/dev/null || true
    fi
    psql -q "$admin_url" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql -q "$admin_url" -c "CREATE DATABASE \"$db\"" >/dev/null
target/debug/seckill migrate >/dev/null
SECKILL_BIND="127.0.0.1:$port" SECKILL_RATE_IP_RPS=0 SECKILL_REDIS_PREFIX="browser$$" \
    SECKILL_NATS_STREAM=SECKILL_BROWSER_CHECK SECKILL_NATS_SUBJECT_PREFIX=seckill-browser.orders \
    target/debug/seckill serve >"$log" 2>&1 &
engine=$!
for _ in $(seq 1 120); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/readyz" || true)" == "200" ]] && break
    kill -0 "$engine" 2>/dev/null || { tail -n 20 "$log"; exit 1; }
    sleep 0.25
done

say "engine on $base; a 30 s sale at 300 requests/s, its stock in 3 buckets"
target/debug/seckill-loadtest --base-url "$base" --scenario smoke --users 20000 --stock 6000 \
    --stock-buckets 3 --per-user-limit 1 --rate 300 --duration-secs 30 --requests 9000 --cannot-pay-share 0.1 --start-delay-ms 2000 \
    --out-dir "$WORK/loadtest" >"$WORK/loadtest.log" 2>&1 &
load=$!

BASE_URL="$base" OUT="$OUT" NODE_PATH="$WORK/node_modules" CHROMIUM="$CHROMIUM" \
    node scripts/browser/dashboard.mjs
say "screenshots: $OUT/dashboard.png, $OUT/dashboard-checks.png"
