#!/usr/bin/env bash
# Make sure Redis (127.0.0.1:6379), Postgres (127.0.0.1:5432) and NATS with
# JetStream (127.0.0.1:4222, the outbox relay's broker) answer, and that the
# database named in SECKILL_DATABASE_URL exists.
#
# Idempotent: services that already answer are left alone. A service that is
# down is started the way this machine runs it (the Debian packages) when
# those are installed, otherwise from project-local data under .local/
# (gitignored). Prints one line per service saying what it did.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
LOCAL="$ROOT/.local"

REDIS_HOST=127.0.0.1
REDIS_PORT=6379
PG_HOST=127.0.0.1
PG_PORT=5432
NATS_HOST=127.0.0.1
NATS_PORT=4222
WAIT_SECS=30
DATABASE_URL="${SECKILL_DATABASE_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/seckill}}"

die() {
    echo "services: $*" >&2
    exit 1
}

redis_up() {
    [[ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]
}

pg_up() {
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1
}

# Runs a command as the postgres OS user when we are root (initdb and the
# server refuse to run as root), else as ourselves.
as_pg_user() {
    if [[ "$(id -u)" -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root and there is no 'postgres' user to run a local Postgres"
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_redis() {
    command -v redis-server >/dev/null 2>&1 || die "redis is down and redis-server is not installed"
    if [[ -d /var/lib/redis && -d /var/log/redis && -w /var/lib/redis && -w /var/log/redis ]]; then
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
        echo "redis: was down, started the Debian redis-server on $REDIS_HOST:$REDIS_PORT"
    else
        mkdir -p "$LOCAL/redis"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
            --dir "$LOCAL/redis" --logfile "$LOCAL/redis/redis.log"
        echo "redis: was down, started a project-local redis-server (data in .local/redis)"
    fi
}

start_postgres() {
    local version
    if command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]] \
        && version="$(ls /etc/postgresql)" && [[ -n "$version" && -d "/etc/postgresql/$version/main" ]]; then
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        echo "postgres: was down, started the Debian cluster $version/main"
        return
    fi

    local bindir
    bindir="$(find /usr/lib/postgresql -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
        die "postgres is down and no initdb was found under /usr/lib/postgresql/*/bin"
    fi

    local data="$LOCAL/pg"
    local sock="$LOCAL/pg-run"
    mkdir -p "$data" "$sock"
    if [[ "$(id -u)" -eq 0 ]]; then
        chown postgres "$data" "$sock"
    fi
    local what="started"
    if [[ ! -f "$data/PG_VERSION" ]]; then
        as_pg_user "$bindir/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 >/dev/null
        what="initialised and started"
    fi
    as_pg_user "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t "$WAIT_SECS" \
        -o "-p $PG_PORT -c listen_addresses=$PG_HOST -k $sock" start >/dev/null
    echo "postgres: was down, $what a project-local cluster (data in .local/pg)"
}

# The server's INFO line, which says whether JetStream is on.
nats_info() {
    local info
    info="$(timeout 2 bash -c "exec 3<>/dev/tcp/$NATS_HOST/$NATS_PORT && IFS= read -r line <&3 && printf '%s' \"\$line\"" 2>/dev/null)" || return 1
    [[ "$info" == INFO* ]] && printf '%s' "$info"
}

nats_up() {
    nats_info >/dev/null
}

start_nats() {
    if ! command -v nats-server >/dev/null 2>&1; then
        if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "nats: nats-server not installed; installing the Debian package"
            (apt-get install -y -q nats-server >/dev/null 2>&1 \
                || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nats-server >/dev/null 2>&1; }) \
                || die "nats is down and installing nats-server failed"
        else
            die "nats is down and nats-server is not installed (apt-get install nats-server)"
        fi
    fi
    mkdir -p "$LOCAL/nats"
    setsid nohup nats-server -a "$NATS_HOST" -p "$NATS_PORT" -js -sd "$LOCAL/nats" \
        -l "$LOCAL/nats/nats.log" </dev/null >/dev/null 2>&1 &
    echo "nats: was down, started a project-local nats-server with JetStream (data in .local/nats)"
}

wait_for() {
    local name="$1" check="$2" waited=0
    until "$check"; do
        if ((waited >= WAIT_SECS * 2)); then
            die "$name did not answer within ${WAIT_SECS}s"
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
}

# --- Redis -----------------------------------------------------------------
if redis_up; then
    echo "redis: already answering on $REDIS_HOST:$REDIS_PORT"
else
    start_redis
fi

# --- Postgres --------------------------------------------------------------
if pg_up; then
    echo "postgres: already answering on $PG_HOST:$PG_PORT"
else
    start_postgres
fi

# --- NATS (JetStream) ---------------------------------------------------------
if nats_up; then
    echo "nats: already answering on $NATS_HOST:$NATS_PORT"
else
    start_nats
fi

wait_for "redis at $REDIS_HOST:$REDIS_PORT" redis_up
wait_for "postgres at $PG_HOST:$PG_PORT" pg_up
wait_for "nats at $NATS_HOST:$NATS_PORT" nats_up
if [[ "$(nats_info)" != *'"jetstream":true'* ]]; then
    die "the NATS server on $NATS_HOST:$NATS_PORT runs without JetStream (start it with -js)"
fi

# --- Database ----------------------------------------------------------------
# The database name is the URL's path, without any ?query.
db="${DATABASE_URL%%\?*}"
db="${db##*/}"
if [[ ! "$db" =~ ^[A-Za-z0-9_-]+$ ]]; then
    die "cannot take a database name from SECKILL_DATABASE_URL (got '$db')"
fi
# psql interpolates :'dbname' only in scripts read from stdin, not in -c.
exists="$(psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAq \
    -v ON_ERROR_STOP=1 -v dbname="$db" 2>&1 <<<"SELECT 1 FROM pg_database WHERE datname = :'dbname';")" \
    || die "cannot query postgres as user postgres: $exists"
if [[ "$exists" == "1" ]]; then
    echo "database: '$db' exists"
else
    createdb -h "$PG_HOST" -p "$PG_PORT" -U postgres "$db" || die "createdb '$db' failed"
    echo "database: created '$db'"
fi
