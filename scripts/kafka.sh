#!/usr/bin/env bash
# Real Apache Kafka (KRaft, combined broker+controller) for dev/tests, run from
# jars fetched with Maven (scripts/kafka/pom.xml) into .cache/kafka/lib.
#   scripts/kafka.sh start|stop|restart|status|env [single|cluster]  (default single)
#   scripts/kafka.sh kill <1|2|3>          SIGKILL one cluster node
#   scripts/kafka.sh restart-node <1|2|3>  (re)start one cluster node, no reformat; waits while it
#                                         rejoins (OUTBOXD_KAFKA_REJOIN_TIMEOUT, _REJOIN_STALL)
#   scripts/kafka.sh acl add PRINCIPAL (TYPE NAME OPERATION)...   ACLs of the secure broker
#   scripts/kafka.sh acl delete PRINCIPAL                          (scripts/kafka/AclTool.java)
# single : broker 127.0.0.1:${OUTBOXD_KAFKA_PORT:-59092}, controller port+1
# cluster: brokers 127.0.0.1:19092/29092/39092, controllers 19093/29093/39093
#          (OUTBOXD_CLUSTER_PORT=P moves them to P, P+10000, P+20000; controllers +1),
#          RF 3, min.insync.replicas=2. Data dirs are separate per mode, so
#          single and cluster can run at the same time.
# secure : one broker, OUTBOXD_SECURE_KAFKA_PORT=P (default 59094): P PLAINTEXT
#          (inter-broker, readiness, test witnesses), P+1 controller, P+2
#          SASL_SSL (user 'outboxd' with a random password in
#          .cache/kafka/secure/scram-password: SCRAM-SHA-512, created at format
#          time, and PLAIN, since librdkafka < 2.6.1 fails SCRAM against Kafka
#          4.x), P+3 SSL that
#          requires a client certificate. Certificates: scripts/certs.sh.
#          ACLs: KRaft's StandardAuthorizer, nothing allowed without an ACL;
#          User:ANONYMOUS (the PLAINTEXT and controller listeners: this script,
#          test witnesses) is the super user. User:outboxd (SASL) and
#          User:CN=outboxd (mTLS) get ALL on every topic and transactional id at
#          start. A second PLAIN user 'outboxd_acl' (same password) gets only
#          Write on transactional ids starting with acl_txn_ (librdkafka 2.0.2's
#          admin API cannot name those); tests grant the rest. The SSL
#          listener's keystore may be replaced at run time (AlterConfigs of
#          listener.name.ssl.ssl.keystore.location), even for another name.
#          'env secure' prints the addresses and file names.
# status exits 0 when every node of the mode runs, 3 otherwise.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KDIR="$CACHE/kafka"
LIB="$KDIR/lib"
POM="$ROOT/scripts/kafka/pom.xml"
LOG4J_CONF="$ROOT/scripts/kafka/log4j2.xml"
READY_TIMEOUT="${OUTBOXD_KAFKA_READY_TIMEOUT:-120}" # seconds until brokers show in metadata
STOP_TIMEOUT=60   # seconds between SIGTERM and SIGKILL

usage() {
  cat >&2 <<EOF
usage: $0 start|stop|restart|status|env [single|cluster|secure]
       $0 kill|restart-node <1|2|3>     (cluster mode)
       $0 acl add PRINCIPAL (TYPE NAME OPERATION)... | acl delete PRINCIPAL   (secure mode)
EOF
  exit 2
}

# --- mode layout -------------------------------------------------------------
set_mode() {
  MODE=$1
  case "$MODE" in
    single)
      local p="${OUTBOXD_KAFKA_PORT:-59092}"
      [[ "$p" =~ ^[0-9]+$ ]] || die "OUTBOXD_KAFKA_PORT must be a number, got '$p'"
      NODES=(1)
      BROKER_PORT=([1]="$p")
      CTRL_PORT=([1]="$((p + 1))")
      HEAP=512m
      RF=1 MIN_ISR=1
      ;;
    cluster)
      local c="${OUTBOXD_CLUSTER_PORT:-19092}"
      [[ "$c" =~ ^[0-9]+$ ]] && ((c >= 1024 && c + 20001 <= 65535)) ||
        die "OUTBOXD_CLUSTER_PORT must be a port from 1024 to 45534, got '$c'"
      NODES=(1 2 3)
      BROKER_PORT=([1]="$c" [2]="$((c + 10000))" [3]="$((c + 20000))")
      CTRL_PORT=([1]="$((c + 1))" [2]="$((c + 10001))" [3]="$((c + 20001))")
      HEAP=384m
      RF=3 MIN_ISR=2
      ;;
    secure)
      local p="${OUTBOXD_SECURE_KAFKA_PORT:-59094}"
      [[ "$p" =~ ^[0-9]+$ ]] && ((p >= 1024 && p + 3 <= 65535)) ||
        die "OUTBOXD_SECURE_KAFKA_PORT must be a port from 1024 to 65532, got '$p'"
      NODES=(1)
      BROKER_PORT=([1]="$p")
      CTRL_PORT=([1]="$((p + 1))")
      SASL_SSL_PORT=$((p + 2))
      SSL_PORT=$((p + 3))
      HEAP=512m
      RF=1 MIN_ISR=1
      ;;
    *) usage ;;
  esac
  MODE_DIR="$KDIR/$MODE"
  local n voters=()
  for n in "${NODES[@]}"; do voters+=("$n@127.0.0.1:${CTRL_PORT[$n]}"); done
  VOTERS=$(IFS=,; echo "${voters[*]}")
}

node_dir() { echo "$MODE_DIR/node$1"; }
node_props() { echo "$MODE_DIR/node$1/server.properties"; }
node_pidfile() { echo "$MODE_DIR/node$1/kafka.pid"; }
node_logs() { echo "$MODE_DIR/node$1/logs"; }

bootstrap() {
  local n out=()
  for n in "${NODES[@]}"; do out+=("127.0.0.1:${BROKER_PORT[$n]}"); done
  (IFS=,; echo "${out[*]}")
}

# --- prerequisites -----------------------------------------------------------
check_java() {
  need_cmd java "Java 17+ is required to run Kafka (package openjdk-17-jre-headless)"
  local v
  v=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
  [[ -n "$v" && "$v" -ge 17 ]] || die "Kafka 4.x needs Java 17+, but 'java' is version '${v:-unknown}' ($(command -v java))"
}

# Fetch the broker jars once; the marker holds the pom's hash, so editing the
# versions in scripts/kafka/pom.xml triggers a new fetch and nothing else does.
fetch_jars() {
  local want
  want=$(sha1sum "$POM" | cut -d' ' -f1)
  if [[ -f "$LIB/.complete" && "$(cat "$LIB/.complete")" == "$want" ]]; then
    return 0
  fi
  mkdir -p "$KDIR"
  exec 8>"$KDIR/.fetch.lock"
  # another kafka.sh may be fetching right now
  flock -w 600 8 || die "another kafka.sh has held $KDIR/.fetch.lock for 600 s"
  if [[ -f "$LIB/.complete" && "$(cat "$LIB/.complete")" == "$want" ]]; then
    exec 8>&-
    return 0
  fi
  need_cmd mvn "Maven is needed once to download the Kafka jars from Maven Central (package maven)"
  log "fetching Kafka jars with Maven into $LIB (one-time)"
  local t0=$SECONDS
  rm -rf "$LIB.tmp"
  if ! mvn -q -B -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$LIB.tmp" >"$KDIR/mvn.log" 2>&1; then
    tail -n 30 "$KDIR/mvn.log" >&2
    die "Maven could not fetch the Kafka jars (log: $KDIR/mvn.log)"
  fi
  compgen -G "$LIB.tmp/kafka_2.13-*.jar" >/dev/null || die "Maven finished but kafka_2.13 jar is missing in $LIB.tmp"
  rm -rf "$LIB"
  mv "$LIB.tmp" "$LIB"
  echo "$want" >"$LIB/.complete"
  exec 8>&-
  log "jars ready ($(find "$LIB" -name '*.jar' | wc -l) jars, $((SECONDS - t0)) s)"
}

# --- config / format ---------------------------------------------------------
write_props() {
  local n=$1 d
  d=$(node_dir "$n")
  mkdir -p "$d/data" "$d/logs"
  cat >"$(node_props "$n")" <<EOF
# Generated by scripts/kafka.sh ($MODE mode) on every start; edit the script.
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$VOTERS
listeners=PLAINTEXT://127.0.0.1:${BROKER_PORT[$n]},CONTROLLER://127.0.0.1:${CTRL_PORT[$n]}
advertised.listeners=PLAINTEXT://127.0.0.1:${BROKER_PORT[$n]},CONTROLLER://127.0.0.1:${CTRL_PORT[$n]}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$d/data
num.partitions=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
default.replication.factor=$RF
min.insync.replicas=$MIN_ISR
offsets.topic.replication.factor=$RF
transaction.state.log.replication.factor=$RF
transaction.state.log.min.isr=$MIN_ISR
share.coordinator.state.topic.replication.factor=$RF
share.coordinator.state.topic.min.isr=$MIN_ISR
EOF
  [[ "$MODE" == secure ]] && write_secure_props "$n"
  return 0
}

# Secure mode: SASL_SSL and SSL listeners next to the PLAINTEXT one (the later
# keys of a properties file win over the earlier ones).
write_secure_props() {
  local n=$1 certs pwf pw
  certs=$("$ROOT/scripts/certs.sh" dir)
  pwf=$(scram_password_file)
  [[ -s "$pwf" && -f "$MODE_DIR/.formatted" ]] || (umask 077 && echo "s$(openssl rand -hex 12)" >"$pwf")
  pw=$(<"$pwf")
  chmod 600 "$(node_props "$n")"
  cat >>"$(node_props "$n")" <<EOF
listeners=PLAINTEXT://127.0.0.1:${BROKER_PORT[$n]},CONTROLLER://127.0.0.1:${CTRL_PORT[$n]},SASL_SSL://127.0.0.1:$SASL_SSL_PORT,SSL://127.0.0.1:$SSL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:${BROKER_PORT[$n]},CONTROLLER://127.0.0.1:${CTRL_PORT[$n]},SASL_SSL://127.0.0.1:$SASL_SSL_PORT,SSL://127.0.0.1:$SSL_PORT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_outboxd="$pw" user_outboxd_acl="$pw";
ssl.keystore.type=PEM
ssl.keystore.location=$certs/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$certs/ca.pem
listener.name.ssl.ssl.client.auth=required
listener.name.sasl_ssl.ssl.client.auth=none
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
listener.name.ssl.ssl.allow.dn.changes=true
listener.name.ssl.ssl.allow.san.changes=true
EOF
}

# Secure mode: the SCRAM password, made once per format.
scram_password_file() { echo "$MODE_DIR/scram-password"; }

java_tool() {
  java -Xmx256m -Dkafka.logs.dir="$1" -Dlog4j2.configurationFile="$LOG4J_CONF" \
    -cp "$LIB/*" "${@:2}"
}

# Format all nodes of the mode with one cluster id, once. The marker is
# written only after every node formatted, so a crash mid-way reformats.
format_mode() {
  [[ -f "$MODE_DIR/.formatted" ]] && return 0
  local n cid pids=() failed=0
  log "formatting $MODE storage (static quorum $VOTERS)"
  for n in "${NODES[@]}"; do rm -rf "$(node_dir "$n")/data"; done
  for n in "${NODES[@]}"; do write_props "$n"; done
  local extra=()
  if [[ "$MODE" == secure ]]; then
    local pw
    pw=$(<"$(scram_password_file)")
    extra=(--add-scram "SCRAM-SHA-512=[name=\"outboxd\",password=\"$pw\"]")
  fi
  cid=$(java_tool "$(node_logs 1)" kafka.tools.StorageTool random-uuid) || die "StorageTool random-uuid failed"
  for n in "${NODES[@]}"; do
    java_tool "$(node_logs "$n")" kafka.tools.StorageTool format -t "$cid" -c "$(node_props "$n")" "${extra[@]}" \
      >"$(node_logs "$n")/format.log" 2>&1 &
    pids+=($!)
  done
  for n in "${!pids[@]}"; do
    if ! wait "${pids[$n]}"; then
      failed=1
      cat "$(node_logs "${NODES[$n]}")/format.log" >&2
    fi
  done
  ((failed == 0)) || die "kafka storage format failed for $MODE (see logs above)"
  echo "$cid" >"$MODE_DIR/.formatted"
}

# --- processes ---------------------------------------------------------------
# Pid of node n if it is our broker (cmdline has kafka.Kafka + its props file).
node_pid() {
  local f pid
  f=$(node_pidfile "$1")
  [[ -r "$f" ]] || return 1
  pid=$(<"$f")
  pid_alive "$pid" kafka.Kafka "$(node_props "$1")" || return 1
  printf '%s' "$pid"
}

clean_stale_pid() {
  local f
  f=$(node_pidfile "$1")
  if [[ -e "$f" ]] && ! node_pid "$1" >/dev/null; then
    log "node $1: removing stale pid file"
    rm -f "$f"
  fi
}

check_ports_free() {
  local n=$1
  # The single broker's ports come from OUTBOXD_KAFKA_PORT (controller: that port + 1).
  local knob=""
  [[ "$MODE" == single ]] && knob=", OUTBOXD_KAFKA_PORT"
  port_in_use "${BROKER_PORT[$n]}" && die_port_busy "${BROKER_PORT[$n]}" "Kafka $MODE node $n broker$knob"
  port_in_use "${CTRL_PORT[$n]}" && die_port_busy "${CTRL_PORT[$n]}" "Kafka $MODE node $n controller$knob + 1"
  return 0
}

launch_node() {
  local n=$1 logs pidf
  logs=$(node_logs "$n")
  pidf=$(node_pidfile "$n")
  write_props "$n"
  rm -f "$pidf"
  log "node $n: starting (broker 127.0.0.1:${BROKER_PORT[$n]}, controller ${CTRL_PORT[$n]}, heap $HEAP)"
  # JVM flags as in kafka-server-start.sh/kafka-run-class.sh, smaller heap.
  # setsid: own session, so the broker outlives the calling shell/job; the
  # inner shell writes its pid, then execs java (same pid).
  # shellcheck disable=SC2016 # $$ and $0 expand in the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidf" \
    java "-Xms$HEAP" "-Xmx$HEAP" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dkafka.logs.dir="$logs" -Dlog4j2.configurationFile="$LOG4J_CONF" \
    -cp "$LIB/*" kafka.Kafka "$(node_props "$n")" \
    </dev/null >>"$logs/stdout.log" 2>&1 8>&- 9>&- & # don't leak the lock fds
  wait_until 10 test -s "$pidf" || die "node $n: launcher did not write $pidf"
}

# brokers_seen <port>: broker count in metadata fetched from that broker.
brokers_seen() {
  kcat -b "127.0.0.1:$1" -L -m 2 2>/dev/null | sed -n 's/^ *\([0-9][0-9]*\) brokers:.*/\1/p' | head -n1
}

# Ready = every running node answers metadata showing all running nodes.
# Also returns 0 when some node died, so wait_until stops early.
nodes_ready_or_dead() {
  local n want=0
  for n in "${NODES[@]}"; do
    [[ -e "$(node_pidfile "$n")" ]] || continue
    node_pid "$n" >/dev/null || return 0 # died
    want=$((want + 1))
  done
  for n in "${NODES[@]}"; do
    node_pid "$n" >/dev/null || continue
    [[ "$(brokers_seen "${BROKER_PORT[$n]}")" == "$want" ]] || return 1
  done
}

dump_logs() {
  local n
  for n in "$@"; do
    echo "----- node $n: last errors in $(node_logs "$n")/server.log" >&2
    grep -E '^\[[^]]*\] (ERROR|FATAL) ' "$(node_logs "$n")/server.log" 2>/dev/null | tail -n 5 | cut -c1-400 >&2 || true
    echo "----- node $n: tail of $(node_logs "$n")/server.log" >&2
    tail -n 20 "$(node_logs "$n")/server.log" >&2 2>/dev/null || true
    echo "----- node $n: tail of $(node_logs "$n")/stdout.log" >&2
    tail -n 10 "$(node_logs "$n")/stdout.log" >&2 2>/dev/null || true
  done
}

wait_ready() {
  local t0=$SECONDS n dead=()
  if ! wait_until "$READY_TIMEOUT" nodes_ready_or_dead; then
    dump_logs "${NODES[@]}"
    die "Kafka $MODE not ready after ${READY_TIMEOUT}s (kcat -L against $(bootstrap))"
  fi
  for n in "${NODES[@]}"; do
    if [[ -e "$(node_pidfile "$n")" ]] && ! node_pid "$n" >/dev/null; then dead+=("$n"); fi
  done
  if ((${#dead[@]})); then
    dump_logs "${dead[@]}"
    die "Kafka $MODE node(s) ${dead[*]} exited during startup (logs above; nodes still up are left running, '$0 stop $MODE' stops them)"
  fi
  log "ready in $((SECONDS - t0)) s: $(bootstrap)"
}

# all_stopped <n...>: none of the given nodes runs.
all_stopped() {
  local m
  for m in "$@"; do ! node_pid "$m" >/dev/null || return 1; done
}

# stop_nodes <n...>: SIGTERM all, wait, SIGKILL leftovers. All at once, so
# the controller quorum stays up while the brokers shut down cleanly.
stop_nodes() {
  local n pid pids=() left
  for n in "$@"; do
    if pid=$(node_pid "$n"); then
      log "node $n: stopping (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$n")
    else
      clean_stale_pid "$n"
    fi
  done
  ((${#pids[@]})) || return 0
  if ! wait_until "$STOP_TIMEOUT" all_stopped "${pids[@]}"; then
    for n in "${pids[@]}"; do
      if left=$(node_pid "$n"); then
        warn "node $n: no exit ${STOP_TIMEOUT}s after SIGTERM, sending SIGKILL"
        kill -KILL "$left" 2>/dev/null || true
      fi
    done
    wait_until 10 all_stopped "${pids[@]}" || die "node(s) ${pids[*]} still alive after SIGKILL"
  fi
  for n in "${pids[@]}"; do rm -f "$(node_pidfile "$n")"; done
}

lock_mode() {
  mkdir -p "$MODE_DIR"
  exec 9>"$MODE_DIR/.lock"
  # serialize start/stop/kill of the same mode
  flock -w 300 9 || die "another kafka.sh has held $MODE_DIR/.lock for 300 s"
}

# --- commands ----------------------------------------------------------------
cmd_start() {
  need_cmd kcat "kcat is used to check broker readiness (package kcat)"
  local n to_start=()
  lock_mode
  for n in "${NODES[@]}"; do
    clean_stale_pid "$n"
    node_pid "$n" >/dev/null || to_start+=("$n")
  done
  if ((${#to_start[@]} == 0)); then
    wait_ready
    log "already running ($MODE)"
    return 0
  fi
  for n in "${to_start[@]}"; do check_ports_free "$n"; done
  if [[ "$MODE" == secure ]]; then
    port_in_use "$SASL_SSL_PORT" && die_port_busy "$SASL_SSL_PORT" "Kafka secure SASL_SSL, OUTBOXD_SECURE_KAFKA_PORT + 2"
    port_in_use "$SSL_PORT" && die_port_busy "$SSL_PORT" "Kafka secure SSL, OUTBOXD_SECURE_KAFKA_PORT + 3"
    "$ROOT/scripts/certs.sh" ensure
  fi
  check_java
  fetch_jars
  format_mode
  if [[ "$MODE" == secure ]]; then
    start_secure_node
    grant_secure_principals
    return 0
  fi
  for n in "${to_start[@]}"; do launch_node "$n"; done
  wait_ready
}

# The broker binds its listeners only after it registered with its controller;
# the ports lie in Linux's ephemeral range, so that connection (or any other
# on the machine) may hold one of them by then and the broker exits with
# "Address already in use". Start again, up to 3 times, in that one case.
# Ready = metadata on PLAINTEXT and the SASL_SSL and SSL ports listening (the
# listeners start one after another; one that fails to bind stops the broker).
secure_ready_or_dead() {
  nodes_ready_or_dead || return 1
  node_pid 1 >/dev/null || return 0
  port_in_use "$SASL_SSL_PORT" && port_in_use "$SSL_PORT"
}

# no_socket_on <port...>: no TCP socket in any state (TIME-WAIT included: the
# broker's bind is refused then) uses one of the ports as its local port.
no_socket_on() {
  local p
  for p in "$@"; do [[ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ]] || return 1; done
}

start_secure_node() {
  local attempt lines ports=("${BROKER_PORT[1]}" "${CTRL_PORT[1]}" "$SASL_SSL_PORT" "$SSL_PORT")
  for attempt in 1 2 3; do
    if ! no_socket_on "${ports[@]}"; then
      log "waiting (at most 70 s) for closing connections on ports ${ports[*]} to go"
      wait_until 70 no_socket_on "${ports[@]}" || warn "ports ${ports[*]} still in use by connections"
    fi
    lines=$(wc -l <"$(node_logs 1)/server.log" 2>/dev/null || echo 0)
    launch_node 1
    if wait_until "$READY_TIMEOUT" secure_ready_or_dead && node_pid 1 >/dev/null; then
      wait_ready
      return 0
    fi
    node_pid 1 >/dev/null && break # alive but not ready in time: wait_ready reports it
    # only this attempt's lines (the log is appended to)
    awk -v n="$lines" 'NR > n && /Address already in use/ { f = 1 } END { exit !f }' \
      "$(node_logs 1)/server.log" 2>/dev/null || break
    ((attempt < 3)) || break
    warn "a listener port was taken by another connection (attempt $attempt of 3), starting again"
    rm -f "$(node_pidfile 1)"
  done
  wait_ready
}

# The principals of the SASL and mTLS tests may do anything with topics and transactional ids;
# the least-privilege tests use outboxd_acl, which has nothing until they grant it.
grant_secure_principals() {
  local p args=()
  for p in User:outboxd User:CN=outboxd; do
    args+=(add "$p" TOPIC '*' ALL TRANSACTIONAL_ID '*' ALL)
  done
  args+=(add User:outboxd_acl TRANSACTIONAL_ID 'acl_txn_*' WRITE)
  acl_tool "${args[@]}" || die "could not grant the ACLs of the test principals"
  log "ACLs granted to User:outboxd, User:CN=outboxd (all) and User:outboxd_acl (acl_txn_*)"
}

# acl_tool add|delete ...: scripts/kafka/AclTool.java against the secure broker's PLAINTEXT
# listener (its principal, User:ANONYMOUS, is the super user).
acl_tool() {
  java_tool "$(node_logs 1)" "$ROOT/scripts/kafka/AclTool.java" "$(bootstrap)" "$@"
}

cmd_stop() {
  lock_mode
  stop_nodes "${NODES[@]}"
  log "stopped ($MODE)"
}

cmd_status() {
  local n pid rc=0 seen
  for n in "${NODES[@]}"; do
    if pid=$(node_pid "$n"); then
      seen=$(brokers_seen "${BROKER_PORT[$n]}")
      echo "kafka $MODE node $n: running (pid $pid, 127.0.0.1:${BROKER_PORT[$n]}, brokers in metadata: ${seen:-none})"
    else
      echo "kafka $MODE node $n: stopped (127.0.0.1:${BROKER_PORT[$n]})"
      rc=3
    fi
  done
  return "$rc"
}

cmd_env() {
  if [[ "$MODE" == secure ]]; then
    echo "export OUTBOXD_SECURE_KAFKA_PLAINTEXT=$(bootstrap)"
    echo "export OUTBOXD_SECURE_KAFKA_SASL_SSL=127.0.0.1:$SASL_SSL_PORT"
    echo "export OUTBOXD_SECURE_KAFKA_SSL=127.0.0.1:$SSL_PORT"
    echo "export OUTBOXD_SECURE_KAFKA_SCRAM_USER=outboxd"
    echo "export OUTBOXD_SECURE_KAFKA_ACL_USER=outboxd_acl"
    echo "export OUTBOXD_SECURE_KAFKA_SCRAM_PASSWORD_FILE=$(scram_password_file)"
    echo "export OUTBOXD_CERTS=$("$ROOT/scripts/certs.sh" dir)"
    return 0
  fi
  echo "export OUTBOXD_KAFKA_BOOTSTRAP=$(bootstrap)"
}

node_arg() {
  [[ "${1:-}" =~ ^[123]$ ]] || die "expected a cluster node number 1, 2 or 3, got '${1:-}'"
}

cmd_kill() {
  local n=$1 pid
  lock_mode
  if ! pid=$(node_pid "$n"); then
    clean_stale_pid "$n"
    log "node $n: not running"
    return 0
  fi
  log "node $n: SIGKILL (pid $pid)"
  kill -KILL "$pid"
  wait_until 10 all_stopped "$n" || die "node $n (pid $pid) survived SIGKILL"
  rm -f "$(node_pidfile "$n")"
}

cmd_restart_node() {
  local n=$1
  need_cmd kcat "kcat is used to check broker readiness (package kcat)"
  lock_mode
  [[ -f "$MODE_DIR/.formatted" ]] || die "cluster was never started: run '$0 start cluster' first"
  # One node alone has no controller quorum (2 of 3 needed): it would never be ready.
  local m others=0
  for m in "${NODES[@]}"; do
    [[ "$m" == "$n" ]] || ! node_pid "$m" >/dev/null || others=$((others + 1))
  done
  ((others > 0)) || die "no other cluster node is running: use '$0 start cluster'"
  stop_nodes "$n"
  check_ports_free "$n"
  check_java
  fetch_jars
  local server_log t0=$SECONDS from
  server_log="$(node_logs "$n")/server.log"
  from=$(stat -c %s "$server_log" 2>/dev/null || echo 0)
  launch_node "$n"
  wait_rejoin "$n" "$server_log"
  rejoin_phases "$n" "$server_log" "$from" "$t0"
}

# A node restarted after a SIGKILL rejoins in phases: the JVM starts, the logs left unclean are
# recovered (every partition it holds, __transaction_state and __consumer_offsets included), it
# catches up with the metadata log and waits for the controller to unfence it. On a loaded 2-core
# machine that took more than 120 s once (tests/e2e/README.md). So a rejoin is waited for as long
# as the node is alive and its server.log grows (it is working through those phases), up to
# OUTBOXD_KAFKA_REJOIN_TIMEOUT (600 s); it fails at once when the node dies, and after
# OUTBOXD_KAFKA_REJOIN_STALL (90 s) without a line written and without being ready.
REJOIN_TIMEOUT="${OUTBOXD_KAFKA_REJOIN_TIMEOUT:-600}"
REJOIN_STALL="${OUTBOXD_KAFKA_REJOIN_STALL:-90}"
wait_rejoin() {
  local n=$1 server_log=$2 t0=$SECONDS last_size=-1 last_change=$SECONDS size
  while true; do
    if nodes_ready_or_dead; then
      node_pid "$n" >/dev/null || {
        dump_logs "$n"
        die "node $n exited while rejoining (logs above)"
      }
      log "node $n rejoined in $((SECONDS - t0)) s: $(bootstrap)"
      return 0
    fi
    size=$(stat -c %s "$server_log" 2>/dev/null || echo 0)
    if ((size != last_size)); then
      last_size=$size
      last_change=$SECONDS
    fi
    if ((SECONDS - last_change >= REJOIN_STALL || SECONDS - t0 >= REJOIN_TIMEOUT)); then
      dump_logs "$n"
      die "node $n did not rejoin after $((SECONDS - t0)) s (its server.log idle for $((SECONDS - last_change)) s)"
    fi
    sleep 0.5
  done
}

# rejoin_phases <n> <server.log> <offset of this start> <t0>: when each phase of the rejoin ended,
# in seconds after the restart began (from the node's own log lines).
rejoin_phases() {
  local n=$1 server_log=$2 from=$3 t0=$4 start_epoch line phase summary=""
  start_epoch=$(($(date +%s) - (SECONDS - t0)))
  for phase in "Loaded [0-9]* logs in" "Transitioning from STARTING to RECOVERY" \
    "has been unfenced" "Kafka Server started"; do
    line=$(tail -c +"$((from + 1))" "$server_log" 2>/dev/null | grep -m1 -E "$phase" || true)
    [[ -n "$line" ]] || continue
    local ts
    ts=$(date -d "$(echo "$line" | sed -n 's/^\[\([0-9-]* [0-9:]*\),.*/\1/p')" +%s 2>/dev/null) || continue
    summary+=" ${phase%% \[*}:+$((ts - start_epoch))s"
  done
  local loaded
  loaded=$(tail -c +"$((from + 1))" "$server_log" 2>/dev/null | grep -m1 -oE "Loaded [0-9]+ logs in [0-9]+ms" || true)
  log "node $n rejoin phases:${summary:- (none found)}${loaded:+ ($loaded)}"
}

cmd=${1:-}
case "$cmd" in
  start | stop | restart | status | env)
    [[ $# -le 2 ]] || usage
    set_mode "${2:-single}"
    case "$cmd" in
      start) cmd_start ;;
      stop) cmd_stop ;;
      restart) cmd_stop && cmd_start ;;
      status) cmd_status ;;
      env) cmd_env ;;
    esac
    ;;
  acl)
    [[ "${2:-}" == add || "${2:-}" == delete ]] && [[ $# -ge 3 ]] || usage
    set_mode secure
    node_pid 1 >/dev/null || die "the secure broker is not running: $0 start secure"
    check_java
    acl_tool "${@:2}"
    ;;
  kill | restart-node)
    # accept "kill 2" and "kill cluster 2"
    [[ "${2:-}" == cluster ]] && set -- "$1" "${@:3}"
    [[ $# -eq 2 ]] || usage
    node_arg "$2"
    set_mode cluster
    if [[ "$cmd" == kill ]]; then cmd_kill "$2"; else cmd_restart_node "$2"; fi
    ;;
  *) usage ;;
esac
