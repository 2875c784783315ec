#!/usr/bin/env bash
# `make bench`, part "buckets" (issue 10): one hot item sold on a Redis
# Cluster of 1, 2 and 3 masters, its stock split into as many buckets as
# there are masters. Runs alone too:
#   scripts/bench-buckets.sh
#   BUCKETS_MASTERS="1 3" BUCKETS_PHASE_SECS=8 scripts/bench-buckets.sh
#
# For each M in BUCKETS_MASTERS:
#  1. M cluster-enabled redis-servers (no replicas, no persistence) on spare
#     loopback ports under .local/bench-buckets/, master i holding slots
#     [i*16384/M, (i+1)*16384/M) (CLUSTER ADDSLOTSRANGE + MEET: `redis-cli
#     --cluster create` refuses fewer than 3 masters; cluster-announce-ip
#     so that a lone node names itself in CLUSTER SLOTS), a fresh database and
#     the release engine on a redis-cluster:// URL with rate limits off.
#  2. Selling: `seckill-loadtest bench` with one hot event of --stock-buckets M
#     (several million units: the phase never nears the end), the /healthz
#     ceiling and purchases by fresh funded shoppers, each master's CPU ticks
#     over the phase (--watch-pid, /proc/<pid>/stat utime+stime, converted
#     with `getconf CLK_TCK`), the engine's and Postgres' CPU.
#  3. Sell-out: a sale of BUCKETS_SELLOUT_STOCK units to a larger crowd,
#     the same bucket count: transfers (sum of moved_in over the buckets of
#     the admin view), time to sell out, units left once the writers drained
#     and the reconciler passed (must be 0).
#
# When the engine has no stock buckets (its /openapi.json does not name
# stock_buckets), every event has one bucket and the runs say so.
#
# Writes $OUT_DIR/bench-buckets.json and prints a table. Exit 0 when every run
# worked and every sell-out left 0 units, 1 otherwise (said why).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export SECKILL_ADMIN_TOKEN="${SECKILL_ADMIN_TOKEN:-dev-only-admin-token-change-me}"
export SECKILL_JWT_SECRET="${SECKILL_JWT_SECRET:-dev-only-jwt-secret-change-me-0123456789abcdef}"
TEST_DB_URL="${SECKILL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
MASTERS_LIST="${BUCKETS_MASTERS:-1 2 3}"
PHASE_SECS="${BUCKETS_PHASE_SECS:-8}"
CONNECTIONS="${BUCKETS_CONNECTIONS:-64}"
STOCK="${BUCKETS_STOCK:-5000000}"
SELLOUT_STOCK="${BUCKETS_SELLOUT_STOCK:-3000}"
SELLOUT_CROWD="${BUCKETS_SELLOUT_CROWD:-20000}"
PORT_BASE="${BUCKETS_PORT_BASE:-17311}"
OUT_DIR="${SECKILL_LOADTEST_OUT_DIR:-loadtest/out}"
BIND=127.0.0.1:18183
BASE_URL="http://$BIND"
WORK=.local/bench-buckets
LOG="$WORK/engine.log"
PG_SERVER="${TEST_DB_URL%%\?*}"
PG_SERVER="${PG_SERVER%/*}"
CLK_TCK="$(getconf CLK_TCK)"
# Each run's order events go to a stream of its own (event ids restart at 1 in
# every fresh database, so a shared stream would mix runs); deleted after it.
NATS_URL="${SECKILL_TEST_NATS_URL:-nats://127.0.0.1:4222}"
export SECKILL_NATS_URL="$NATS_URL"

say() { echo "buckets: $*"; }
admin() { curl -fsS -H "Authorization: Bearer $SECKILL_ADMIN_TOKEN" "$BASE_URL$1"; }
# redis-cli on a port of this run's cluster.
rc_port() {
    local port="$1"
    shift
    redis-cli -h 127.0.0.1 -p "$port" "$@"
}

# shellcheck source=scripts/engine.sh
source scripts/engine.sh
ports=()
db=""
stream=""
# This run's stream, deleted once (nats_delete_stream, scripts/engine.sh).
delete_stream() {
    if [[ -n "$stream" ]]; then nats_delete_stream "$NATS_URL" "$stream"; fi
    stream=""
}
# Between runs and at exit.
stop_cluster() {
    local port
    for port in "${ports[@]}"; do
        rc_port "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    ports=()
}
drop_db() {
    if [[ -n "$db" ]]; then
        psql "$TEST_DB_URL" -q -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
        db=""
    fi
}
# Called by the EXIT trap.
# shellcheck disable=SC2317,SC2329
cleanup() {
    engine_stop buckets
    stop_cluster
    drop_db
    delete_stream
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The table of a bench-buckets.json (also: scripts/bench-buckets.sh --table [FILE]).
print_table() {
    jq -r '"one hot item on a Redis Cluster of 1..3 masters, stock split in the number of buckets shown, \(.cpus) shared CPUs, \(.phase_secs)s selling phase, \(.connections) connections; \(.started_at)–\(.finished_at // "?"), commit \(.commit)\(if .dirty then " (uncommitted changes)" else "" end)"' "$1"
jq -r '
  def r(x; w): (if x == null then "-" else (x * 10 | round / 10 | tostring) end) | (" " * (w - length)) + .;
  def i(x; w): (if x == null then "-" else (x | round | tostring) end) | (" " * (w - length)) + .;
  def t(x; w): (if x == null then "-" else (x * 100 | round / 100 | tostring) end) | (" " * (w - length)) + .;
  "CPU µs per accepted purchase by process (other = everything else on the box: disturbance)",
  "  masters buckets  healthz/s  buys/s  ratio   p99ms  engine  pg  redis(sum)  other | per master: µs/purchase (share)",
  (.runs[] | .cpu_us_per_purchase as $c |
    "  \(i(.masters; 7)) \(i(.stock_buckets; 7))  \(i(.healthz_rps; 9)) \(i(.purchases_rps; 7))  \(.ratio * 1000 | round / 1000 | tostring | (" " * (5 - length)) + .)  \(r(.p99_ms; 6))  \(r($c.engine; 6)) \(r($c.postgres; 4)) \(r($c.redis_masters; 10)) \(r($c.other; 6)) | \([.redis_masters[] | "\(.port): \(r(.us_per_purchase; 0)) (\(if .share == null then "-" else (.share * 100 | round | tostring) + "%" end))"] | join(", "))"),
  "",
  "sell-out (crowd larger than stock; seconds after the crowd started; unsold = stock - sold once the writers drained and the reconciler passed):",
  "  masters buckets  stock  accepted  first 409 sold_out  last 202  transfers  unsold  stock_left",
  (.runs[] | .sellout as $o |
    "  \(i(.masters; 7)) \(i(.stock_buckets; 7))  \(i($o.stock; 5))  \(i($o.accepted; 8))  \(t($o.sold_out_at_secs; 16)) s  \(t($o.last_accept_secs; 6)) s  \(i($o.transfers; 9))  \(i($o.unsold; 6))  \(i($o.stock_left; 10))")
' "$1"
}
if [[ "${1:-}" == --table ]]; then
    print_table "${2:-$OUT_DIR/bench-buckets.json}"
    exit 0
fi

command -v redis-server >/dev/null || { say "redis-server not installed" >&2; exit 2; }
command -v jq >/dev/null || { say "jq not installed" >&2; exit 2; }
cargo build --release --workspace
mkdir -p "$WORK" "$OUT_DIR"
if curl -fsS -o /dev/null "$BASE_URL/healthz" 2>/dev/null; then
    say "something already answers on $BASE_URL; stop it first" >&2
    exit 2
fi

# Starts an M-master cluster on PORT_BASE.. (bus ports +10000); fills ports[].
start_cluster() {
    local m="$1" i port dir="$WORK/m$1"
    rm -rf "$dir"
    mkdir -p "$dir"
    for ((i = 0; i < m; i++)); do
        port=$((PORT_BASE + i))
        if rc_port "$port" ping >/dev/null 2>&1; then
            say "something already answers on port $port; stop it or set BUCKETS_PORT_BASE" >&2
            exit 2
        fi
        redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes --cluster-announce-ip 127.0.0.1 \
            --cluster-config-file "nodes-$port.conf" --save '' --appendonly no \
            --dir "$dir" --daemonize yes --logfile "redis-$port.log" >/dev/null
        ports+=("$port")
    done
    for port in "${ports[@]}"; do
        for _ in $(seq 1 40); do rc_port "$port" ping >/dev/null 2>&1 && break; sleep 0.25; done
    done
    for ((i = 0; i < m; i++)); do
        rc_port "${ports[$i]}" cluster addslotsrange $((i * 16384 / m)) $(((i + 1) * 16384 / m - 1)) >/dev/null
        if ((i > 0)); then rc_port "${ports[$i]}" cluster meet 127.0.0.1 "${ports[0]}" >/dev/null; fi
    done
    local ok
    for _ in $(seq 1 120); do
        ok=1
        for port in "${ports[@]}"; do
            info="$(rc_port "$port" cluster info)"
            [[ "$info" == *"cluster_state:ok"* && "$info" == *"cluster_known_nodes:$m"* &&
                "$info" == *"cluster_slots_ok:16384"* ]] || ok=0
        done
        ((ok)) && break
        sleep 0.25
    done
    ((ok)) || { say "the $m-master cluster did not come up" >&2; exit 1; }
}

# The engine's URL for the cluster: the first node, the others as ?node=.
cluster_url() {
    local url="redis-cluster://127.0.0.1:${ports[0]}" sep='?' port
    for port in "${ports[@]:1}"; do
        url+="${sep}node=127.0.0.1:$port"
        sep='&'
    done
    echo "$url"
}

# The port of the master serving a slot (from this script's slot layout).
slot_port() {
    local slot="$1" m="${#ports[@]}"
    echo "${ports[$((slot * m / 16384))]}"
}

engine_has_buckets=""
rc=0
failures=()
runs=()
started=$(date +%s)
for m in $MASTERS_LIST; do
    echo
    say "==== $m master(s) ===="
    start_cluster "$m"
    db="seckill_buckets_$(date +%s)_$$"
    psql "$TEST_DB_URL" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$db\""
    export SECKILL_DATABASE_URL="$PG_SERVER/$db"
    stream="SECKILL_BUCKETS_$$_M$m"
    export SECKILL_NATS_STREAM="$stream" SECKILL_NATS_SUBJECT_PREFIX="bench.buckets.$$.m$m"
    target/release/seckill migrate >/dev/null
    engine_start buckets "$LOG" "$BASE_URL" \
        SECKILL_BIND="$BIND" SECKILL_REDIS_URL="$(cluster_url)" \
        SECKILL_RECONCILE_INTERVAL_MS=1000 \
        SECKILL_RATE_GLOBAL_RPS=0 SECKILL_RATE_USER_RPS=0 SECKILL_RATE_IP_RPS=0 \
        SECKILL_LOG_FORMAT=json RUST_LOG=warn
    if [[ -z "$engine_has_buckets" ]]; then
        if curl -fsS "$BASE_URL/openapi.json" | grep -q '"stock_buckets"'; then
            engine_has_buckets=true
        else
            engine_has_buckets=false
            say "this engine has no stock buckets: every event has one (the runs say so)"
        fi
    fi
    buckets_args=()
    n=1
    if [[ "$engine_has_buckets" == true ]]; then
        n="$m"
        buckets_args=(--stock-buckets "$n")
    fi
    watch=()
    pids=()
    for port in "${ports[@]}"; do
        pid="$(rc_port "$port" info server | tr -d '\r' | awk -F: '$1 == "process_id" {print $2}')"
        pids+=("$pid")
        watch+=(--watch-pid "redis-$port=$pid")
    done
    say "cluster ${ports[*]} (pids ${pids[*]}), engine pid $engine_pid, events of $n bucket(s)"

    # --- selling: the hot event far from its end -----------------------------
    run_dir="$OUT_DIR/buckets-m$m"
    mkdir -p "$run_dir"
    rm -f "$run_dir/bench.json"
    set +e
    target/release/seckill-loadtest bench --base-url "$BASE_URL" --connections "$CONNECTIONS" \
        --phase-secs "$PHASE_SECS" --stock "$STOCK" "${buckets_args[@]}" \
        --engine-pid "$engine_pid" "${watch[@]}" --out-dir "$run_dir"
    bench_rc=$?
    set -e
    if [[ ! -f "$run_dir/bench.json" ]] || ((bench_rc != 0 && bench_rc != 3)); then
        failures+=("M=$m: seckill-loadtest bench exited with $bench_rc")
        rc=1
        engine_stop buckets
        stop_cluster
        drop_db
        delete_stream
        continue
    fi
    selling_event="$(jq -r .setup.selling_event_id "$run_dir/bench.json")"
    admin "/admin/events/$selling_event" >"$run_dir/selling-event.json"

    # --- sell-out: the end of a sale with buckets -----------------------------
    rm -f "$run_dir/report-burst.json"
    set +e
    target/release/seckill-loadtest --base-url "$BASE_URL" --scenario burst \
        --users "$SELLOUT_CROWD" --requests "$SELLOUT_CROWD" --stock "$SELLOUT_STOCK" \
        "${buckets_args[@]}" --per-user-limit 1 --quantity 1 --concurrency "$CONNECTIONS" \
        --start-delay-ms 2000 --duration-secs 120 --out-dir "$run_dir" >"$run_dir/sellout.log" 2>&1
    sellout_rc=$?
    set -e
    tail -n 6 "$run_dir/sellout.log"
    sellout_event="$(jq -r '.event_id // empty' "$run_dir/report-burst.json" 2>/dev/null || true)"
    if [[ -z "$sellout_event" ]]; then
        failures+=("M=$m: the sell-out sale did not run (exit $sellout_rc; $run_dir/sellout.log)")
        rc=1
        echo '{}' >"$run_dir/sellout-event.json"
    else
        # The reconciler passes every second: wait for pending 0 and the same
        # stock_left on three reads in a row, a second apart.
        prev=""
        same=0
        for _ in $(seq 1 60); do
            admin "/admin/events/$sellout_event" >"$run_dir/sellout-event.json"
            cur="$(jq -c '[.pending, .stock_left, .sold, ([.buckets[]?.stock_left] | add)]' "$run_dir/sellout-event.json")"
            if [[ "$cur" == "$prev" && "$(jq .pending "$run_dir/sellout-event.json")" == 0 ]]; then
                same=$((same + 1))
                ((same >= 2)) && break
            else
                same=0
            fi
            prev="$cur"
            sleep 1
        done
        if ((sellout_rc != 0)); then
            failures+=("M=$m: the sell-out sale's checks exited with $sellout_rc ($run_dir/sellout.log)")
            rc=1
        fi
    fi

    # --- one run's figures ------------------------------------------------------
    masters_json="$(for i in "${!ports[@]}"; do
        printf '{"port":%s,"pid":%s,"slots":[%s,%s]}\n' "${ports[$i]}" "${pids[$i]}" \
            $((i * 16384 / m)) $(((i + 1) * 16384 / m - 1))
    done | jq -s .)"
    # Which master serves each bucket's slot (from the admin view, when it has buckets).
    bucket_ports="$(jq -r '.buckets[]?.slot' "$run_dir/selling-event.json" | while read -r slot; do
        slot_port "$slot"
    done | jq -s .)"
    jq -n --argjson m "$m" --argjson n "$n" --argjson clk "$CLK_TCK" \
        --argjson bench_rc "$bench_rc" --argjson sellout_rc "$sellout_rc" \
        --argjson masters "$masters_json" --argjson bucket_ports "$bucket_ports" \
        --slurpfile bench "$run_dir/bench.json" \
        --slurpfile selling "$run_dir/selling-event.json" \
        --slurpfile sellout "$run_dir/sellout-event.json" \
        --slurpfile report <(cat "$run_dir/report-burst.json" 2>/dev/null || echo '{}') '
        $bench[0] as $b | ($b.phases[] | select(.name == "healthz")) as $h
        | ($b.phases[] | select(.name == "purchase_selling")) as $s
        | ($s.cpu.watched // []) as $w
        | ([$w[].ticks // 0] | add // 0) as $redis_ticks
        | def per_purchase(us_per_request): if us_per_request == null or $s.ok == 0 then null
              else us_per_request * $s.requests / $s.ok end;
          def us(ticks): ticks * 1e6 / $clk / $s.ok;
        {masters: $m, stock_buckets: $n, bench_exit_code: $bench_rc,
         healthz_rps: $h.rps, purchases_rps: $s.rps, ratio: ($s.rps / $h.rps),
         purchases_accepted: $s.ok, purchase_requests: $s.requests, phase_secs: $s.secs,
         p99_ms: $s.p99_ms, machine_busy_pct: $s.cpu.machine_busy_pct,
         cpu_us_per_purchase: {
           engine: per_purchase($s.cpu.engine_us_per_request),
           postgres: per_purchase($s.cpu.postgres_us_per_request),
           client: per_purchase($s.cpu.client_us_per_request),
           redis_masters: (if $s.ok > 0 then us($redis_ticks) else null end),
           other: per_purchase($s.cpu.other_us_per_request)},
         redis_masters: [range(0; $m) as $i | $masters[$i] + {
           ticks: $w[$i].ticks,
           us_per_purchase: (if $s.ok > 0 and $w[$i].ticks != null then us($w[$i].ticks) else null end),
           share: (if $redis_ticks > 0 then $w[$i].ticks / $redis_ticks else null end),
           buckets: [$selling[0].buckets // [] | to_entries[] | select($bucket_ports[.key] == $masters[$i].port) | .value.index]}],
         selling_buckets: ($selling[0].buckets // null),
         sellout: {
           exit_code: $sellout_rc, stock: ($sellout[0].stock_total // null),
           crowd: ($report[0].stats.requests // null),
           accepted: ($report[0].stats.outcomes.accepted // null),
           last_accept_secs: ($report[0].stats.last_accept_secs // null),
           sold_out_at_secs: ($report[0].stats.sold_out_at_secs // null),
           transfers: (if $sellout[0].buckets then [$sellout[0].buckets[].moved_in] | add else null end),
           sold: ($sellout[0].sold // null), pending: ($sellout[0].pending // null),
           failed: ($sellout[0].failed // null),
           stock_left: ($sellout[0].stock_left // null),
           unsold: (if $sellout[0].stock_total == null then null
                    else $sellout[0].stock_total - $sellout[0].sold end),
           buckets: ($sellout[0].buckets // null)}}' >"$run_dir/run.json"
    runs+=("$run_dir/run.json")
    unsold="$(jq -r '.sellout.unsold // "null"' "$run_dir/run.json")"
    left="$(jq -r '.sellout.stock_left // "null"' "$run_dir/run.json")"
    if [[ "$unsold" != 0 || "$left" != 0 ]]; then
        failures+=("M=$m: the sell-out left units unsold after the reconciler settled (stock_total - sold = $unsold, stock_left = $left)")
        rc=1
    fi
    engine_stop buckets
    stop_cluster
    drop_db
    delete_stream
done

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo true || echo false)"
if ((${#runs[@]})); then
    jq -s --arg at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg started "$(date -u -d "@$started" +%Y-%m-%dT%H:%M:%SZ)" --arg commit "$commit" --argjson dirty "$dirty" \
        --argjson has "${engine_has_buckets:-false}" --argjson clk "$CLK_TCK" \
        --argjson secs "$PHASE_SECS" --argjson conns "$CONNECTIONS" --argjson stock "$STOCK" \
        --argjson cpus "$(nproc)" \
        '{started_at: $started, finished_at: $at, commit: $commit, dirty: $dirty, engine_has_stock_buckets: $has,
          cpus: $cpus, clk_tck: $clk, phase_secs: $secs, connections: $conns, selling_stock: $stock,
          runs: .}' "${runs[@]}" >"$OUT_DIR/bench-buckets.json"
    echo
    print_table "$OUT_DIR/bench-buckets.json"
    say "wrote $OUT_DIR/bench-buckets.json (commit $commit$([[ $dirty == true ]] && echo ", uncommitted changes"))"
fi
say "total time: $(($(date +%s) - started))s"
if [[ "$engine_has_buckets" != true ]]; then
    say "NOTE: the engine had no stock buckets, so every event had ONE bucket: the bucket measurement was not run"
fi
if ((rc)); then
    printf -v why '%s; ' "${failures[@]}"
    say "FAIL: ${why%; }"
fi
exit "$rc"
