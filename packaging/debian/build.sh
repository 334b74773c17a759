#!/bin/bash
# Build the release binary and the Debian package myflask_<version>-<rev>_<arch>.deb.
#
#   packaging/debian/build.sh [--no-build] [--install-tools] [-- CARGO-DEB-ARGS...]
#
# Output: ${CARGO_TARGET_DIR:-target}/debian/myflask_<version>-<rev>_<arch>.deb;
# its path is printed as the last line on stdout (all other output: stderr).
#   --no-build       package the already built ${CARGO_TARGET_DIR:-target}/release/myflask
#   --install-tools  install cargo-deb (cargo install --locked, ~40 s on 2 cores) if missing
# Needs: cargo, cargo-deb 3.x, gzip, dpkg-parsechangelog (dpkg-dev), and the
# [package.metadata.deb] table in Cargo.toml.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

build=1 install_tools=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --install-tools) install_tools=1 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "build.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

grep -q '^\[package\.metadata\.deb\]' Cargo.toml ||
    die "Cargo.toml has no [package.metadata.deb] table"

if ! cargo deb --version >/dev/null 2>&1; then
    [ "$install_tools" = 1 ] || die "cargo-deb is not installed (cargo install --locked cargo-deb, or pass --install-tools)"
    log "installing cargo-deb"
    cargo install --locked cargo-deb >&2
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
case "$target_dir" in /*) ;; *) target_dir=$root/$target_dir ;; esac
bin=$target_dir/release/myflask

# The Debian changelog must describe this version.
crate_version=$(cargo metadata --no-deps --format-version 1 --locked 2>/dev/null |
    python3 -c 'import json,sys; print([p for p in json.load(sys.stdin)["packages"] if p["name"]=="myflask"][0]["version"])') ||
    die "cannot read the crate version (cargo metadata)"
if grep -q '^revision *=' Cargo.toml; then   # cargo-deb's default revision is "1"
    revision=$(sed -n 's/^revision *= *"\(.*\)".*/\1/p' Cargo.toml | head -n1)
else
    revision=1
fi
deb_version=$crate_version${revision:+-$revision}
cl_version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
[ "$cl_version" = "$deb_version" ] ||
    die "packaging/debian/changelog is at $cl_version but the package is $deb_version: add a changelog entry (dch -v $deb_version)"

if [ "$build" = 1 ]; then
    log "cargo build --release --locked"
    cargo build --release --locked >&2
fi
[ -x "$bin" ] || die "$bin does not exist (build it, or drop --no-build)"

# Man page myflask(8), generated from the CLI by the hidden `myflask manpage` subcommand.
gen=$root/target/debian-gen
mkdir -p "$gen"
if ! "$bin" manpage >"$gen/myflask.8.tmp" 2>"$gen/manpage.err"; then
    cat "$gen/manpage.err" >&2
    die "'$bin manpage' failed: the binary must have a (hidden) 'manpage' subcommand printing roff for myflask(8)"
fi
grep -Eiq '^\.TH "?myflask"? "?8"?' "$gen/myflask.8.tmp" ||
    die "'$bin manpage' did not print a section-8 man page (no '.TH myflask 8' line)"
mv "$gen/myflask.8.tmp" "$gen/myflask.8"
gzip -9nf -c "$gen/myflask.8" >"$gen/myflask.8.gz"

# Every MYFLASK_* setting the server knows should be documented in /etc/default/myflask.
if help=$("$bin" serve --help 2>/dev/null); then
    missing=$(grep -o 'MYFLASK_[A-Z_]*' <<<"$help" | sort -u | while read -r v; do
        grep -q "^#\?$v=" packaging/debian/myflask.default || echo "$v"; done)
    [ -z "$missing" ] || die "not documented in packaging/debian/myflask.default: $missing"
fi

log "cargo deb"
cargo deb --no-build --locked "${extra[@]}" >&2

deb=$target_dir/debian/myflask_${deb_version}_$(dpkg --print-architecture).deb
[ -f "$deb" ] || die "expected $deb was not produced"
log "built $deb"
echo "$deb"
