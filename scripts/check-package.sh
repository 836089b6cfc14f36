#!/usr/bin/env bash
# Builds the packages (scripts/package.sh) and checks what is in them, as CI does (root, for the
# network namespaces): the .deb's control fields, exact file list, modes, md5sums and
# Installed-Size, and that dpkg installs and removes it; the .sha256 files; the tarball's
# members; every packaged binary's VERSION answer and version; and one ADD/CHECK/DEL of the demo
# chain (loopback + bridge + host-local + portmap) with the unpacked cnitool and plugins, inside
# a private "node" namespace. dpkg installs the .deb only into a private root with its own
# database: the machine's own /opt/cni/bin, dpkg database and network namespace are never
# touched.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) == 0 ]] || { echo "check-package.sh: needs root (network namespaces)" >&2; exit 1; }
plugins=(bridge host-local loopback portmap)

fail() {
    echo "check-package.sh: $*" >&2
    exit 1
}
# same WHAT EXPECTED ACTUAL
same() { [[ $2 == "$3" ]] || fail "$1: expected [$2], got [$3]"; }

scripts/package.sh >/dev/null

# The version, derived here independently of libcni/build.rs.
base=$(cargo pkgid -p libcni | sed 's/.*[#@]//')
if [[ -n ${RCNI_VERSION:-} ]]; then
    version=$RCNI_VERSION
elif ! git rev-parse --git-dir >/dev/null 2>&1 || git tag --points-at HEAD | grep -qx "v$base"; then
    version=$base
else
    version=$base+git$(TZ=UTC git log -1 --format=%cd.%h --abbrev=7 --date=format-local:%Y%m%d)
fi
arch=$(dpkg --print-architecture)
deb=rcni_${version}_${arch}.deb
tgz=rcni-plugins-linux-${arch}-v${version}.tgz
echo "== package $version ($arch)"

dist=target/dist
same "target/dist" "$(printf '%s\n' "$deb" "$deb.sha256" "$tgz" "$tgz.sha256" | sort)" \
    "$(find "$dist" -mindepth 1 -printf '%P\n' | sort)"
# Checksums: sha256sum format, names without a directory.
for f in "$deb" "$tgz"; do
    [[ $(cat "$dist/$f.sha256") =~ ^[0-9a-f]{64}\ \ "$f"$ ]] || fail "$f.sha256: bad format"
done
(cd "$dist" && sha256sum --quiet -c "$deb.sha256" "$tgz.sha256") || fail "checksums"

work=$(mktemp -d)
id=$$
node=rcni-pkg-node-$id ctr=rcni-pkg-ctr-$id
cleanup() {
    for ns in "$ctr" "$node"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Control fields.
field() { dpkg-deb -f "$dist/$deb" "$1"; }
same Package rcni "$(field Package)"
same Version "$version" "$(field Version)"
same Architecture "$arch" "$(field Architecture)"
same Section net "$(field Section)"
same Priority optional "$(field Priority)"
same Recommends nftables "$(field Recommends)"
[[ $(field Maintainer) =~ ^[^\<]+\ \<[^@\>]+@[^\>]+\>$ ]] || fail "Maintainer: $(field Maintainer)"
# Static binaries: no Depends, the C library built in named in Built-Using.
same Depends "" "$(field Depends)"
[[ $(field Built-Using) =~ ^glibc\ \(=\ [^\)]+\)$ ]] || fail "Built-Using: $(field Built-Using)"
[[ $(field Description) == *"/usr/lib/cni"*"/opt/cni/bin first"* ]] ||
    fail "Description does not say which plugins a runtime uses"
dpkg --compare-versions "$version" ge "$base" || fail "$version sorts before $base"
same "control members" "$(printf '%s\n' ./ ./control ./md5sums)" \
    "$(dpkg-deb --ctrl-tarfile "$dist/$deb" | tar -t | sort)"

# The file list: exactly these, root-owned, with these modes.
expected="drwxr-xr-x root/root ./
drwxr-xr-x root/root ./opt/
drwxr-xr-x root/root ./opt/cni/
drwxr-xr-x root/root ./opt/cni/bin/
-rwxr-xr-x root/root ./opt/cni/bin/bridge
-rwxr-xr-x root/root ./opt/cni/bin/host-local
-rwxr-xr-x root/root ./opt/cni/bin/loopback
-rwxr-xr-x root/root ./opt/cni/bin/portmap
drwxr-xr-x root/root ./usr/
drwxr-xr-x root/root ./usr/bin/
-rwxr-xr-x root/root ./usr/bin/cnitool
drwxr-xr-x root/root ./usr/share/
drwxr-xr-x root/root ./usr/share/doc/
drwxr-xr-x root/root ./usr/share/doc/rcni/
-rw-r--r-- root/root ./usr/share/doc/rcni/LICENSE
-rw-r--r-- root/root ./usr/share/doc/rcni/README.md
-rw-r--r-- root/root ./usr/share/doc/rcni/copyright"
same "file list" "$expected" "$(dpkg-deb -c "$dist/$deb" | awk '{print $1, $2, $6}' | sort -k3)"

root=$work/deb
dpkg-deb -x "$dist/$deb" "$root"
dpkg-deb -e "$dist/$deb" "$work/DEBIAN"
(cd "$root" && md5sum --quiet -c "$work/DEBIAN/md5sums") || fail "md5sums"
same "md5sums entries" "$(cd "$root" && find . -type f -printf '%P\n' | sort)" \
    "$(awk '{print $2}' "$work/DEBIAN/md5sums" | sort)"
size=$(cd "$root" && find . \( -type f -printf '%s\n' \) -o \( -type d ! -name . -printf '1024\n' \) |
    awk '{ n += int(($1 + 1023) / 1024) } END { print n + 1 }')
same Installed-Size "$size" "$(field Installed-Size)"
cmp -s LICENSE "$root/usr/share/doc/rcni/LICENSE" || fail "LICENSE differs"
cmp -s README.md "$root/usr/share/doc/rcni/README.md" || fail "README.md differs"
grep -qx 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/' \
    "$root/usr/share/doc/rcni/copyright" || fail "copyright is not machine-readable"
grep -qx 'License: Apache-2.0' "$root/usr/share/doc/rcni/copyright" || fail "copyright: license"
# Nothing may overlap Debian's reference plugins, so that both packages install together.
if dpkg-query -W containernetworking-plugins >/dev/null 2>&1; then
    overlap=$(comm -12 <(dpkg -L containernetworking-plugins | while read -r f; do
        [[ -d $f ]] || echo "$f"; done | sort) <(cd "$root" && find . -type f -printf '/%P\n' | sort))
    same "files shared with containernetworking-plugins" "" "$overlap"
fi

# dpkg itself installs and removes it, in a private root with its own database (never the
# machine's): the installed tree is the unpacked one, and removal leaves no file behind.
inst=$work/inst
mkdir -p "$inst/root" "$inst/admin/updates" "$inst/admin/info"
touch "$inst/admin/status" "$inst/admin/available"
instdpkg() { dpkg --instdir="$inst/root" --admindir="$inst/admin" --log=/dev/null "$@"; }
instdpkg --force-depends -i "$dist/$deb" >/dev/null 2>&1 || fail "dpkg -i into a private root failed"
same "dpkg status" "install ok installed $version" \
    "$(dpkg-query --admindir="$inst/admin" -W -f '${Status} ${Version}' rcni)"
diff -r "$root" "$inst/root" >/dev/null || fail "dpkg installed something else than the package holds"
instdpkg --force-depends -r rcni >/dev/null 2>&1 || fail "dpkg -r in the private root failed"
same "files left after dpkg -r" "" "$(find "$inst/root" -type f)"

# The tarball: the same five binaries at the top level, root-owned, 0755.
same "tarball members" "$(printf '%s\n' bridge cnitool host-local loopback portmap)" \
    "$(tar -tzf "$dist/$tgz" | sort)"
tar -tvzf "$dist/$tgz" | awk '$1 != "-rwxr-xr-x" || $2 != "0/0" { bad = 1; print } END { exit bad }' ||
    fail "tarball members must be 0755 0/0"
mkdir "$work/tgz" && tar -C "$work/tgz" -xzf "$dist/$tgz"
for p in "${plugins[@]}"; do
    cmp -s "$work/tgz/$p" "$root/opt/cni/bin/$p" || fail "$p differs between .deb and tarball"
done
cmp -s "$work/tgz/cnitool" "$root/usr/bin/cnitool" || fail "cnitool differs between .deb and tarball"

# Every binary is static, speaks the protocol and carries the version.
for b in "${plugins[@]/#//opt/cni/bin/}" /usr/bin/cnitool; do
    ! readelf -lW "$root$b" | grep -q 'program interpreter' || fail "$b is dynamically linked"
done
for p in "${plugins[@]}"; do
    out=$(echo '{"cniVersion":"1.0.0"}' | env -i CNI_COMMAND=VERSION "$root/opt/cni/bin/$p")
    [[ $out == '{"cniVersion":"1.0.0","supportedVersions":['*'"1.0.0"'*']}' ]] ||
        fail "$p VERSION: $out"
    same "$p about text" "CNI $p plugin $version (Rust)" \
        "$(env -i "$root/opt/cni/bin/$p" </dev/null 2>&1 | head -1)"
done
same "cnitool --version" "cnitool $version" "$("$root/usr/bin/cnitool" --version)"
echo "== contents ok: $deb, $tgz"

# One ADD/DEL of the demo chain from the unpacked tree, in a private node namespace.
ip netns add "$node"
ip netns add "$ctr"
ip -n "$node" link set lo up
mkdir -p "$work/net.d"
cat >"$work/net.d/10-pkg.conflist" <<JSON
{
  "cniVersion": "1.1.0",
  "name": "pkg",
  "plugins": [
    { "type": "loopback" },
    { "type": "bridge", "bridge": "cni0", "isDefaultGateway": true, "ipMasq": true,
      "ipam": { "type": "host-local", "dataDir": "$work/leases",
                "ranges": [[{ "subnet": "10.89.0.0/24" }]] } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON
cnitool() {
    ip netns exec "$node" env NETCONFPATH="$work/net.d" CNI_PATH="$root/opt/cni/bin" \
        CNI_CACHE_DIR="$work/cache" \
        CAP_ARGS='{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}' \
        "$root/usr/bin/cnitool" "$@"
}
result=$(cnitool add pkg "/run/netns/$ctr") || fail "ADD failed: $result"
[[ $result == *'"address": "10.89.0.2/24"'* ]] || fail "ADD result: $result"
ip -n "$ctr" -br addr show dev eth0 | grep -q ' 10\.89\.0\.2/24' || fail "no address in the container"
ip netns exec "$ctr" ping -c 1 -W 2 10.89.0.1 >/dev/null || fail "the container cannot reach its gateway"
cnitool check pkg "/run/netns/$ctr" || fail "CHECK failed"
cnitool del pkg "/run/netns/$ctr" || fail "DEL failed"
! ip -n "$ctr" link show eth0 >/dev/null 2>&1 || fail "eth0 left in the container after DEL"
same "leases after DEL" "" "$(find "$work/leases/pkg" -name '10.*')"
echo "== ADD/CHECK/DEL from the unpacked package ok"
