#!/usr/bin/env bash
# fetch-reference.sh TARGETDIR
#
# Unpacks the newest reference plugins (containernetworking-plugins from Debian's unstable
# suite, 1.9.1 at the time of writing) into TARGETDIR/reference-<version>/, for the benchmark
# and differential tests beside Debian 12's 1.1.1 in /usr/lib/cni. The Go binaries are static
# and run on Debian 12. Prints the directory.
#
# The package is fetched with a private, throw-away apt configuration for the mirror apt already
# uses, so /etc/apt, the system's lists and the installed packages are untouched. Needs network
# access to that mirror only. Idempotent: a directory that already holds the plugins is kept.
set -euo pipefail
source "$(dirname "$0")/private-apt.sh"

[[ $# -eq 1 ]] || { echo "usage: $0 TARGETDIR" >&2; exit 2; }
target=$1
plugins=(bridge host-local loopback portmap)

have() { for p in "${plugins[@]}"; do [[ -x $1/$p ]] || return 1; done; }
for dir in "$target"/reference-*; do
    have "$dir" && { echo "$dir"; exit 0; }
done

# The mirror apt is configured to take the installed release from (its sources, not the
# security or updates suites), exactly as written there.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[[ -n $codename ]] || { echo "$0: no VERSION_CODENAME in /etc/os-release" >&2; exit 1; }
uri=$(apt-get indextargets --format '$(REPO_URI)' 'Created-By: Packages' "Release: $codename" |
    head -n 1)
[[ -n $uri ]] || {
    echo "$0: apt has no source for release $codename (apt-get indextargets)" >&2
    exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{deb,x}
private_apt "$tmp" deb "${uri%/} unstable main" -o Dir::State::Status=/dev/null
(cd "$tmp/deb" && apt-get "${apt_private[@]}" download -q containernetworking-plugins >/dev/null)
deb=$(echo "$tmp"/deb/*.deb)
version=$(dpkg-deb -f "$deb" Version)
upstream=${version%%+*}
upstream=${upstream%%-*}

dpkg-deb -x "$deb" "$tmp/x"
out=$target/reference-$upstream
mkdir -p "$out"
for p in "${plugins[@]}"; do
    install -m 0755 "$tmp/x/usr/lib/cni/$p" "$out/$p"
done
echo "$version" >"$out/VERSION"
echo "$out"
