#!/usr/bin/env bash
# Installs the system tools the test suite drives for real: nginx (the web
# server in front), systemd's systemd-socket-activate (socket activation),
# cgi-fcgi (an independent FastCGI client), curl, iproute2 (network
# namespaces), dpkg-dev (the packaging tool's dpkg-shlibdeps), Prometheus with
# promtool and python3-prometheus-client (the metrics checks), and the Rust components
# (rustfmt, clippy). Idempotent; needs root (or sudo) for apt-get.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO="sudo"
fi

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
command -v cgi-fcgi >/dev/null 2>&1 || need+=(libfcgi-bin)
command -v curl >/dev/null 2>&1 || need+=(curl)
# `ip netns`, veth and bridges for tests/multihost.rs.
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
# cargo myflask deb (cargo-myflask/) builds packages with dpkg-deb and dpkg-shlibdeps.
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)
# /metrics is checked by a real Prometheus (scrape + PromQL), its promtool
# (0.0.4 text format) and prometheus_client's strict OpenMetrics parser.
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
/usr/bin/python3 -c 'import prometheus_client.openmetrics.parser' 2>/dev/null || need+=(python3-prometheus-client)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The base image's docker-clean hook can delete .debs between dpkg runs
  # of one apt call; a second try completes the install.
  for try in 1 2 3; do
    if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"; then
      break
    fi
    if [ "$try" = 3 ]; then
      echo "apt-get install ${need[*]} failed" >&2
      exit 1
    fi
    sleep 2
  done
fi

# Debian's nginx and prometheus packages start system instances (ports 80
# and 9090); the tests start their own and do not need them.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl stop nginx prometheus 2>/dev/null || true
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true
