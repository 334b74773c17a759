#!/bin/sh
# The myflask benchmark, in one command: installs what it needs, builds
# myflask, the peers and the load generator, then runs every peer one after
# another (bench/bench.py) and writes bench/results/<date>.md/.csv and
# bench/results/latest.md.
#
#   bench/run.sh                      full run (BENCH_DURATION=5 s per point)
#   BENCH_DURATION=10 bench/run.sh    longer points
#   BENCH_QUICK=1 bench/run.sh        smoke: ~1 s per point, every peer; writes
#                                     only under bench/results/raw/, exit 1 on
#                                     any failure or error (CI can run this)
#   BENCH_PEERS=myflask,hyper bench/run.sh   a subset (see bench/README.md)
#   BENCH_SKIP_INSTALL=1              do not touch apt/pip
#   BENCH_BASELINE=<git rev> bench/run.sh   also builds the myflask peer on
#                                     the library at that revision and runs
#                                     it head to head as myflask-base
#
# Debian 12 (bookworm). Needs root (or sudo) for apt-get only.
set -eu

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
BUILD="$BENCH/build"
mkdir -p "$BUILD/bin" "$BENCH/results/raw"

say() { printf '%s\n' "bench/run.sh: $*" >&2; }

# ------------------------------------------------------------- install ----
APT_PKGS="nginx-light libnginx-mod-http-echo wrk php8.2-fpm php8.2-opcache golang-go python3-venv systemd procps"

missing_pkgs() {
    for p in $APT_PKGS; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || printf '%s ' "$p"
    done
}

apt_install() {
    SUDO=
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { say "need root or sudo to install: $*"; exit 1; }
        SUDO=sudo
    fi
    # policy-rc.d-less systems would start the php8.2-fpm/nginx system
    # services on install; the benchmark never uses them.
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; then
        say "apt-get install failed; running apt-get update and retrying once"
        $SUDO apt-get update
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
    fi
}

if [ -z "${BENCH_SKIP_INSTALL:-}" ]; then
    MISSING=$(missing_pkgs)
    if [ -n "$MISSING" ]; then
        say "installing: $MISSING"
        # shellcheck disable=SC2086
        apt_install $MISSING
    fi
fi
for tool in nginx wrk php-fpm8.2 go systemd-socket-activate cargo; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { say "missing $tool"; exit 1; }
done

# --------------------------------------------------------------- build ----
# The baseline: today's bench/peers/myflask (its main.rs, Cargo.toml and
# Cargo.lock) built on the myflask library at revision $1, so the two peers
# differ in the library alone. The revision is checked out with `git
# worktree add --detach` under bench/build/base-<sha>/tree and today's peer
# is copied over that tree's bench/peers/myflask: its `path = "../../.."`
# then names the baseline's library with the manifest as committed (a copy
# elsewhere would need its path, or a [patch] keyed by the path source's
# file:// URL, written into it). Its own CARGO_TARGET_DIR
# (base-<sha>/target) keeps both builds cached. The baseline's `myflask`
# binary is built too, for bench/callgrind.sh.
build_baseline() {
    rev=$(git -C "$REPO" rev-parse --verify --quiet "$1^{commit}") ||
        { say "BENCH_BASELINE=$1 is not a commit of $REPO"; exit 1; }
    base="$BUILD/base-$(git -C "$REPO" rev-parse --short=12 "$rev")"
    tree="$base/tree"
    if [ ! -f "$tree/.git" ] || [ "$(git -C "$tree" rev-parse --verify --quiet HEAD)" != "$rev" ]; then
        say "checking out $1 ($rev) in $tree"
        rm -rf "$tree"
        git -C "$REPO" worktree prune
        git -C "$REPO" worktree add --detach --quiet "$tree" "$rev"
    fi
    peer="$tree/bench/peers/myflask"
    rm -rf "$peer"
    mkdir -p "$peer"
    cp -a "$BENCH/peers/myflask/Cargo.toml" "$BENCH/peers/myflask/Cargo.lock" "$BENCH/peers/myflask/src" "$peer/"
    say "building the myflask peer and myflask on the library at $1 (CARGO_TARGET_DIR=$base/target)"
    (cd "$peer" && CARGO_TARGET_DIR="$base/target" cargo build --release --quiet)
    (cd "$tree" && CARGO_TARGET_DIR="$base/target" cargo build --release --quiet -p myflask --bin myflask)
    say "baseline: $base/target/release/myflask-hello (bench peer), $base/target/release/myflask (for bench/callgrind.sh)"
}

say "building myflask (cargo build --release in $REPO)"
(cd "$REPO" && cargo build --release --quiet)

say "building the load generator and the Rust peers (CARGO_TARGET_DIR=$BUILD/target)"
for d in loadgen peers/myflask peers/tokio-fastcgi peers/hyper peers/floor; do
    (cd "$BENCH/$d" && CARGO_TARGET_DIR="$BUILD/target" cargo build --release --quiet)
done

if [ -n "${BENCH_BASELINE:-}" ]; then
    build_baseline "$BENCH_BASELINE"
fi

say "building the Go peer"
GOCACHE="$BUILD/gocache" GOPATH="$BUILD/gopath" GO111MODULE=off GOFLAGS= \
    go build -o "$BUILD/bin/bench-go" "$BENCH/peers/go/main.go"

if [ ! -x "$BUILD/venv/bin/python" ]; then
    say "creating the Python venv"
    /usr/bin/python3 -m venv "$BUILD/venv"
fi
if ! "$BUILD/venv/bin/python" -c 'import flup, flask' 2>/dev/null; then
    [ -z "${BENCH_SKIP_INSTALL:-}" ] || { say "flup/flask missing in $BUILD/venv"; exit 1; }
    say "installing flup and Flask from PyPI into the venv"
    "$BUILD/venv/bin/pip" install --quiet --disable-pip-version-check 'flup==1.0.3' 'Flask>=3,<4'
fi

# ----------------------------------------------------------------- run ----
exec /usr/bin/python3 "$BENCH/bench.py"
