#!/usr/bin/env bash
# conncost.sh: CPU per relayed connection and per kept-alive request, for
# one or two halfway binaries and HAProxy, side by side. A C load generator
# (wrk) and a C backend (nginx, 1 KB file) on CPU 0 leave the proxy, alone
# on CPU 1, as the bottleneck for new connections, which `halfway bench
# peers` (a Go load generator and backend) cannot on two cores. Rounds are
# interleaved; it prints the median of each.
#
#   scripts/conncost.sh [-r ROUNDS] NEW.bin [BASE.bin]
#
# Needs root (a network namespace of its own), wrk, nginx and haproxy
# (apt-get install wrk nginx haproxy). Everything runs on the namespace's
# loopback; the namespace and processes go away on exit.
set -euo pipefail
rounds=5
if [ "${1:-}" = -r ]; then
	rounds=$2
	shift 2
fi
new=${1:?usage: conncost.sh [-r ROUNDS] NEW.bin [BASE.bin]}
base=${2:-}
for tool in wrk nginx haproxy taskset; do
	command -v $tool >/dev/null || { echo "conncost: needs $tool (apt-get install wrk nginx haproxy)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "conncost: needs root for its network namespace" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "conncost: needs two CPUs (load on 0, proxy on 1)" >&2; exit 1; }

ns=hw-conncost-$$
work=$(mktemp -d)
cleanup() {
	ip netns pids $ns 2>/dev/null | xargs -r kill 2>/dev/null || true
	sleep 0.3
	ip netns pids $ns 2>/dev/null | xargs -r kill -9 2>/dev/null || true
	ip netns del $ns 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
ip netns add $ns
ip -n $ns link set lo up
nsx() { ip netns exec $ns "$@"; }
ulimit -n 20000

head -c 1024 /dev/zero | tr '\0' x >"$work/index.html"
cat >"$work/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:8080 backlog=4096; root $work; keepalive_requests 1000000; } }
EOF
# The configuration `halfway bench peers` gives HAProxy (bench/peers.go),
# so that both measure the same proxy; keep them alike.
cat >"$work/haproxy.cfg" <<EOF
global
    fd-hard-limit 20000
    maxconn 9300
    maxpipes 200
    nbthread 1
    tune.maxaccept 64
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen http
    bind 127.0.0.1:9001
    server b 127.0.0.1:8080
EOF
relay() { # relay NAME PORT BINARY
	cat >"$work/$1.yaml" <<EOF
admin: {listen: off}
log: {level: warn}
limits: {max_flows: 20000, max_flows_per_client: 20000, max_pending: 4096}
listeners:
  - {name: http, listen: "127.0.0.1:$2", mode: forward, forward_to: "127.0.0.1:8080"}
EOF
	ip netns exec $ns taskset -c 1 "$3" relay -c "$work/$1.yaml" --grace 1s >"$work/$1.log" 2>&1 &
	echo $!
}
ip netns exec $ns taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" &
declare -A pid port
port[new]=9000
pid[new]=$(relay new 9000 "$new")
if [ -n "$base" ]; then
	port[base]=9002
	pid[base]=$(relay base 9002 "$base")
fi
ip netns exec $ns taskset -c 1 haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
port[haproxy]=9001
pid[haproxy]=$!
names="new ${base:+base} haproxy"
for i in $(seq 50); do
	ok=1
	for n in $names; do nsx bash -c "exec 3<>/dev/tcp/127.0.0.1/${port[$n]}" 2>/dev/null || ok=0; done
	[ $ok = 1 ] && break
	sleep 0.1
done

cpu() { awk '{print $14+$15}' /proc/$1/stat; } # clock ticks, user+system
measure() { # measure NAME close|keepalive: prints "requests/s cpu-µs/request"
	local hdr=()
	[ "$2" = close ] && hdr=(-H "Connection: close")
	local url=http://127.0.0.1:${port[$1]}/
	nsx taskset -c 0 wrk -t1 -c40 -d1s "${hdr[@]}" "$url" >/dev/null
	local a b out n
	a=$(cpu ${pid[$1]})
	out=$(nsx taskset -c 0 wrk -t1 -c40 -d5s "${hdr[@]}" "$url")
	b=$(cpu ${pid[$1]})
	n=$(awk '/requests in/ {print $1}' <<<"$out")
	if grep -q -E "Socket errors|Non-2xx" <<<"$out"; then
		echo "conncost: $1: $(grep -E 'Socket errors|Non-2xx' <<<"$out")" >&2
	fi
	echo "$((n / 5)) $(((b - a) * 1000000 / $(getconf CLK_TCK) / n))"
}
for mode in close keepalive; do
	declare -A rates=() cpus=()
	for r in $(seq "$rounds"); do
		for n in $names; do
			read -r rate us < <(measure $n $mode)
			rates[$n]+="$rate "
			cpus[$n]+="$us "
		done
	done
	med() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
	echo "== $mode: 40 clients (wrk), 1 KB from nginx; median of $rounds interleaved rounds"
	for n in $names; do
		printf "%-8s %7s req/s  %4s µs CPU/request   (each: %s)\n" $n "$(med <<<"${rates[$n]}")" "$(med <<<"${cpus[$n]}")" "${cpus[$n]% }"
	done
done
