#!/usr/bin/env bash
# Instructions per FastCGI GET of `myflask serve` with the management
# endpoints off (all three paths ""), with /metrics only (recording on), and
# with all three (the defaults: the status page adds the in-flight
# registry), counted by callgrind. Each configuration runs twice, with N1 and N2 requests on one
# keep-alive connection (bench/fcgi_count.py); (Ir(N2) - Ir(N1)) / (N2 - N1)
# cancels start-up, shutdown and first-request warm-up. Access log off
# (--log-level warn): the metrics then pay for their own clock reads.
#
# With FRESH=1 every request opens its own connection without KEEP_CONN
# (nginx with no upstream keepalive), so the figure is instructions per
# connection: accept, the request, the close. With DEBIAN=1 the params are
# those of nginx with Debian's `fastcgi_params` (the bench's configuration
# (c)) instead of the package snippet's.
#
# usage: bench/callgrind.sh [BIN]   (default target/release/myflask)
# env:   N1 (1000), N2 (6000), URI (/), EXTRA (more serve flags for both), FRESH, DEBIAN,
#        LOG (--log-level, default warn; "warn,myflask::access=off" is the bench peers' setting:
#        with the access log off no request tallies its written bytes)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/myflask}
N1=${N1:-1000}
N2=${N2:-6000}
URI=${URI:-/}
dir=$(mktemp -d /run/myflask-cg.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$dir"' EXIT

# total Ir of one run: label n flags...
run() {
  local label=$1 n=$2
  shift 2
  local sock="$dir/$label.sock" out="$dir/$label.$n.cg"
  rm -f "$sock"
  # shellcheck disable=SC2086
  valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" serve \
    --listen "unix:$sock" --log-level "${LOG:-warn}" ${EXTRA:-} "$@" 2>"$dir/$label.$n.log" &
  local pid=$!
  for _ in $(seq 600); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || { cat "$dir/$label.$n.log" >&2; exit 1; }
  python3 bench/fcgi_count.py ${FRESH:+--fresh} ${DEBIAN:+--debian} "$sock" "$n" "$URI" >/dev/null
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

per_request() {
  local label=$1
  shift
  local a b
  a=$(run "$label" "$N1" "$@")
  b=$(run "$label" "$N2" "$@")
  echo $(( (b - a) / (N2 - N1) ))
}

off=$(per_request off --status-path "" --metrics-path "" --ping-path "")
metrics=$(per_request metrics --status-path "" --ping-path "")
all=$(per_request all)
echo "instructions per ${FRESH:+connection (one }GET $URI${FRESH:+)}${DEBIAN:+ (Debian params)}: off $off, metrics only $metrics, all three on $all"
awk -v off="$off" -v m="$metrics" -v a="$all" 'BEGIN {
  printf "throughput ratio ~ off/on: metrics only %.4f, all three %.4f\n", off / m, off / a }'
