#!/usr/bin/env bash
# Ensure a throwaway PostgreSQL server listens on loopback for the test suite.
#
# Usage (as root):   eval "$(bash .ci/postgres.sh)"
#
# Installs PostgreSQL with apt if no initdb/pg_ctl can be found, initialises a
# cluster owned by the `postgres` user in $DELIBERATE_PGDATA (default
# /tmp/deliberate-pg-$PGPORT), listening only on 127.0.0.1:$PGPORT (default
# 55432) with trust auth on loopback, starts it, creates the role and database
# `deliberate_test`, and prints the one line to stdout:
#
#   export DELIBERATE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:55432/deliberate_test
#
# Everything else goes to stderr. Idempotent: a server already answering on the
# port is reused, an existing cluster directory is started rather than re-created.
# The cluster runs with fsync off: it holds test data only.
set -euo pipefail

PGPORT="${PGPORT:-55432}"
PGDATA_DIR="${DELIBERATE_PGDATA:-/tmp/deliberate-pg-${PGPORT}}"
DB=deliberate_test

log() { echo "postgres.sh: $*" >&2; }

# Directory holding initdb and pg_ctl: PATH first, then the Debian layout (newest version).
find_bindir() {
    local initdb
    if initdb="$(command -v initdb 2>/dev/null)" && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$initdb")"
        return 0
    fi
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
        echo "$dir"
        return 0
    fi
    return 1
}

# Run a command as the postgres user from a directory it can read.
as_postgres() {
    if command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
    fi
}

if ! BINDIR="$(find_bindir)"; then
    log "PostgreSQL not found; installing it with apt-get"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
    BINDIR="$(find_bindir)" || { log "PostgreSQL still not found after install"; exit 1; }
fi
log "using PostgreSQL binaries in $BINDIR"

if ! id postgres >/dev/null 2>&1; then
    log "creating system user postgres"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres >&2
fi

ready() { "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PGPORT"; }

if ready; then
    log "a server already answers on 127.0.0.1:$PGPORT; reusing it"
else
    if [[ ! -s "$PGDATA_DIR/PG_VERSION" ]]; then
        log "initialising a cluster in $PGDATA_DIR"
        mkdir -p "$PGDATA_DIR"
        chown postgres: "$PGDATA_DIR"
        chmod 700 "$PGDATA_DIR"
        as_postgres "$BINDIR/initdb" -D "$PGDATA_DIR" -U postgres -E UTF8 \
            --auth-local=trust --auth-host=trust --no-sync >&2
        cat >>"$PGDATA_DIR/postgresql.conf" <<EOF

# written by .ci/postgres.sh: loopback only, throwaway test data
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGDATA_DIR'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    fi
    log "starting the server on 127.0.0.1:$PGPORT"
    as_postgres "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w -t 60 start >&2
    ready || { log "server did not come up; see $PGDATA_DIR/server.log"; exit 1; }
fi

psql_admin() { "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres "$@"; }

psql_admin >&2 <<EOF
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB') THEN
    CREATE ROLE $DB LOGIN CREATEDB;
  END IF;
END \$\$;
EOF
if [[ "$(psql_admin -tA -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]]; then
    log "creating database $DB"
    psql_admin -c "CREATE DATABASE $DB OWNER $DB" >&2
fi

echo "export DELIBERATE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:${PGPORT}/${DB}"
