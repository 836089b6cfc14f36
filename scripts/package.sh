#!/usr/bin/env bash
# Builds the release binaries and packages them in target/dist/ (root not needed):
#
#   rcni_<version>_<arch>.deb                    plugins in /opt/cni/bin, cnitool in /usr/bin
#   rcni-plugins-linux-<arch>-v<version>.tgz      plugins and cnitool at the top level, like the
#                                                reference's cni-plugins-linux-<arch>-v*.tgz
#   <each>.sha256                                sha256sum format: `sha256sum -c` in target/dist
#
# <version> is the one the binaries print (libcni/build.rs): the workspace version on a
# `v<version>` tag, else <version>+gitYYYYMMDD.<hash>. Needs dpkg-deb and dpkg-shlibdeps
# (dpkg-dev, part of build-essential). RCNI_MAINTAINER overrides the Maintainer field.
set -euo pipefail
cd "$(dirname "$0")/.."

plugins=(loopback bridge host-local portmap)
maintainer=${RCNI_MAINTAINER:-rcni maintainers <maintainers@users.noreply.h-seed-ce4bfc93.example>}

for tool in cargo dpkg-deb dpkg-shlibdeps; do
    command -v "$tool" >/dev/null || {
        echo "package.sh: $tool not found (dpkg-shlibdeps: apt-get install dpkg-dev)" >&2
        exit 1
    }
done

bin=$(scripts/build.sh)
version=$("$bin/cnitool" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
[[ -n $version && -n $arch ]] || { echo "package.sh: no version or architecture" >&2; exit 1; }

# One timestamp for every file: the commit's, so that the same commit gives the same archives.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

dist=$PWD/target/dist
rm -rf "$dist"
mkdir -p "$dist"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 022

# The package tree, in debian/rcni/ beside a debian/control, where dpkg-shlibdeps expects it.
root=$work/debian/rcni
install -d "$root/DEBIAN" "$root/opt/cni/bin" "$root/usr/bin" "$root/usr/share/doc/rcni"
for p in "${plugins[@]}"; do install -m 0755 "$bin/$p" "$root/opt/cni/bin/$p"; done
install -m 0755 "$bin/cnitool" "$root/usr/bin/cnitool"
install -m 0644 README.md LICENSE "$root/usr/share/doc/rcni/"
# The years from the first commit to this one (this one's alone without git history).
year=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)
first=$(git log --max-parents=0 --format=%cd --date=format:%Y 2>/dev/null | tail -1 || true)
[[ -z $first || $first == "$year" ]] || year=$first-$year
cat >"$root/usr/share/doc/rcni/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: rcni
Comment: CNI plugins (bridge, host-local, loopback, portmap) and cnitool, in Rust.
 The binaries are statically linked with the GNU C Library (LGPL-2.1+; its source is
 the Debian package named in Built-Using) and GCC's runtime library (GPL-3+ with the
 GCC Runtime Library Exception). rcni's whole source is public, so they can be rebuilt
 against a modified C library.

Files: *
Copyright: $year rcni maintainers
License: Apache-2.0

License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License");
 you may not use this file except in compliance with the License.
 You may obtain a copy of the License at
 .
 http://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS,
 WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
 See the License for the specific language governing permissions and
 limitations under the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0
 can be found in "/usr/share/common-licenses/Apache-2.0".
EOF
chmod 0644 "$root/usr/share/doc/rcni/copyright"

printf 'Source: rcni\n\nPackage: rcni\nArchitecture: any\n' >"$work/debian/control"
depends=$(cd "$work" && dpkg-shlibdeps -O "${plugins[@]/#/-e$root/opt/cni/bin/}" "-e$root/usr/bin/cnitool" 2>/dev/null)
depends=${depends#shlibs:Depends=}
# The binaries are static (scripts/build.sh): no library to depend on; the C library built in
# is named, as Debian does for static links, so its source stays findable.
[[ -z $depends ]] || { echo "package.sh: the binaries are not static: $depends" >&2; exit 1; }
built_using=$(dpkg-query -W -f '${source:Package} (= ${source:Version})' libc6-dev)
# As dpkg-gencontrol counts: KiB per file, rounded up, and one per directory.
installed_size=$(cd "$root" && find . -path ./DEBIAN -prune -o \( -type f -printf '%s\n' \) -o \
    \( -type d -printf '1024\n' \) | awk '{ n += int(($1 + 1023) / 1024) } END { print n }')

cat >"$root/DEBIAN/control" <<EOF
Package: rcni
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Built-Using: $built_using
Recommends: nftables
Section: net
Priority: optional
Description: CNI plugins bridge, host-local, loopback, portmap and cnitool, in Rust
 Drop-in replacements for the reference CNI plugins of containernetworking/plugins
 (same binary names, config keys, results and on-disk state), on nftables by default,
 plus a cnitool compatible with the Go one.
 .
 The plugins go to /opt/cni/bin and cnitool to /usr/bin. Debian's
 containernetworking-plugins keeps the reference plugins in /usr/lib/cni, so both
 packages can be installed together: a runtime runs the first plugin of a given
 name in its plugin directories, in their order (CRI-O plugin_dirs, containerd
 bin_dir, Podman cni_plugin_dirs). Put /opt/cni/bin first to use these.
EOF
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
find "$root" -type d -exec chmod 0755 {} +

deb=rcni_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$dist/$deb" >/dev/null

# The tarball: members without a directory prefix, root-owned, in a fixed order.
tgz=rcni-plugins-linux-${arch}-v${version}.tgz
stage=$work/tgz
install -d "$stage"
for p in "${plugins[@]}" cnitool; do install -m 0755 "$bin/$p" "$stage/$p"; done
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
    -cf - "${plugins[@]}" cnitool | gzip -9n >"$dist/$tgz"

cd "$dist"
for f in "$deb" "$tgz"; do sha256sum "$f" >"$f.sha256"; done
ls -1 "$dist"/*
