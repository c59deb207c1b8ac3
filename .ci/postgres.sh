#!/usr/bin/env bash
# A throwaway PostgreSQL for meshgate's PostgreSQL tests, on 127.0.0.1 only.
#
#   bash .ci/postgres.sh          start one (or reuse the running one), write .ci/pg.env
#   bash .ci/postgres.sh stop     stop it (by its postmaster PID) and delete its files
#
# .ci/pg.env then holds (shell and make syntax):
#   MESHGATE_TEST_PG=postgresql+psycopg://meshgate:<password>@127.0.0.1:<port>/meshgate
#   MESHGATE_TEST_PG_PID=<postmaster pid>
#   MESHGATE_TEST_PG_DIR=<temp dir holding the cluster, its socket and log>
#
# Installs Debian's postgresql when no server binaries are found. The cluster
# trades durability for speed (fsync off): it only ever holds test data.
# Exits non-zero, leaving no .ci/pg.env, when PostgreSQL cannot be started.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
ENV_FILE=.ci/pg.env

log() { echo "postgres.sh: $*" >&2; }

env_value() {  # env_value NAME: the value of NAME in .ci/pg.env
    sed -n "s/^$1=//p" "$ENV_FILE" 2>/dev/null | head -n1
}

find_bin() {  # the newest PostgreSQL server bin directory with initdb + postgres + pg_ctl
    local d best=""
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && [ -x "$d/pg_ctl" ]; then best="$d"; fi
    done
    if [ -z "$best" ] && command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        best="$(dirname "$(readlink -f "$(command -v initdb)")")"
    fi
    echo "$best"
}

as_owner() {  # run a command as the cluster owner (postgres when we are root)
    if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

stop() {
    local pid dir
    pid="$(env_value MESHGATE_TEST_PG_PID)"
    dir="$(env_value MESHGATE_TEST_PG_DIR)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -INT "$pid"  # "fast" shutdown of the postmaster
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" || true; fi
    fi
    case "$dir" in /tmp/meshgate-pg.*) rm -rf "$dir" ;; esac
    rm -f "$ENV_FILE"
}

running() {  # the server named in .ci/pg.env still answers
    local pid dir port bin
    pid="$(env_value MESHGATE_TEST_PG_PID)"
    dir="$(env_value MESHGATE_TEST_PG_DIR)"
    port="$(env_value MESHGATE_TEST_PG_PORT)"
    [ -n "$pid" ] && [ -n "$dir" ] && [ -d "$dir/data" ] && kill -0 "$pid" 2>/dev/null || return 1
    bin="$(find_bin)"
    [ -n "$bin" ] && "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 3
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    if [ -f "$ENV_FILE" ]; then
        if running; then log "reusing the server on port $(env_value MESHGATE_TEST_PG_PORT)"; return 0; fi
        stop  # stale: its server is gone
    fi
    local bin
    bin="$(find_bin)"
    if [ -z "$bin" ]; then
        log "installing Debian's postgresql"
        if [ "$(id -u)" != 0 ]; then log "not root: cannot apt-get install postgresql"; return 1; fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        bin="$(find_bin)"
        [ -n "$bin" ] || { log "postgresql installed but no initdb/pg_ctl found"; return 1; }
    fi
    if [ "$(id -u)" = 0 ] && ! id -u postgres >/dev/null 2>&1; then
        useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
    fi

    local dir port password pid
    dir="$(mktemp -d /tmp/meshgate-pg.XXXXXX)"
    port="$(free_port)"
    password="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    chmod 0755 "$dir"
    mkdir -p "$dir/data" "$dir/run"
    [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
    # Any failure from here on removes the half-made cluster.
    trap 'as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"' ERR

    # The superuser (postgres) connects only through the socket in $dir/run;
    # TCP on 127.0.0.1 needs a password (the meshgate role's).
    as_owner "$bin/initdb" -D "$dir/data" -U postgres -E UTF8 --no-locale \
        --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 \
        || { log "initdb failed:"; cat "$dir/initdb.log" >&2; false; }
    cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/run'
max_connections = 300
shared_buffers = 32MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null \
        || { log "the server did not start:"; tail -n 20 "$dir/server.log" >&2; false; }
    pid="$(head -n1 "$dir/data/postmaster.pid")"
    # CREATEDB: the tests make a fresh database per test and drop it after.
    as_owner "$bin/psql" -h "$dir/run" -p "$port" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE meshgate LOGIN CREATEDB PASSWORD '$password'" \
        -c "CREATE DATABASE meshgate OWNER meshgate" >/dev/null
    PGPASSWORD="$password" "$bin/psql" -h 127.0.0.1 -p "$port" -U meshgate -d meshgate -qAt \
        -c "SELECT 1" >/dev/null || { log "cannot log in over TCP as meshgate"; false; }
    trap - ERR

    cat >"$ENV_FILE.tmp" <<EOF
MESHGATE_TEST_PG=postgresql+psycopg://meshgate:$password@127.0.0.1:$port/meshgate
MESHGATE_TEST_PG_PID=$pid
MESHGATE_TEST_PG_PORT=$port
MESHGATE_TEST_PG_DIR=$dir
EOF
    mv "$ENV_FILE.tmp" "$ENV_FILE"
    log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (pid $pid, $dir); settings in $ENV_FILE"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
