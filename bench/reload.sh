#!/bin/sh
# The reload point (bench/reload.py): installs nginx-light and Debian's
# python3-matplotlib if missing, builds myflask, then runs a restart and a
# reload of myflask behind nginx under steady load with a 10 s request in
# flight, and writes bench/results/reload.md and reload.png.
#
#   bench/reload.sh [reload.py options, e.g. --clients 8]
#   BENCH_SKIP_INSTALL=1   do not touch apt
#
# Debian 12. Needs root: apt-get, and nginx runs as `user root` to reach
# the socket in a private temporary directory.
set -eu

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
say() { printf '%s\n' "bench/reload.sh: $*" >&2; }

PKGS="nginx-light python3-matplotlib"
if [ -z "${BENCH_SKIP_INSTALL:-}" ]; then
    MISSING=
    for p in $PKGS; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || MISSING="$MISSING $p"
    done
    if [ -n "$MISSING" ]; then
        say "installing:$MISSING"
        # As bench/run.sh: one retry after apt-get update.
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $MISSING ||
            { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $MISSING; }
    fi
fi

say "building myflask (cargo build --release in $REPO)"
(cd "$REPO" && cargo build --release --quiet --bin myflask)
# Debian's python3, which has python3-matplotlib (not a venv's or pyenv's).
exec /usr/bin/python3 "$BENCH/reload.py" --binary "$REPO/target/release/myflask" "$@"
