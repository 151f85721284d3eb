#!/usr/bin/env bash
# make demo: bring up the KTCP lab topology and show what it measures.
# Relays come with the relay issue; until then this shows the testbed.
set -euo pipefail
cd "$(dirname "$0")/.."
hw=./bin/halfway
topo=examples/ktcp.yaml
www=$(mktemp -d)
cleanup() {
	$hw lab down ktcp >/dev/null 2>&1 || true
	rm -rf "$www"
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then
	echo "make demo needs root: it creates network namespaces" >&2
	exit 1
fi
$hw lab down ktcp >/dev/null 2>&1 || true
$hw lab up "$topo"
echo
echo "== ping RTTs from client (configured: rc 32.7 ms, rs 247.7 ms, server 273.7 ms)"
for dst in rc rs server; do
	$hw lab exec client -- ping -c 4 -i 0.3 -q "$dst" | awk -v d="$dst" '/rtt/ {split($4, a, "/"); printf "  client → %-6s min %s ms  avg %s ms\n", d, a[1], a[2]}'
done

echo
echo "== HTTP downloads from server to client, end to end (no relay yet)"
for size in 10K 100K 1M 10M; do head -c "$size" /dev/urandom >"$www/$size"; done
$hw lab exec server -- python3 -m http.server --bind 0.0.0.0 --directory "$www" 8080 >/dev/null 2>&1 &
for _ in $(seq 50); do
	$hw lab exec client -- curl -s -o /dev/null http://server:8080/ && break
	sleep 0.2
done
printf '  %-6s %10s %10s\n' size "TTFB s" "total s"
for size in 10K 100K 1M 10M; do
	$hw lab exec client -- curl -s -o /dev/null -w "  $size %{time_starttransfer} %{time_total}\n" "http://server:8080/$size" |
		awk '{printf "  %-6s %10.3f %10.3f\n", $1, $2, $3}'
done
echo
$hw lab status ktcp | sed -n '/LINK/,$p'
echo
echo "lab ktcp is removed on exit; bring it up yourself with: $hw lab up $topo"
