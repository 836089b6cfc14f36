#!/usr/bin/env bash
# Sets everything up on a fresh Debian 12 machine (root) and runs the main job: builds the
# release binaries and attaches a fresh network namespace through a network configuration,
# with our cnitool, exactly as a runtime would. Nothing outside the demo's own namespaces and
# temporary directory is changed.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
cargo build --release --workspace --locked
bin=$PWD/target/release

work=$(mktemp -d)
ns=rcni-demo-$$
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/net.d"
cat >"$work/net.d/10-demo.conflist" <<'JSON'
{
  "cniVersion": "1.1.0",
  "name": "demo",
  "plugins": [ { "type": "loopback" } ]
}
JSON
export NETCONFPATH=$work/net.d CNI_PATH=$bin CNI_CACHE_DIR=$work/cache

ip netns add "$ns"
echo "== ADD: attach /run/netns/$ns to network 'demo'"
"$bin/cnitool" add demo "/run/netns/$ns"
echo
echo "== the namespace now:"
ip -n "$ns" addr show dev lo
ip netns exec "$ns" ping -c 1 -W 1 127.0.0.1 | tail -2
echo "== CHECK"
"$bin/cnitool" check demo "/run/netns/$ns" && echo ok
echo "== DEL"
"$bin/cnitool" del demo "/run/netns/$ns" && ip -n "$ns" link show dev lo | head -1
