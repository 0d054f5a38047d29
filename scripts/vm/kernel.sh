#!/usr/bin/env bash
# kernel.sh: fetch, unpack and cache a Debian guest kernel for the test VM.
#
#   kernel.sh [--refresh | --offline] [sid | 6.12]
#
# Prints on stdout the directory of the unpacked kernel. Progress and warnings
# go to stderr. The directory holds:
#
#   release           the kernel release (`uname -r` in the guest)
#   vmlinuz           the bzImage
#   vmlinux           the uncompressed ELF kernel, only when it has a PVH entry
#                     point (QEMU can then boot it directly, skipping the
#                     decompressor; that saves 1.3-2 s per boot under TCG)
#   config            the kernel's .config
#   lib/modules/REL/  all modules, with depmod's indexes
#   packages          the Debian packages (name version) it was made from
#   flavor            sid or 6.12
#   .ok               written last: a directory without it is never used
#
# Kernels:
#   sid    the newest generic amd64 kernel in Debian unstable (what its
#          linux-image-amd64 meta package points at). Linux 7.x at the time of
#          writing: it has the "fs/dax: Fix ZONE_DEVICE page reference counts"
#          series (merged in 6.15).
#   6.12   the newest linux-image-6.12.*+deb12-amd64-unsigned of Debian 12
#          (bookworm-security), which predates that series.
# No version is ever pinned: both are looked up in the archive's index, and
# older kernels vanish from these suites.
#
# The packages are unpacked with dpkg-deb, never installed: nothing in /boot,
# /lib/modules or the host's dpkg database changes. The index is read through a
# private apt configuration under the cache, so the host's apt sources and
# lists are never touched either; only the archive addresses are taken from the
# host's apt sources (or from DAXMM_DEBIAN_URI / DAXMM_DEBIAN_SECURITY_URI).
#
# Cache: ${DAXMM_CACHE:-/var/tmp/daxmm-cache}. The index is refreshed at most
# once a day (--refresh forces it). When the archive cannot be reached, the
# last kernel fetched for that flavor is used, with a warning; --offline never
# goes to the network.
set -euo pipefail
shopt -s inherit_errexit

CACHE=${DAXMM_CACHE:-/var/tmp/daxmm-cache}
INDEX_MAX_AGE_MIN=$((24 * 60))
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { printf 'kernel.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# --- the archive ------------------------------------------------------------

# URI of the host's Debian archive (which == main) or security archive
# (which == security), as configured in the host's apt sources.
host_archive_uri() {
    local which=$1 codename=
    if [ "$which" = main ] && [ -n "${DAXMM_DEBIAN_URI:-}" ]; then
        echo "$DAXMM_DEBIAN_URI"; return
    fi
    if [ "$which" = security ] && [ -n "${DAXMM_DEBIAN_SECURITY_URI:-}" ]; then
        echo "$DAXMM_DEBIAN_SECURITY_URI"; return
    fi
    # shellcheck disable=SC1091
    [ -r /etc/os-release ] && codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    # shellcheck disable=SC2016  # $(...) are apt's format fields
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null | sort -u |
        awk -v which="$which" -v codename="$codename" '
            found { next }
            which == "security" && $2 ~ /^[a-z]+-security$/ { print $1; found = 1 }
            which == "main" && codename != "" && $2 == codename { print $1; found = 1 }'
}

# Sets up the private apt configuration for a suite in $1 (directory).
# APT_CONFIG is read before the host's apt.conf.d and the "main" file after it,
# so the host's settings (proxies, Check-Valid-Until, ...) still apply, while
# our main file puts every list, cache and source in the private directory and
# clears the host's hooks: Docker-style images have an APT::Update::Post-Invoke
# hook that deletes /var/cache/apt/archives/*.deb, which would break an
# unrelated `apt-get install` running on the host at the same time.
apt_private_setup() {
    local dir=$1 uri=$2 suite=$3
    mkdir -p "$dir/sources" "$dir/prefs" "$dir/lists/partial" "$dir/cache/archives/partial"
    {
        echo "Types: deb"
        echo "URIs: $uri"
        echo "Suites: $suite"
        echo "Components: main"
        if [ -r "$KEYRING" ]; then echo "Signed-By: $KEYRING"; fi
    } >"$dir/sources/daxmm.sources"
    cat >"$dir/apt.conf" <<EOF
Dir::Etc::main "$dir/main.conf";
EOF
    cat >"$dir/main.conf" <<EOF
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
Dir::Etc::sourcelist "/dev/null";
Dir::Etc::sourceparts "$dir/sources";
Dir::Etc::preferences "/dev/null";
Dir::Etc::preferencesparts "$dir/prefs";
Dir::State::Lists "$dir/lists";
Dir::Cache "$dir/cache";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
Acquire::Languages "none";
EOF
}

papt() { APT_CONFIG="$APTDIR/apt.conf" "$@"; }

index_is_fresh() {
    [ -e "$APTDIR/updated" ] && [ -n "$(find "$APTDIR/updated" -mmin -"$INDEX_MAX_AGE_MIN")" ]
}

# apt-get update exits 0 when it could not reach the archive ("W: Failed to
# fetch ...", old lists kept), so its messages are checked too.
update_index() {
    log "updating the $SUITE index ($URI)"
    if papt apt-get -q -q update >"$APTDIR/update.log" 2>&1 &&
        ! grep -qE '^(E: |W: (Failed to fetch|Some index files failed))' "$APTDIR/update.log"; then
        return 0
    fi
    sed 's/^/    /' "$APTDIR/update.log" >&2
    return 1
}

# (Pipelines here never stop reading early, e.g. with head: under pipefail,
# the writer's SIGPIPE would fail the whole pipeline.)

# "Depends:" of a package's candidate version, one package name per line
# (alternatives and version constraints dropped).
pkg_depends() {
    papt apt-cache show --no-all-versions "$1" |
        sed -n 's/^Depends: //p' | tr ',|' '\n' | sed 's/(.*)//; s/[[:space:]]//g' | sed '/^$/d'
}

pkg_version() {
    papt apt-cache show --no-all-versions "$1" | awk '$1 == "Version:" && !v { v = $2 } END { print v }'
}

# The kernel image package for the flavor, from the index.
resolve_image_package() {
    case $FLAVOR in
    sid)
        pkg_depends linux-image-amd64 | awk '/^linux-image-[0-9]/ && !found { print; found = 1 }'
        ;;
    6.12)
        papt apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' |
            cut -d' ' -f1 | sort -V | tail -n 1
        ;;
    esac
}

# --- the cache --------------------------------------------------------------

kernel_is_valid() { [ -n "$1" ] && [ -e "$1/.ok" ]; }

current_kernel() {
    local dir
    [ -r "$CACHE/$FLAVOR.current" ] || return 1
    dir=$CACHE/kernels/$(cat "$CACHE/$FLAVOR.current")
    kernel_is_valid "$dir" && echo "$dir"
}

set_current() {
    echo "$1" >"$CACHE/$FLAVOR.current.tmp.$$"
    mv -f "$CACHE/$FLAVOR.current.tmp.$$" "$CACHE/$FLAVOR.current"
}

# Keeps the current and the previous kernel of this flavor; a VM started just
# before a refresh may still be using the previous one.
prune_old_kernels() {
    local ok dir keep=2
    # shellcheck disable=SC2012  # newest first; the names have no white space
    ls -1td "$CACHE"/kernels/*/.ok 2>/dev/null | while read -r ok; do
        dir=${ok%/.ok}
        [ "$(cat "$dir/flavor" 2>/dev/null)" = "$FLAVOR" ] || continue
        if [ "$keep" -gt 0 ]; then keep=$((keep - 1)); continue; fi
        log "removing old kernel $dir"
        rm -rf "$dir"
    done
}

# linux-image-6.12.117+deb12-amd64-unsigned -> 6.12.117+deb12-amd64
kernel_release() {
    local rel=${1#linux-image-}
    echo "${rel%-unsigned}"
}

# Extracts the compressed vmlinux from a bzImage. The x86 boot header says
# where it is: the protected-mode code starts after (setup_sects + 1) 512-byte
# sectors (setup_sects at 0x1f1; 0 means 4) and the payload is at
# payload_offset (0x248) from there, payload_length (0x24c) bytes long.
extract_vmlinux() {
    local bz=$1 out=$2 setup_sects offset length magic
    setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
    [ "$setup_sects" = 0 ] && setup_sects=4
    offset=$(od -An -tu4 -j $((0x248)) -N4 "$bz" | tr -d ' ')
    length=$(od -An -tu4 -j $((0x24c)) -N4 "$bz" | tr -d ' ')
    offset=$(((setup_sects + 1) * 512 + offset))
    magic=$(od -An -tx1 -j "$offset" -N4 "$bz" | tr -d ' ')
    local -a decompress
    case $magic in
    1f8b*) decompress=(gzip -dc) ;;
    fd377a58) decompress=(xz -dc) ;;
    28b52ffd) decompress=(zstd -dcq) ;;
    *) log "unknown bzImage payload compression (magic $magic): no vmlinux"; return 1 ;;
    esac
    command -v "${decompress[0]}" >/dev/null || { log "no ${decompress[0]}: no vmlinux"; return 1; }
    # The build appends the uncompressed size after the stream, which the
    # decompressors call trailing garbage: their exit status is ignored and the
    # result checked instead.
    tail -c +$((offset + 1)) "$bz" | head -c "$length" | "${decompress[@]}" >"$out" 2>/dev/null || :
    [ "$(od -An -c -N4 "$out" | tr -d ' ')" = '177ELF' ] || { rm -f "$out"; return 1; }
}

# True when the ELF kernel has a Xen PHYS32_ENTRY note (type 0x12, owner
# "Xen"): the PVH entry point that QEMU's -kernel needs for an ELF image.
has_pvh_note() {
    command -v readelf >/dev/null || return 1
    readelf -nW "$1" 2>/dev/null |
        grep -qE '^[[:space:]]*Xen[[:space:]].*(0x00000012|PHYS32_ENTRY)'
}

# Downloads and unpacks IMAGE_PKG (and the packages it is split into) into a
# temporary directory, then renames it into place. Runs in its own process
# (see main), so that `set -e` holds inside it and a failure can fall back to
# the cached kernel.
fetch_kernel() {
    local final=$1 tmp pkg rel modroot
    local -a pkgs
    tmp=$(mktemp -d "$CACHE/kernels/.tmp.XXXXXX")
    # Removed on failure or interruption; after the rename below, $tmp no
    # longer exists. (Bash runs the EXIT trap on a signal only when the
    # signal is trapped.)
    trap 'rm -rf "$tmp"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    rel=$(kernel_release "$IMAGE_PKG")
    # Newer Debian kernels split linux-image-REL into linux-binary-REL (the
    # image), linux-modules-REL and linux-base-REL (config, modules.builtin,
    # modules.order); older ones ship everything in linux-image-REL.
    pkgs=("$IMAGE_PKG")
    while read -r pkg; do
        case $pkg in linux-*"$rel"*) pkgs+=("$pkg") ;; esac
    done < <(pkg_depends "$IMAGE_PKG")

    log "downloading ${pkgs[*]}"
    mkdir -p "$tmp/debs" "$tmp/root"
    (cd "$tmp/debs" && papt apt-get -q -q download "${pkgs[@]}") ||
        die "apt-get download ${pkgs[*]} failed"
    for pkg in "$tmp"/debs/*.deb; do
        dpkg-deb -x "$pkg" "$tmp/root"
        # shellcheck disable=SC2016  # dpkg's format fields
        dpkg-deb -W --showformat='${Package} ${Version}\n' "$pkg" >>"$tmp/packages"
    done

    # Modules are in lib/modules (Debian 12) or usr/lib/modules (newer).
    for modroot in "$tmp/root/usr/lib/modules" "$tmp/root/lib/modules"; do
        [ -d "$modroot/$rel" ] && break
    done
    [ -d "$modroot/$rel" ] || die "$IMAGE_PKG: no modules directory for $rel"
    mkdir -p "$tmp/lib/modules"
    mv "$modroot/$rel" "$tmp/lib/modules/$rel"

    local image config
    for image in "$tmp/lib/modules/$rel/vmlinuz" "$tmp/root/boot/vmlinuz-$rel"; do
        [ -f "$image" ] && break
    done
    [ -f "$image" ] || die "$IMAGE_PKG: no kernel image found"
    mv "$image" "$tmp/vmlinuz"
    for config in "$tmp/lib/modules/$rel/config" "$tmp/root/boot/config-$rel"; do
        [ -f "$config" ] && cp "$config" "$tmp/config" && break
    done
    rm -rf "$tmp/root" "$tmp/debs"

    log "depmod $rel"
    depmod -b "$tmp" "$rel"

    if extract_vmlinux "$tmp/vmlinuz" "$tmp/vmlinux"; then
        if ! has_pvh_note "$tmp/vmlinux"; then
            log "$rel: vmlinux has no PVH entry point: booting the bzImage"
            rm -f "$tmp/vmlinux"
        fi
    fi

    echo "$rel" >"$tmp/release"
    echo "$FLAVOR" >"$tmp/flavor"
    touch "$tmp/.ok"
    chmod 755 "$tmp"
    # We hold the lock, and a complete directory is never replaced, so
    # anything at $final is a leftover without .ok (e.g. removed by hand).
    rm -rf "$final"
    mv -T "$tmp" "$final"
    trap - EXIT
}

# --- main -------------------------------------------------------------------

select_flavor() {
    FLAVOR=$1
    case $FLAVOR in
    sid) SUITE=sid; URI_KIND=main ;;
    6.12) SUITE=bookworm-security; URI_KIND=security ;;
    *) die "unknown kernel '$FLAVOR': use sid or 6.12" ;;
    esac
    APTDIR=$CACHE/apt/$SUITE
}

main() {
    local mode=auto
    FLAVOR=
    # Internal: the fetch, run as a child process by main itself.
    if [ "${1:-}" = --fetch-internal ]; then
        select_flavor "$2"
        IMAGE_PKG=$3
        fetch_kernel "$4"
        return
    fi
    while [ $# -gt 0 ]; do
        case $1 in
        --refresh) mode=refresh ;;
        --offline) mode=offline ;;
        -h | --help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$FLAVOR" ] || die "one kernel at a time"; FLAVOR=$1 ;;
        esac
        shift
    done
    select_flavor "${FLAVOR:-sid}"

    umask 022
    mkdir -p "$CACHE/kernels" || die "cannot create the cache $CACHE (set DAXMM_CACHE)"

    local current=
    current=$(current_kernel) || current=
    if [ "$mode" = offline ]; then
        kernel_is_valid "$current" || die "--offline: no cached $FLAVOR kernel in $CACHE"
        echo "$current"; return
    fi
    # Fast path, no apt at all: the index was read less than a day ago.
    if [ "$mode" = auto ] && index_is_fresh && kernel_is_valid "$current"; then
        echo "$current"; return
    fi

    # One fetch at a time; readers above never need the lock, since a kernel
    # directory only appears, complete, through a rename.
    if [ ! -w "$CACHE/kernels" ]; then
        if kernel_is_valid "$current"; then
            log "warning: $CACHE is not writable, cannot look for a newer kernel; using the cached $(cat "$current/release")"
            echo "$current"; return
        fi
        die "cache $CACHE is not writable (set DAXMM_CACHE)"
    fi
    exec 9>"$CACHE/kernels/.lock"
    flock -w 1800 9 || die "timed out waiting for $CACHE/kernels/.lock"
    rm -rf "$CACHE"/kernels/.tmp.*

    URI=$(host_archive_uri "$URI_KIND")
    [ -n "$URI" ] || die "cannot tell the Debian $URI_KIND archive from the host's apt sources;" \
        "set DAXMM_DEBIAN_URI (main) / DAXMM_DEBIAN_SECURITY_URI"
    apt_private_setup "$APTDIR" "$URI" "$SUITE"

    if ! { [ "$mode" = auto ] && index_is_fresh; } && ! update_index; then
        if kernel_is_valid "$current"; then
            log "warning: cannot update the $SUITE index; using the cached $(cat "$current/release")"
            echo "$current"; return
        fi
        die "cannot update the $SUITE index, and no $FLAVOR kernel is cached"
    fi

    IMAGE_PKG=$(resolve_image_package)
    [ -n "$IMAGE_PKG" ] || die "no $FLAVOR kernel package found in the $SUITE index"
    local version name
    version=$(pkg_version "$IMAGE_PKG")
    name=$(kernel_release "$IMAGE_PKG")_$version
    if ! kernel_is_valid "$CACHE/kernels/$name"; then
        local t0=$SECONDS
        if ! "$BASH" "${BASH_SOURCE[0]}" --fetch-internal "$FLAVOR" "$IMAGE_PKG" \
            "$CACHE/kernels/$name"; then
            if kernel_is_valid "$current"; then
                log "warning: fetching $IMAGE_PKG failed; using the cached $(cat "$current/release")"
                echo "$current"; return
            fi
            die "fetching $IMAGE_PKG failed"
        fi
        log "$IMAGE_PKG $version ready in $((SECONDS - t0)) s"
    fi
    set_current "$name"
    # Only now: after a failed download the next run must try again.
    touch "$APTDIR/updated"
    prune_old_kernels
    echo "$CACHE/kernels/$name"
}

main "$@"
