#!/usr/bin/env bash
# build-go-cnitool.sh OUTDIR
#
# Builds the reference Go `cnitool` (containernetworking/cni, as packaged by
# Debian 12: libcni 1.1.2) into OUTDIR/cnitool, for interoperability tests
# against our Rust cnitool (each must be able to DEL what the other ADDed).
#
# Why this way: CI only reaches Debian's mirrors (no proxy.golang.org, no
# GitHub). Debian's golang-github-appc-cni-dev ships libcni in
# /usr/share/gocode/src but omits cnitool/, so we take cnitool.go from the
# matching *source* package and build it in GOPATH mode against the installed
# libcni. The source package is fetched with a private, throw-away apt
# configuration (deb-src for the mirror the package came from), so neither
# /etc/apt nor the system's apt lists are modified by that step.
#
# Needs root (apt-get install). Idempotent: exits at once if OUTDIR/cnitool
# already exists and runs.
set -euo pipefail
source "$(dirname "$0")/private-apt.sh"

[[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
outdir=$1
bin=$outdir/cnitool

# cnitool without arguments prints its usage (and exits 1).
if [[ -x $bin ]] && [[ $("$bin" 2>&1 || true) == *"network namespace"* ]]; then
    echo "$bin already built"; exit 0
fi

pkgs=(golang-go golang-github-appc-cni-dev dpkg-dev)
export DEBIAN_FRONTEND=noninteractive
apt-cache show "${pkgs[@]}" >/dev/null 2>&1 || apt-get update -q
apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null

# Version and mirror of the installed libcni, as apt-cache policy prints them, e.g.
#   "1.1.2-1"  and  "500 <mirror URI> bookworm/main amd64 Packages"
version=$(dpkg-query -W -f '${Version}' golang-github-appc-cni-dev)
read -r uri suite_comp < <(apt-cache policy golang-github-appc-cni-dev |
    awk '/:\/\// && / Packages$/ { print $2, $3; exit }') || true
[[ -n ${uri:-} ]] || { echo "cannot find the mirror of golang-github-appc-cni-dev" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{src,gopath/src/cnitool}
private_apt "$tmp" deb-src "$uri ${suite_comp%/*} ${suite_comp##*/}"
(cd "$tmp/src" && apt-get "${apt_private[@]}" source -q "golang-github-appc-cni=$version" >/dev/null)

cp "$tmp"/src/golang-github-appc-cni-*/cnitool/cnitool.go "$tmp/gopath/src/cnitool/"
(cd "$tmp/gopath/src/cnitool" &&
    GO111MODULE=off GOPROXY=off GOFLAGS= GOCACHE="$tmp/gocache" CGO_ENABLED=0 \
    GOPATH="$tmp/gopath:/usr/share/gocode" go build -trimpath -o "$tmp/cnitool" .)

mkdir -p "$outdir"
install -m 0755 "$tmp/cnitool" "$bin"
echo "built $bin (cnitool from golang-github-appc-cni $version)"
