#!/usr/bin/env bash
# Installs what the plugins and the tests need on Debian 12 (root): the kernel tools, the
# reference Go plugins (/usr/lib/cni) for differential tests, the Go cnitool for
# interoperability tests, and dpkg-dev (dpkg-shlibdeps) for scripts/package.sh. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(iproute2 iputils-ping nftables iptables conntrack containernetworking-plugins curl python3
    time dpkg-dev strace)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
fi

command -v cargo >/dev/null || {
    echo "cargo not found: install Rust first (https://rustup.rs), then re-run" >&2
    exit 1
}
