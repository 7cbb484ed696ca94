#!/usr/bin/env bash
# Project-owned PostgreSQL 15 dev/test cluster (never the system one on 5432).
#   scripts/pg.sh start|stop|restart|crash|status|env|psql [psql args...]
# crash: stop with -m immediate (no checkpoint, like a crash), then start (crash recovery).
# Port: ${OUTBOXD_PG_PORT:-55432}, 127.0.0.1 only, database "outboxd".
# Authentication (pg_hba.conf, rewritten on every start): trust for the superuser and the tests'
# own roles; over TLS only, role outboxd_scram (and every member of outboxd_scram_users) with a
# scram-sha-256 password (random, in .cache/pg-auth/scram-password) and role outboxd_cert with a
# client certificate of scripts/certs.sh (pg-client.pem, CN=outboxd_cert). `env` prints them.
# status exits 0 when running, 3 when stopped.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_PORT="${OUTBOXD_PG_PORT:-55432}"
PG_BIN="${OUTBOXD_PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_DB=outboxd
PG_SUPERUSER=postgres # database role; trust auth, no password

usage() {
  echo "usage: $0 start|stop|restart|crash|status|env|psql [psql args...]" >&2
  exit 2
}

# Where the cluster lives. Preferred: $CACHE/pg. As root the server must run as
# the `postgres` OS user (initdb/postgres refuse root), and that user has to be
# able to traverse every directory down to the data dir. If the repo sits
# somewhere it can't (e.g. /root is 0700), we use /var/tmp/outboxd-pg-<hash of
# ROOT> instead of chmod'ing the user's directories: loosening /root for
# everyone is a side effect a dev script should not have. The same fallback
# is used when the path would make the unix socket path exceed the 107-byte
# limit. `pg.sh status` prints the chosen data dir.
choose_base() {
  local inside="$CACHE/pg" hash
  hash=$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)
  PG_BASE="$inside"
  if ((EUID == 0)) && ! runuser -u postgres -- test -x "$ROOT" 2>/dev/null; then
    PG_BASE="/var/tmp/outboxd-pg-$hash"
  elif ((${#inside} + ${#PG_PORT} + 14 > 107)); then # <inside>/run/.s.PGSQL.<port>
    PG_BASE="/var/tmp/outboxd-pg-$hash"
  fi
  PG_DATA="$PG_BASE/data"
  PG_RUN="$PG_BASE/run" # unix socket dir
  PG_LOG="$PG_BASE/postgresql.log"
  PG_MARKER="$PG_BASE/.initialized" # written after a complete initdb
}

# Run a server binary as the cluster owner: `postgres` when we are root,
# ourselves otherwise. cd / so an untraversable cwd does not bother it.
as_owner() {
  if ((EUID == 0)); then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

check_bins() {
  local b
  for b in initdb pg_ctl postgres pg_isready psql; do
    [[ -x "$PG_BIN/$b" ]] || die "PostgreSQL 15 binary $PG_BIN/$b is missing (package postgresql-15; run scripts/deps.sh)"
  done
  if ((EUID == 0)); then
    id postgres >/dev/null 2>&1 || die "OS user 'postgres' is missing (it comes with package postgresql-15; run scripts/deps.sh)"
    command -v runuser >/dev/null 2>&1 || die "'runuser' is missing (package util-linux)"
  fi
}

# Pid of our running postmaster, or failure. Checks that the pid from
# postmaster.pid is a postgres process whose cwd is our data dir, so a pid
# reused after a crash is not mistaken for the server.
pg_pid() {
  local pid cwd
  [[ -r "$PG_DATA/postmaster.pid" ]] || return 1
  pid=$(head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null) || return 1
  pid_alive "$pid" postgres || return 1
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
  [[ "$cwd" == "$(readlink -f "$PG_DATA")" ]] || return 1
  printf '%s' "$pid"
}

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres -U "$PG_SUPERUSER"; }

# Leftovers of a crashed/killed server: pid file and socket lock files.
clean_stale() {
  if [[ -e "$PG_DATA/postmaster.pid" ]]; then
    log "removing stale $PG_DATA/postmaster.pid"
    rm -f "$PG_DATA/postmaster.pid"
  fi
  rm -f "$PG_RUN"/.s.PGSQL.*
}

psql_admin() {
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER" "$@"
}

init_cluster() {
  local owner=postgres
  ((EUID == 0)) || owner=$(id -un)
  if [[ -d "$PG_DATA" && ! -e "$PG_MARKER" ]]; then
    log "removing incomplete data dir $PG_DATA (previous initdb did not finish)"
    rm -rf "$PG_DATA"
  fi
  [[ -d "$PG_DATA" ]] && return 0
  log "initdb $PG_DATA (owner $owner)"
  mkdir -p "$PG_BASE"
  # Dev/test cluster only: trust auth for local socket and 127.0.0.1/::1 (TCP
  # is bound to 127.0.0.1 below). Never use these settings in production.
  as_owner "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_SUPERUSER" --auth=trust \
    --encoding=UTF8 --locale=C.UTF-8 >"$PG_BASE/initdb.log" 2>&1 ||
    {
      tail -n 20 "$PG_BASE/initdb.log" >&2
      die "initdb failed (full log: $PG_BASE/initdb.log)"
    }
  # Our settings live in outboxd.conf, rewritten on every start.
  printf "\n# outboxd dev settings (scripts/pg.sh)\ninclude_if_exists = 'outboxd.conf'\n" >>"$PG_DATA/postgresql.conf"
  touch "$PG_MARKER"
}

write_conf() {
  [[ "$PG_RUN" != *"'"* ]] || die "path $PG_RUN contains a quote; move the repo"
  cat >"$PG_DATA/outboxd.conf" <<EOF
# Generated by scripts/pg.sh on every start: edit the script, not this file.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_RUN'
wal_level = logical
max_wal_senders = 4
max_replication_slots = 4
max_connections = 200
shared_buffers = 256MB
EOF
  write_ssl_conf
  write_hba
  ((EUID != 0)) || chown postgres:postgres "$PG_DATA/outboxd.conf" "$PG_DATA/pg_hba.conf"
}

# First match wins. The password and certificate roles get TLS-only lines before the trust ones,
# and a reject line for plain TCP: they never authenticate without TLS.
write_hba() {
  cat >"$PG_DATA/pg_hba.conf" <<EOF
# Generated by scripts/pg.sh on every start: edit the script, not this file.
# TYPE   DATABASE     USER                              ADDRESS       METHOD
hostssl  all          +outboxd_scram_users              127.0.0.1/32  scram-sha-256
hostssl  all          outboxd_cert                      127.0.0.1/32  cert
host     all          +outboxd_scram_users,outboxd_cert 127.0.0.1/32  reject
local    all          all                                             trust
host     all          all                               127.0.0.1/32  trust
host     all          all                               ::1/128       trust
local    replication  all                                             trust
host     replication  all                               127.0.0.1/32  trust
host     replication  all                               ::1/128       trust
EOF
}

SCRAM_PASSWORD_FILE="$CACHE/pg-auth/scram-password"

# The roles of the TLS-only lines. The password is made once and set again on every start, so
# the file is the truth. Grants on a database's outbox schema are the tests' business.
ensure_auth_roles() {
  if [[ ! -s "$SCRAM_PASSWORD_FILE" ]]; then
    (umask 077 && mkdir -p "$(dirname "$SCRAM_PASSWORD_FILE")" &&
      echo "p$(openssl rand -hex 12)" >"$SCRAM_PASSWORD_FILE")
  fi
  local pw
  pw=$(<"$SCRAM_PASSWORD_FILE")
  # the password goes in as a psql variable, not on the command line of a server process
  psql_admin -d postgres -v pw="$pw" >/dev/null <<'SQL'
SET password_encryption = 'scram-sha-256';
SELECT 'CREATE ROLE outboxd_scram_users NOLOGIN'
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outboxd_scram_users') \gexec
SELECT 'CREATE ROLE outboxd_scram LOGIN IN ROLE outboxd_scram_users'
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outboxd_scram') \gexec
SELECT 'CREATE ROLE outboxd_cert LOGIN'
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outboxd_cert') \gexec
ALTER ROLE outboxd_scram PASSWORD :'pw';
SQL
}

# TLS next to plain TCP (pg_hba.conf's `host` lines take both): the server
# certificate of scripts/certs.sh (SAN IP:127.0.0.1, DNS:localhost), copied into
# the data dir on every start because the server wants its key private to it.
# Clients that want TLS ask for it: sslmode=verify-full sslrootcert=.cache/certs/ca.pem
write_ssl_conf() {
  local certs
  "$ROOT/scripts/certs.sh" ensure
  certs=$("$ROOT/scripts/certs.sh" dir)
  install -m 0644 "$certs/server.pem" "$PG_DATA/outboxd-server.crt"
  install -m 0600 "$certs/server.key" "$PG_DATA/outboxd-server.key"
  install -m 0644 "$certs/ca.pem" "$PG_DATA/outboxd-ca.crt"
  ((EUID != 0)) || chown postgres:postgres "$PG_DATA/outboxd-server.crt" "$PG_DATA/outboxd-server.key" "$PG_DATA/outboxd-ca.crt"
  cat >>"$PG_DATA/outboxd.conf" <<EOF
ssl = on
ssl_cert_file = 'outboxd-server.crt'
ssl_key_file = 'outboxd-server.key'
# client certificates (the cert line of pg_hba.conf) must chain to this CA
ssl_ca_file = 'outboxd-ca.crt'
EOF
}

ensure_db() {
  local have
  have=$(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")
  if [[ "$have" != 1 ]]; then
    log "creating database $PG_DB"
    psql_admin -d postgres -c "CREATE DATABASE $PG_DB OWNER $PG_SUPERUSER" ||
      [[ "$(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" == 1 ]] ||
      die "could not create database $PG_DB"
  fi
}

cmd_start() {
  check_bins
  local pid
  if pid=$(pg_pid); then
    wait_until 60 pg_ready || die "postgres (pid $pid) runs but is not ready on 127.0.0.1:$PG_PORT; see $PG_LOG"
    # started by an older pg.sh? Its authentication and TLS files are current after a reload.
    write_conf
    as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" reload >/dev/null || die "pg_ctl reload failed (log: $PG_LOG)"
    ensure_db
    ensure_auth_roles
    log "already running (pid $pid, port $PG_PORT)"
    return 0
  fi
  clean_stale
  if port_in_use "$PG_PORT"; then
    die_port_busy "$PG_PORT" "PostgreSQL, OUTBOXD_PG_PORT"
  fi
  if ((EUID == 0)); then
    install -d -o postgres -g postgres -m 0755 "$PG_BASE" "$PG_RUN"
  else
    mkdir -p "$PG_BASE" "$PG_RUN"
  fi
  init_cluster
  write_conf
  log "starting on 127.0.0.1:$PG_PORT (data $PG_DATA)"
  # pg_ctl -w returns as soon as the postmaster reports ready or exits early
  # (it knows the child pid, so a crash on startup fails fast); then confirm
  # over TCP with pg_isready, which is what clients will use.
  if ! as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start >/dev/null ||
    ! wait_until 30 pg_ready; then
    tail -n 30 "$PG_LOG" >&2 || true
    die "postgres did not become ready on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
  fi
  ensure_db
  ensure_auth_roles
  log "ready (pid $(pg_pid || echo '?'))"
}

# $1: pg_ctl's shutdown mode; "immediate" ends every server process at once, without a checkpoint,
# as a crash does: the next start runs crash recovery from the WAL.
cmd_stop() {
  local mode="${1:-fast}"
  check_bins
  local pid
  if ! pid=$(pg_pid); then
    [[ -d "$PG_DATA" ]] && clean_stale
    log "not running"
    return 0
  fi
  log "stopping (pid $pid, mode $mode)"
  as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -m "$mode" -w -t 60 stop >/dev/null ||
    die "pg_ctl stop failed (log: $PG_LOG)"
  log "stopped"
}

cmd_status() {
  local pid
  if pid=$(pg_pid); then
    if pg_ready; then
      echo "postgres: running, ready (pid $pid, 127.0.0.1:$PG_PORT, data $PG_DATA)"
    else
      echo "postgres: running, NOT ready (pid $pid, 127.0.0.1:$PG_PORT, data $PG_DATA)"
    fi
    return 0
  fi
  echo "postgres: stopped (127.0.0.1:$PG_PORT, data $PG_DATA)"
  return 3
}

cmd_env() {
  echo "export OUTBOXD_PG_CONNINFO=\"host=127.0.0.1 port=$PG_PORT dbname=$PG_DB user=$PG_SUPERUSER\""
  echo "export OUTBOXD_PG_SCRAM_USER=outboxd_scram"
  echo "export OUTBOXD_PG_SCRAM_PASSWORD_FILE=$SCRAM_PASSWORD_FILE"
  echo "export OUTBOXD_PG_CERT_USER=outboxd_cert"
}

choose_base
case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop && cmd_start ;;
  crash) cmd_stop immediate && cmd_start ;;
  status) cmd_status ;;
  env) cmd_env ;;
  psql)
    shift
    exec "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER" -d "$PG_DB" "$@"
    ;;
  *) usage ;;
esac
