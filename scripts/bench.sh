#!/usr/bin/env bash
# The project's benchmark: our plugins, the reference Go plugins (Debian 12's 1.1.1 in
# /usr/lib/cni and the newest, 1.9.1, unpacked under target/) and the kernel floor (ip + nft
# making the same objects), side by side in one run, inside private namespaces. Root.
#
#   scripts/bench.sh [--reference DIR]... [--quick] [--pods N,N,...] [--out DIR] [...]
#
# Prints a markdown table and leaves OUT/report.md, OUT/report.json and OUT/pods.svg
# (default target/bench). `target/<host triple>/release/rcni-bench --help` lists every option.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
conformance/scripts/build-go-cnitool.sh target/go-cnitool >/dev/null ||
    echo "bench: no Go cnitool, its rows are left out" >&2
conformance/scripts/fetch-reference.sh target >/dev/null ||
    echo "bench: cannot fetch the newest reference, only /usr/lib/cni is measured" >&2
bin=$(scripts/build.sh)
exec "$bin/rcni-bench" "$@"
