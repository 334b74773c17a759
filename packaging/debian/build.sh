#!/bin/bash
# Build the myflask package, target/debian/myflask_<version>-<rev>_<arch>.deb,
# with `cargo myflask deb` (cargo-myflask/, the tool that packages any app on
# myflask) run on this crate; the settings are [package.metadata.myflask] in
# Cargo.toml. The .deb's path is the last line on stdout.
#
#   packaging/debian/build.sh [--no-build] [--locked]
#
#   --no-build  package the already built ${CARGO_TARGET_DIR:-target}/release/myflask
#   --locked    build with the versions in Cargo.lock only (CI)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --quiet --locked -p cargo-myflask >&2
exec "${CARGO_TARGET_DIR:-target}/debug/cargo-myflask" myflask deb --manifest-path Cargo.toml "$@"
