# private-apt.sh: sourced by the scripts that fetch reference binaries.
#
# private_apt DIR TYPE REST [APT-OPTION...]
#   Sets up a private, throw-away apt configuration under DIR whose only source is
#   "TYPE REST" (TYPE: deb or deb-src; Debian's archive keyring when present), updates its
#   lists, and leaves the apt-get options that use it in the array apt_private. /etc/apt and
#   the system's lists are untouched.
private_apt() {
    local dir=$1 type=$2 rest=$3
    shift 3
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg opt=""
    [[ -f $keyring ]] && opt="[signed-by=$keyring] "
    mkdir -p "$dir"/{parts,lists/partial,cache/archives/partial}
    echo "$type ${opt}$rest" >"$dir/sources.list"
    apt_private=(
        -o Dir::Etc::SourceList="$dir/sources.list"
        -o Dir::Etc::SourceParts="$dir/parts"
        -o Dir::State::Lists="$dir/lists"
        "$@"
        -o Dir::Cache="$dir/cache"
        -o APT::Sandbox::User=root
    )
    apt-get "${apt_private[@]}" update -q >/dev/null
}
