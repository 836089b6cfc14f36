#!/usr/bin/env bash
# The release build of the plugins, cnitool and the benchmark, statically linked as the
# reference Go plugins are: they run on any host whatever its libc, and a plugin starts
# without the dynamic loader (~0.4 ms less per process here, and a chain ADD starts four).
# Prints the directory that holds them: target/<host triple>/release.
#
#   scripts/build.sh [cargo build options]
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
[[ -n $host ]] || { echo "build.sh: rustc does not name its host" >&2; exit 1; }
# With --target, RUSTFLAGS reach only what runs on the node, not build scripts or proc macros
# (which cannot be static).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --workspace --locked --target "$host" "$@" >&2
echo "$PWD/target/$host/release"
