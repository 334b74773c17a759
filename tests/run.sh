#!/usr/bin/env bash
# The test command (README's second command; .ci/run calls exactly this).
#
# On a fresh Debian 12 machine it installs what the tests need, then runs:
# formatting and lint checks, the unit and integration tests (real nginx,
# real systemd-socket-activate, real sockets), and the end-to-end test of
# the .debs (myflask's and the example app's, built by `cargo myflask deb`)
# under a real systemd (tests/systemd/run.sh).
#
# MYFLASK_SKIP_E2E=1 leaves out the systemd bed (for a quick local run).
set -euo pipefail
cd "$(dirname "$0")/.."
exec </dev/null

tests/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
# --workspace: the library, cargo-myflask (the packaging tool) and the
# example app (examples/hello-app).
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace

if [ "${MYFLASK_SKIP_E2E:-0}" != 1 ]; then
  echo "== end to end under a real systemd"
  tests/systemd/run.sh
fi
