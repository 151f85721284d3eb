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
	$hw lab exec client -- ping -c 4 -i 0.3 -q "$dst" | awk -v d="$dst" '/rtt/ {split($4, a, "/"); printf "  client → %-6s min %s ms  avg %s ms\n", d, a[1], a[2]}'
done

# Relays: rc takes SOCKS5/HTTP CONNECT from the client and sends flows to
# the server's network through rs, authenticated with a fresh key.
head -c 32 /dev/urandom | base64 >"$work/psk"
for r in rc rs; do
	sed "s|/etc/halfway/psk|$work/psk|" "examples/relay/$r.yaml" >"$work/$r.yaml"
	$hw relay -c "$work/$r.yaml" --check >/dev/null
	$hw lab exec "$r" -- "$hw" relay -c "$work/$r.yaml" >"$work/$r.log" 2>&1 &
	disown # lab down ends it
done

mkdir -p "$work/www"
for size in 10K 100K 1M 10M; do head -c "$size" /dev/urandom >"$work/www/$size"; done
$hw lab exec server -- python3 -m http.server --bind 0.0.0.0 --directory "$work/www" 8080 >/dev/null 2>&1 &
disown
for _ in $(seq 50); do
	$hw lab exec client -- curl -s -o /dev/null http://server:8080/ && break
	sleep 0.2
done
# Warm up once through the relays (the first hop learns rs's Fast Open cookie).
$hw lab exec client -- curl -s -o /dev/null --socks5 rc:1080 http://server:8080/10K

fetch() { # fetch MODE SIZE → "ttfb total", median of 3
	local mode=$1 size=$2 args=()
	[ "$mode" = halfway ] && args=(--socks5 rc:1080)
	for _ in 1 2 3; do
		$hw lab exec client -- curl -s -o /dev/null "${args[@]}" -w '%{time_starttransfer} %{time_total}\n' "http://server:8080/$size"
	done | sort -n -k2 | sed -n 2p
}
echo
echo "== downloads from server to client (cubic, median of 3)"
printf '  %-5s %14s %14s %16s %16s %8s\n' size "direct TTFB s" "direct total s" "halfway TTFB s" "halfway total s" speedup
for size in 10K 100K 1M 10M; do
	read -r dt dT <<<"$(fetch direct "$size")"
	read -r ht hT <<<"$(fetch halfway "$size")"
	awk -v s="$size" -v dt="$dt" -v dT="$dT" -v ht="$ht" -v hT="$hT" \
		'BEGIN {printf "  %-5s %14.3f %14.3f %16.3f %16.3f %7.2fx\n", s, dt, dT, ht, hT, dT/hT}'
done
echo
echo "== what the Miniproxy model predicts on this path (bin/halfway model -f $topo)"
$hw model -f "$topo" | sed 's/^/  /'
echo
echo "halfway here is the relay core: SOCKS5 to rc, then a Convert hop in a Fast Open SYN to rs."
echo "Early SYN, connection pools and Turbo-Start come with the acceleration issue."
echo "Relay logs: one line per flow, e.g.:"
grep 'msg=flow' "$work/rs.log" | tail -1 | cut -c1-200
