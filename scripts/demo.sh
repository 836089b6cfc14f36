#!/usr/bin/env bash
# Sets everything up on a fresh Debian 12 machine (root) and runs the main job: builds the
# release binaries and attaches a fresh container namespace to a bridge network
# (loopback + bridge + host-local with masquerade + portmap) through our cnitool, exactly as a
# runtime would; then shows the container reaching its gateway and an "outside" host, and a
# page served in the container fetched through localhost:8080 on the node.
#
# The demo runs inside a private "node" namespace (rcni-demo-node-*), so the machine's own
# network is never touched; everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
bin=$(scripts/build.sh)

id=$$
node=rcni-demo-node-$id ctr=rcni-demo-ctr-$id outside=rcni-demo-out-$id
work=$(mktemp -d)
cleanup() {
    for ns in "$ctr" "$outside" "$node"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# The node, its uplink to an outside host (192.168.77.0/24), and an empty container namespace.
ip netns add "$node"; ip netns add "$outside"; ip netns add "$ctr"
ip -n "$node" link set lo up
ip -n "$node" link add uplink type veth peer name eth0 netns "$outside"
ip -n "$node" addr add 192.168.77.1/24 dev uplink && ip -n "$node" link set uplink up
ip -n "$outside" addr add 192.168.77.2/24 dev eth0 && ip -n "$outside" link set eth0 up

mkdir -p "$work/net.d"
cat >"$work/net.d/10-demo.conflist" <<JSON
{
  "cniVersion": "1.1.0",
  "name": "demo",
  "plugins": [
    { "type": "loopback" },
    { "type": "bridge", "bridge": "cni0", "isDefaultGateway": true, "ipMasq": true,
      "hairpinMode": true,
      "ipam": { "type": "host-local", "dataDir": "$work/leases",
                "ranges": [[{ "subnet": "10.88.0.0/16" }]] } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON
export NETCONFPATH=$work/net.d CNI_PATH=$bin CNI_CACHE_DIR=$work/cache
export CAP_ARGS='{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}'
in_node() { ip netns exec "$node" "$@"; }

echo "== ADD: attach /run/netns/$ctr to network 'demo'"
in_node "$bin/cnitool" add demo "/run/netns/$ctr"
echo
echo "== the container:"
ip -n "$ctr" -br addr
ip -n "$ctr" route
echo "== the container pings its gateway, then the outside host (masqueraded: it has no route back)"
ip netns exec "$ctr" ping -c 1 -W 2 10.88.0.1 | tail -2
ip netns exec "$ctr" ping -c 1 -W 2 192.168.77.2 | tail -2
echo "== a page served in the container, fetched on the node through localhost:8080"
mkdir -p "$work/www" && echo "hello from the container" >"$work/www/index.html"
ip netns exec "$ctr" python3 -m http.server 80 --bind 0.0.0.0 --directory "$work/www" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do in_node curl -s -m 1 http://127.0.0.1:8080/ && break; sleep 0.1; done
kill "$server"
echo "== CHECK"
in_node "$bin/cnitool" check demo "/run/netns/$ctr" && echo ok
echo "== DEL"
in_node "$bin/cnitool" del demo "/run/netns/$ctr"
ip -n "$ctr" -br link
echo "leases left: $(find "$work/leases/demo" -name '10.*' | wc -l)"
echo "port 8080 after DEL: $(in_node curl -s -m 1 -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/ || true)"
