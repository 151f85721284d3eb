#!/usr/bin/env bash
# eyeballs.sh: how long a SOCKS5 client waits through the relay for a name
# whose first address does not answer, for one or two halfway binaries
# (docs/relay.md, "Names": a name's addresses are raced, RFC 8305).
#
#   scripts/eyeballs.sh NEW.bin [BASE.bin]
#
# A lab (client — relay — server, IPv4 and IPv6) is brought up; the
# relay's hosts file names the server dual.test with both addresses; the
# server drops one family's SYNs to its port (first IPv4, which Go's
# resolver tries first for these addresses, then IPv6); curl
# --socks5-hostname fetches http://dual.test:8080/ through the relay five
# times per binary, with limits.connect_timeout at its default (5s). Needs
# root, nft, curl and python3; the lab goes away on exit.
set -euo pipefail
new=${1:?usage: eyeballs.sh NEW.bin [BASE.bin]}
base=${2:-}
for tool in nft curl python3; do
	command -v $tool >/dev/null || { echo "eyeballs: needs $tool" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "eyeballs: needs root for its lab" >&2; exit 1; }

work=$(mktemp -d)
lab=hweyes$$
cleanup() {
	"$new" lab down "$lab" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
cat >"$work/lab.yaml" <<EOF
name: $lab
ipv6: true
nodes: [client, relay, server]
links:
  - {a: client, b: relay, delay: 5ms}
  - {a: relay, b: server, delay: 5ms}
EOF
"$new" lab up "$work/lab.yaml" >/dev/null
ns() { ip netns exec "hwl.$lab.$1" "${@:2}"; }
# Link 0 is client (10.77.1.1) — relay (.2); link 1 relay (10.77.2.1) —
# server (10.77.2.2, fd00:77:2::2).
printf '10.77.2.2 dual.test\nfd00:77:2::2 dual.test\n' >>"/etc/netns/hwl.$lab.relay/hosts"
cat >"$work/relay.yaml" <<EOF
admin: {listen: off}
log: {level: warn}
listeners:
  - {name: s, listen: "10.77.1.2:1080", protocols: [socks5], allow_clients: [10.77.1.0/24], allow_destinations: ["10.77.2.0/24", "fd00:77:2::/64"]}
EOF
ns server python3 -m http.server 8080 --bind :: >/dev/null 2>&1 &
for i in $(seq 50); do
	ns client curl -s -o /dev/null --max-time 1 http://10.77.2.2:8080/ && break
	sleep 0.1
done

fetches() { # fetches BINARY LABEL: five fetch times in seconds
	ip netns exec "hwl.$lab.relay" "$1" relay -c "$work/relay.yaml" --grace 1s &
	local pid=$! times=""
	for i in $(seq 50); do
		ns client bash -c "exec 3<>/dev/tcp/10.77.1.2/1080" 2>/dev/null && break
		sleep 0.1
	done
	for i in 1 2 3 4 5; do
		times+=" $(ns client curl -s -o /dev/null -w '%{time_total}' --max-time 20 --socks5-hostname 10.77.1.2:1080 http://dual.test:8080/ || echo failed)"
	done
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	printf '%-24s%s\n' "$2" "$times"
}
for fam in ip ip6; do
	ns server nft add table $fam hweyes
	ns server nft add chain $fam hweyes in '{ type filter hook input priority 0; }'
	ns server nft add rule $fam hweyes in tcp dport 8080 drop
	echo "== the server drops $fam SYNs to port 8080: seconds per fetch through the relay"
	fetches "$new" "$(basename "$new")"
	[ -n "$base" ] && fetches "$base" "$(basename "$base")"
	ns server nft delete table $fam hweyes
done
