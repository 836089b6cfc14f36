#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit tests, and the black-box conformance suites
# in private network namespaces (needs root), then builds the .deb and the tarball and checks
# them (scripts/check-package.sh). Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
conformance/scripts/build-go-cnitool.sh target/go-cnitool >/dev/null
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked
cargo nextest run --workspace --locked --no-fail-fast
scripts/check-package.sh

# Tests name everything they create rcni-*; nothing may be left behind.
left=$(ip netns list | awk '$1 ~ /^rcni-/ {print $1}')
if [[ -n $left ]]; then
    echo "tests left network namespaces behind: ${left//$'\n'/ }" >&2
    exit 1
fi
echo "all tests passed"
