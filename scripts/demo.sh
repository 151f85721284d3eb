#!/usr/bin/env bash
# make demo: bring up the KTCP lab topology (client – rc – rs – server, RTTs
# 32.7 / 215 / 26 ms), run halfway relays on rc and rs, and compare
# downloads end to end with downloads through the relays.
set -euo pipefail
cd "$(dirname "$0")/.."
hw=$PWD/bin/halfway
topo=examples/ktcp.yaml
work=$(mktemp -d)
cleanup() {
	$hw lab down ktcp >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then
	echo "make demo needs root: it creates network namespaces" >&2
	exit 1
fi
$hw lab down ktcp >/dev/null 2>&1 || true
$hw lab up "$topo" | sed -n '1,6p'
echo
echo "== ping RTTs from client (configured: rc 32.7 ms, rs 247.7 ms, server 273.7 ms)"
for dst in rc rs server; do
	$hw lab exec --lab ktcp client -- ping -c 4 -i 0.3 -q "$dst" | awk -v d="$dst" '/rtt/ {split($4, a, "/"); printf "  client → %-6s min %s ms  avg %s ms\n", d, a[1], a[2]}'
done

# Relays with every acceleration on (examples/relay/rc-accel.yaml,
# rs-accel.yaml): rc captures the client's flows to the server's port 8080
# transparently, starts the hop to rs on the client's SYN, takes a pooled
# connection to rs, and both relays open their leg with Turbo-Start windows.
# Port 8090 on the server is not captured: the direct path.
head -c 32 /dev/urandom | base64 >"$work/psk"
for r in rs rc; do
	sed "s|/etc/halfway/psk|$work/psk|" "examples/relay/$r-accel.yaml" >"$work/$r.yaml"
	$hw relay -c "$work/$r.yaml" --check >/dev/null
	$hw lab exec --lab ktcp "$r" -- "$hw" relay -c "$work/$r.yaml" >"$work/$r.log" 2>&1 &
	disown # lab down ends it
done

mkdir -p "$work/www"
for size in 10K 100K 1M 10M; do head -c "$size" /dev/urandom >"$work/www/$size"; done
for port in 8080 8090; do
	$hw lab exec --lab ktcp server -- python3 -m http.server --bind 0.0.0.0 --directory "$work/www" "$port" >/dev/null 2>&1 &
	disown
done
for _ in $(seq 50); do
	$hw lab exec --lab ktcp client -- curl -s -o /dev/null http://server:8090/ &&
		$hw lab exec --lab ktcp rc -- nft list table inet halfway_web >/dev/null 2>&1 && break
	sleep 0.2
done
# Warm up through the relays: rc learns rs's Fast Open cookie, the pool fills.
for _ in 1 2; do $hw lab exec --lab ktcp client -- curl -s -o /dev/null http://server:8080/10K; done
sleep 1

fetch() { # fetch PORT SIZE → "ttfb total", median of 5
	for _ in 1 2 3 4 5; do
		$hw lab exec --lab ktcp client -- curl -s -o /dev/null -w '%{time_starttransfer} %{time_total}\n' "http://server:$1/$2"
	done | sort -n -k2 | sed -n 3p
}
echo
echo "== downloads from server to client with an unmodified curl (cubic, median of 5)"
printf '  %-5s %14s %14s %16s %16s %8s\n' size "direct TTFB s" "direct total s" "halfway TTFB s" "halfway total s" speedup
for size in 10K 100K 1M 10M; do
	read -r dt dT <<<"$(fetch 8090 "$size")"
	read -r ht hT <<<"$(fetch 8080 "$size")"
	awk -v s="$size" -v dt="$dt" -v dT="$dT" -v ht="$ht" -v hT="$hT" \
		'BEGIN {printf "  %-5s %14.3f %14.3f %16.3f %16.3f %7.2fx\n", s, dt, dT, ht, hT, dT/hT}'
done
echo
echo "== what the Miniproxy model predicts on this path (bin/halfway model -f $topo --turbo-iw 4000)"
$hw model -f "$topo" --turbo-iw 4000 | sed 's/^/  /'
echo
echo "halfway here: TPROXY capture at rc with early SYN, a pooled Convert hop to rs,"
echo "Turbo-Start on the rc–rs leg (see docs/relay.md#acceleration; bin/halfway bench accel measures it all)."
echo "rc's pool, from its admin API:"
$hw lab exec --lab ktcp rc -- curl -s http://127.0.0.1:9190/api/status | python3 -c 'import json,sys; [print("  ", p) for p in json.load(sys.stdin)["pools"]]'
echo "Relay logs: one line per flow, e.g.:"
grep 'msg=flow' "$work/rc.log" | tail -1 | cut -c1-200
