#!/usr/bin/env bash
# compose.yaml and Dockerfile, checked without a container engine: `docker-compose config`
# (Debian's docker-compose) must accept compose.yaml, and the resolved file must keep its fixes.
# Nothing here builds or runs an image: tests/scripts/image_test.sh (`make image`) does.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v docker-compose >/dev/null || fail "docker-compose not installed (scripts/deps.sh installs it)"
cd "$ROOT"
resolved=$(docker-compose -f compose.yaml config) || fail "docker-compose config refused compose.yaml"
echo "$resolved"
# (docker-compose writes a list one item a line: joined here)
tr '\n' ' ' <<<"$resolved" | grep -q 'pg_isready *- -h *- 127.0.0.1' ||
  fail "the PostgreSQL healthcheck is not over TCP"
kafka=$(sed -n 's/.*<kafka.version>\(.*\)<\/kafka.version>.*/\1/p' scripts/kafka/pom.xml)
grep -q "image: docker.io/apache/kafka:$kafka\$" <<<"$resolved" || fail "the Kafka image is not $kafka (scripts/kafka/pom.xml)"
grep -q '127.0.0.1:55432:5432\|published: 55432' <<<"$resolved" || fail "PostgreSQL has no host port"
grep -q '127.0.0.1:59092:59092\|published: 59092' <<<"$resolved" || fail "Kafka has no host port"
for v in pgdata kafkadata; do
  grep -q "$v:" <<<"$resolved" || fail "no data volume $v"
done
# The image's configuration must work in a container: addresses from the environment, which
# compose.yaml sets.
grep -q '^COPY config/compose.toml /etc/outboxd/outboxd.toml$' Dockerfile || fail "the image bakes another config"
for v in OUTBOXD_PG_CONNINFO OUTBOXD_KAFKA_BOOTSTRAP; do
  grep -q "\${$v}" config/compose.toml || fail "config/compose.toml does not read $v"
  grep -q "$v:" <<<"$resolved" || fail "compose.yaml does not set $v"
done
for d in .cache build .git; do
  grep -qx "$d" .dockerignore || fail ".dockerignore does not exclude $d"
done
# Every COPY source of the build stage exists.
while read -r src; do
  [[ -e "$src" ]] || fail "Dockerfile copies $src, which does not exist"
done < <(awk '/^COPY / && !/--from/ {print $2}' Dockerfile)
echo "ok: compose.yaml accepted by $(docker-compose version --short 2>/dev/null || echo docker-compose); Dockerfile and .dockerignore checked (no image built here)"
