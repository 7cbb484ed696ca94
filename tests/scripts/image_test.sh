#!/usr/bin/env bash
# The container image, built and run for real: scripts/image.sh builds the base images (once) and
# outboxd's image from the Dockerfile, then the image runs with Podman against the project's
# PostgreSQL and Kafka (scripts/services.sh start):
#   - `outboxd migrate` from the image, with the image's own configuration (config/compose.toml,
#     the addresses from OUTBOXD_PG_CONNINFO and OUTBOXD_KAFKA_BOOTSTRAP), creates the schema;
#   - `outboxd run` from the image, with a mounted configuration file, answers /readyz on the
#     admin address that file names and delivers a published message (kcat reads it back);
#   - it runs as a user other than root (uid 65532, the image's USER);
#   - SIGTERM stops it cleanly: exit code 0 within a bound;
#   - the image's size is printed.
# Without Podman or the services it is skipped (exit 77), except under CI=true: it fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
export OUTBOXD_PG_PORT="${OUTBOXD_PG_PORT:-55432}" OUTBOXD_KAFKA_PORT="${OUTBOXD_KAFKA_PORT:-59092}"
KAFKA="127.0.0.1:$OUTBOXD_KAFKA_PORT"
PSQL=(psql -X -q -t -A -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$OUTBOXD_PG_PORT" -U postgres)
IMAGE_SH="$ROOT/scripts/image.sh"
STOP_BOUND=30 # seconds from SIGTERM to exit; relay.shutdown_timeout below is 5 s
ci() { [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; }
missing() {
  if ci; then
    echo "FAIL: $* (under CI a missing piece fails)" >&2
    exit 1
  fi
  echo "SKIP: $*" >&2
  exit 77
}
work=$(mktemp -d)
db="image_$$"
topic="image_test_$$"
ctr="outboxd-image-test-$$"
fail() {
  echo "FAIL: $*" >&2
  "$IMAGE_SH" podman logs "$ctr" 2>&1 | tail -n 30 >&2 || true
  exit 1
}
cleanup() {
  "$IMAGE_SH" podman rm --force --time 0 "$ctr" >/dev/null 2>&1 || true
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

command -v podman >/dev/null || missing "podman not installed (scripts/deps.sh image)"
"${PSQL[@]}" -d postgres -c 'SELECT 1' >/dev/null 2>&1 || missing "PostgreSQL on $OUTBOXD_PG_PORT"
kcat -b "$KAFKA" -L -m 5 >/dev/null 2>&1 || missing "Kafka on $KAFKA"

t0=$SECONDS
"$IMAGE_SH" build || fail "the image did not build"
image=$("$IMAGE_SH" name)
echo "ok: $image built (or reused) in $((SECONDS - t0)) s"

"${PSQL[@]}" -d postgres -c "CREATE DATABASE $db" >/dev/null
# The broker does not create topics on first use.
"$ROOT/scripts/kafka.sh" create-topic "$topic" 1 || fail "could not create topic $topic"

# 1. migrate, with the image's own configuration: only the two addresses from the environment.
conninfo="host=127.0.0.1 port=$OUTBOXD_PG_PORT dbname=$db user=postgres"
"$IMAGE_SH" podman run --rm -e OUTBOXD_PG_CONNINFO="$conninfo" -e OUTBOXD_KAFKA_BOOTSTRAP="$KAFKA" \
  "$image" migrate || fail "outboxd migrate from the image failed"
[[ $("${PSQL[@]}" -d "$db" -c "SELECT to_regprocedure('outbox.publish(text,text,text,jsonb)') IS NOT NULL") == t ]] ||
  fail "after migrate from the image, $db has no outbox.publish(text,text,text,jsonb)"
echo "ok: outboxd migrate from the image created the schema in $db"

# 2. run, with a configuration mounted over the image's: a free admin port (the host network is
# shared with other services).
admin_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/outboxd.toml" <<TOML
[postgres]
conninfo = "$conninfo"
[kafka]
bootstrap_servers = "$KAFKA"
[relay]
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:$admin_port"
TOML
chmod 644 "$work/outboxd.toml"
"$IMAGE_SH" podman run --detach --name "$ctr" -v "$work/outboxd.toml:/etc/outboxd/outboxd.toml:ro" \
  "$image" >/dev/null || fail "podman run $image failed"

ready=""
for _ in $(seq 1 150); do # up to 30 s
  ready=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/readyz" || true)
  [[ "$ready" == 200 ]] && break
  [[ $("$IMAGE_SH" podman inspect --format '{{.State.Running}}' "$ctr") == true ]] ||
    fail "the container exited before /readyz answered"
  sleep 0.2
done
[[ "$ready" == 200 ]] || fail "/readyz on 127.0.0.1:$admin_port (the configured [admin] listen) answered '$ready', not 200"
echo "ok: /readyz answers 200 on 127.0.0.1:$admin_port, the address the configuration names"

# 3. The process in the container runs as the image's user, not root (same uids on the host: no
# user namespace).
pid=$("$IMAGE_SH" podman inspect --format '{{.State.Pid}}' "$ctr")
[[ "$pid" =~ ^[1-9][0-9]*$ ]] || fail "no host pid for the container ($pid)"
[[ $(tr '\0' ' ' <"/proc/$pid/cmdline") == "/usr/local/bin/outboxd run "* ]] ||
  fail "pid $pid is not outboxd: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
read -r _ ruid euid _ <<<"$(grep '^Uid:' "/proc/$pid/status")"
((ruid != 0 && euid != 0)) || fail "outboxd in the container runs as uid $ruid/$euid (root)"
((ruid == 65532 && euid == 65532)) || fail "outboxd runs as uid $ruid/$euid, not the image's 65532"
echo "ok: outboxd in the container runs as uid $euid, not root"

# 4. A published message arrives in Kafka.
"${PSQL[@]}" -d "$db" -c "SELECT outbox.publish('$topic', 'image-key', 'from the image')" >/dev/null
got=""
for _ in $(seq 1 30); do
  got=$(kcat -C -b "$KAFKA" -t "$topic" -o beginning -c 1 -e -q -f '%k=%s\n' 2>/dev/null || true)
  [[ -n "$got" ]] && break
  sleep 1
done
[[ "$got" == "image-key=from the image" ]] || fail "kcat read '$got' from $topic, expected 'image-key=from the image'"
echo "ok: the message was delivered to $topic (kcat read '$got')"

# 5. SIGTERM: a clean stop, exit code 0, within the bound.
t0=$SECONDS
"$IMAGE_SH" podman kill --signal TERM "$ctr" >/dev/null || fail "podman kill --signal TERM failed"
rc=$(timeout "$STOP_BOUND" "$IMAGE_SH" podman wait "$ctr") || fail "outboxd still running $STOP_BOUND s after SIGTERM"
((rc == 0)) || fail "outboxd exited with $rc after SIGTERM, not 0"
echo "ok: SIGTERM stopped outboxd in $((SECONDS - t0)) s with exit code 0"

size=$("$IMAGE_SH" podman image inspect --format '{{.Size}}' "$image")
echo "ok: image $image: $((size / 1000000)) MB ($size bytes)"
