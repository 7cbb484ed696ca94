#!/usr/bin/env bash
# Network namespaces for the netfault tests: an outboxd instance runs inside one and reaches the
# project's PostgreSQL and Kafka (on this host's 127.0.0.1) over a veth pair. Only addresses on
# that pair (10.231.N.1 here, 10.231.N.2 inside) and loopback are used; nothing else is reached.
#   netns.sh check                      can this machine do it (root, ip, nft, veth)? why not
#   netns.sh up NAME N                  namespace NAME, link 10.231.N.0/30 (N in 1..250)
#   netns.sh up-wire NAME N DELAY_MS LOSS_PERCENT
#                                       the same over wire.py, a TUN pair that delays every
#                                       packet DELAY_MS and drops LOSS_PERCENT %, each way
#   netns.sh cut NAME pg|kafka|all      drop that traffic both ways, silently (a partition)
#   netns.sh loss NAME PERCENT          drop PERCENT % of all packets both ways (random)
#   netns.sh heal NAME                  no more drops
#   netns.sh down NAME | down-all       remove it (all of ours); idempotent
# Inside the namespace 127.0.0.1:$OUTBOXD_PG_PORT and :$OUTBOXD_KAFKA_PORT are forwarded (nft
# DNAT) to this host's loopback, so the same addresses work (Kafka advertises 127.0.0.1). The
# tc netem qdisc would add delay; kernels without CONFIG_NET_SCH_NETEM lack it, so `loss` uses an
# nft random-drop rule and `up-wire` a userspace wire (wire.py) instead.
set -euo pipefail
export LOG_TAG=netns  # read by lib.sh's log functions
# shellcheck source=scripts/lib.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

PREFIX=obxnf  # every namespace, link and nft table made here starts with it
PG_PORT=${OUTBOXD_PG_PORT:-55432}
KAFKA_PORT=${OUTBOXD_KAFKA_PORT:-59092}

ns_of() { printf '%s%s' "$PREFIX" "$1"; }
host_if() { printf '%sh%s' "$PREFIX" "$1"; }
ns_if() { printf '%sn%s' "$PREFIX" "$1"; }

check() {
  ((EUID == 0)) || { echo "not root"; return 1; }
  command -v ip >/dev/null || { echo "ip (iproute2) missing"; return 1; }
  command -v nft >/dev/null || { echo "nft (nftables) missing"; return 1; }
  local probe="${PREFIX}probe$$"
  if ! ip netns add "$probe" 2>/dev/null; then
    echo "ip netns add failed"
    return 1
  fi
  if ! ip link add "${probe:0:12}h" type veth peer name "${probe:0:12}n" 2>/dev/null; then
    ip netns del "$probe"
    echo "veth pairs not permitted"
    return 1
  fi
  ip link del "${probe:0:12}h"
  ip netns del "$probe"
}

wire_pid_file() { printf '/tmp/%s.wire.pid' "$(ns_of "$1")"; }

up() {
  local name=$1 n=$2 ns h i
  ns=$(ns_of "$name") h=$(host_if "$name") i=$(ns_if "$name")
  down "$name"
  ip netns add "$ns"
  ip link add "$h" type veth peer name "$i"
  ip link set "$i" netns "$ns"
  configure "$name" "$n"
}

up_wire() {
  local name=$1 n=$2 delay=$3 loss=$4 ns h i pid_file
  ns=$(ns_of "$name") h=$(host_if "$name") i=$(ns_if "$name") pid_file=$(wire_pid_file "$name")
  down "$name"
  ip netns add "$ns"
  ip tuntap add dev "$h" mode tun
  ip tuntap add dev "$i" mode tun
  rm -f "$pid_file"
  python3 "$(dirname "${BASH_SOURCE[0]}")/wire.py" "$h" "$i" "$delay" "$loss" "$pid_file" \
    </dev/null >/dev/null 2>&1 &
  wait_until 10 test -s "$pid_file" || die "wire.py did not start"
  ip link set "$i" netns "$ns"
  configure "$name" "$n"
}

# Addresses, routes and NAT on a link whose ends are $h (here) and $i (moved into the namespace).
configure() {
  local name=$1 n=$2 ns h i
  ns=$(ns_of "$name") h=$(host_if "$name") i=$(ns_if "$name")
  local host_ip=10.231.$n.1 ns_ip=10.231.$n.2
  ip addr add "$host_ip/30" dev "$h"
  ip link set "$h" up
  ip -n "$ns" addr add "$ns_ip/30" dev "$i"
  ip -n "$ns" link set "$i" up
  ip -n "$ns" link set lo up
  # Packets to 127.0.0.1 may cross the link only with route_localnet on both ends.
  sysctl -qw "net.ipv4.conf.$h.route_localnet=1"
  ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.route_localnet=1
  ip netns exec "$ns" sysctl -qw "net.ipv4.conf.$i.route_localnet=1"
  # Host: what arrives on the link for the two ports goes to loopback, seen as from 127.0.0.1
  # (the project's PostgreSQL trusts only loopback).
  nft -f - <<NFT
table ip $ns {
  chain pre { type nat hook prerouting priority -100; iifname "$h" tcp dport { $PG_PORT, $KAFKA_PORT } dnat to 127.0.0.1; }
  chain inp { type nat hook input priority 100; iifname "$h" tcp dport { $PG_PORT, $KAFKA_PORT } snat to 127.0.0.1; }
  chain fault_in { type filter hook prerouting priority -300; }
  chain fault_out { type filter hook postrouting priority 300; }
}
NFT
  # Namespace: 127.0.0.1 on the two ports means the host; a filter chain for the faults.
  ip netns exec "$ns" nft -f - <<NFT
table ip outboxd {
  chain out { type nat hook output priority -100; ip daddr 127.0.0.1 tcp dport { $PG_PORT, $KAFKA_PORT } dnat to $host_ip; }
  chain post { type nat hook postrouting priority 100; oifname "$i" masquerade; }
  chain fault_out { type filter hook output priority 0; }
  chain fault_in { type filter hook input priority 0; }
}
NFT
}

ports_of() {
  case "$1" in
    pg) echo "$PG_PORT" ;;
    kafka) echo "$KAFKA_PORT" ;;
    all) echo "$PG_PORT, $KAFKA_PORT" ;;
    *) die "cut: expected pg, kafka or all, got '$1'" ;;
  esac
}

# Both ends drop: with the namespace's rules alone, a FIN of a process killed inside still reached
# PostgreSQL (seen in NetFault.LeaderHostCrash*), which a dead host would never send.
cut() {
  local ns h i ports
  ns=$(ns_of "$1") h=$(host_if "$1") i=$(ns_if "$1") ports=$(ports_of "$2")
  nft add rule ip "$ns" fault_in iifname "$h" tcp dport "{ $ports }" drop
  nft add rule ip "$ns" fault_out oifname "$h" tcp sport "{ $ports }" drop
  ip netns exec "$ns" nft add rule ip outboxd fault_out oifname "$i" tcp dport "{ $ports }" drop
  ip netns exec "$ns" nft add rule ip outboxd fault_in iifname "$i" tcp sport "{ $ports }" drop
}

loss() {
  local ns i
  ns=$(ns_of "$1") i=$(ns_if "$1")
  ip netns exec "$ns" nft add rule ip outboxd fault_out oifname "$i" numgen random mod 100 \< "$2" drop
  ip netns exec "$ns" nft add rule ip outboxd fault_in iifname "$i" numgen random mod 100 \< "$2" drop
}

heal() {
  local ns
  ns=$(ns_of "$1")
  nft flush chain ip "$ns" fault_in
  nft flush chain ip "$ns" fault_out
  ip netns exec "$ns" nft flush chain ip outboxd fault_out
  ip netns exec "$ns" nft flush chain ip outboxd fault_in
}

down() {
  local ns h
  ns=$(ns_of "$1") h=$(host_if "$1")
  # Processes still inside would keep the namespace alive: end them (they are ours).
  if ip netns pids "$ns" >/dev/null 2>&1; then
    local pid
    for pid in $(ip netns pids "$ns"); do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  local pid_file
  pid_file=$(wire_pid_file "$1")
  if [[ -s "$pid_file" ]] && pid_alive "$(cat "$pid_file")" wire.py; then
    kill "$(cat "$pid_file")" 2>/dev/null || true
  fi
  rm -f "$pid_file"
  ip link del "$h" 2>/dev/null || true
  ip -n "$ns" link del "$(ns_if "$1")" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  nft delete table ip "$ns" 2>/dev/null || true
}

down_all() {
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX" || true); do
    down "${ns#"$PREFIX"}"
  done
  for ns in $(nft list tables ip 2>/dev/null | awk '{print $3}' | grep "^$PREFIX" || true); do
    nft delete table ip "$ns" 2>/dev/null || true
  done
}

case "${1:-}" in
  check) check ;;
  up) up "$2" "$3" ;;
  up-wire) up_wire "$2" "$3" "$4" "$5" ;;
  cut) cut "$2" "$3" ;;
  loss) loss "$2" "$3" ;;
  heal) heal "$2" ;;
  down) down "$2" ;;
  down-all) down_all ;;
  *)
    echo "usage: $0 check|up NAME N|up-wire NAME N DELAY_MS LOSS_PERCENT|cut NAME pg|kafka|all|loss NAME PERCENT|heal NAME|down NAME|down-all" >&2
    exit 2
    ;;
esac
