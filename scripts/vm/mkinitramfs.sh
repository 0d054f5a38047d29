#!/usr/bin/env bash
# mkinitramfs.sh: build (once) the base initramfs for a guest kernel.
#
#   mkinitramfs.sh KERNEL_DIR
#
# KERNEL_DIR is a directory as made by kernel.sh (release, lib/modules/REL).
# Prints on stdout the path of an uncompressed newc cpio archive, cached under
# ${DAXMM_CACHE:-/var/tmp/daxmm-cache}/initramfs and rebuilt only when the
# kernel, busybox or this script change. It holds:
#
#   bin/busybox, bin/sh       busybox-static: the guest's early userspace
#   lib/modules/*.ko          the modules needed to reach the host's files
#                             (virtio transport when modular, 9p, overlayfs)
#                             and the nvdimm/dax stack, decompressed because
#                             busybox insmod cannot read .ko.xz/.ko.zst
#   etc/daxmm-modules         those modules in load order (dependencies first)
#   etc/daxmm-modules-hmem    dax_hmem, loaded by init only for vmrun --hmem
#                             (with region_idle=1); its dependencies are in
#                             etc/daxmm-modules
#   sbin/daxmm-modprobe       the kernel's modprobe helper (see below)
#
# It holds no /init: vmrun appends a second small archive with the current
# scripts/vm/init to every boot (the kernel unpacks concatenated archives in
# order), so editing init never needs a rebuild.
set -euo pipefail
shopt -s inherit_errexit

CACHE=${DAXMM_CACHE:-/var/tmp/daxmm-cache}
BUSYBOX=${DAXMM_BUSYBOX:-/bin/busybox}
# virtio_pci and virtio_console are built into Debian's kernels, and skipped
# then; a custom kernel may have them as modules.
WANTED_MODULES=(virtio_pci virtio_console 9pnet_virtio 9p overlay)
# The nvdimm/dax stack, loaded up front as udev would. Loading them here with
# busybox insmod takes a fraction of a second; the host's modprobe, run over
# 9p under TCG, took 1.2-2 s. Those the kernel lacks are skipped (nd_e820
# exists only with CONFIG_X86_PMEM_LEGACY, kmem with DEV_DAX_KMEM...).
OPTIONAL_MODULES=(libnvdimm nfit nd_e820 nd_pmem nd_btt dax_pmem device_dax kmem)
# Loaded on request (vmrun --hmem), with a module parameter; skipped when the
# kernel lacks them (CONFIG_DEV_DAX_HMEM).
HMEM_MODULES=(dax_hmem)

log() { printf 'mkinitramfs.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The modprobe that the kernel runs for request_module() (e.g. `mount -t xfs`
# loading xfs.ko). It runs in the initramfs, outside the guest's chroot, so it
# hands over to the host's kmod inside the chroot, where /lib/modules is the
# guest kernel's.
MODPROBE_WRAPPER='#!/bin/sh
exec /bin/busybox chroot /host /sbin/modprobe "$@"
'

# Module name -> path relative to lib/modules/REL, from modules.dep.
# Module names treat "-" and "_" alike.
module_path() {
    local want=${1//-/_}
    awk -F: -v want="$want" '{
        name = $1; sub(/.*\//, "", name); sub(/\.ko(\.[a-z]+)?$/, "", name); gsub(/-/, "_", name)
        if (name == want) { print $1; exit }
    }' "$MODDIR/modules.dep"
}

module_deps() {
    awk -v path="$1:" '$1 == path { for (i = 2; i <= NF; i++) print $i; exit }' "$MODDIR/modules.dep"
}

is_builtin() {
    [ -r "$MODDIR/modules.builtin" ] &&
        awk -v want="${1//-/_}" '{ sub(/.*\//, ""); sub(/\.ko$/, ""); gsub(/-/, "_") }
            $0 == want { found = 1 } END { exit !found }' "$MODDIR/modules.builtin"
}

declare -A ADDED=()
ORDER=()

# Adds a module (by path) after its dependencies.
add_module_path() {
    local path=$1 dep
    [ -n "${ADDED[$path]:-}" ] && return
    ADDED[$path]=1
    for dep in $(module_deps "$path"); do
        add_module_path "$dep"
    done
    ORDER+=("$path")
}

decompress_module() {
    local src=$MODDIR/$1 dst=$2
    case $src in
    *.ko.xz) xz -dc "$src" >"$dst" ;;
    *.ko.zst) zstd -dcq "$src" >"$dst" ;;
    *.ko.gz) gzip -dc "$src" >"$dst" ;;
    *.ko) cp "$src" "$dst" ;;
    *) die "unknown module file type: $src" ;;
    esac
}

check_busybox() {
    [ -x "$BUSYBOX" ] || die "$BUSYBOX not found (apt-get install busybox-static)"
    if command -v readelf >/dev/null && readelf -lW "$BUSYBOX" | grep -q 'program interpreter'; then
        die "$BUSYBOX is dynamically linked; the initramfs needs busybox-static"
    fi
}

build() {
    local out=$1 tmp name path dep
    tmp=$(mktemp -d "$CACHE/initramfs/.tmp.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,host,lower,upper,lib/modules}
    cp "$BUSYBOX" "$tmp/bin/busybox"
    ln -s busybox "$tmp/bin/sh"
    printf '%s' "$MODPROBE_WRAPPER" >"$tmp/sbin/daxmm-modprobe"
    chmod 755 "$tmp/sbin/daxmm-modprobe"

    for name in "${WANTED_MODULES[@]}"; do
        path=$(module_path "$name")
        if [ -n "$path" ]; then
            add_module_path "$path"
        elif ! is_builtin "$name"; then
            die "kernel $RELEASE has no module $name and does not build it in"
        fi
    done
    for name in "${OPTIONAL_MODULES[@]}"; do
        path=$(module_path "$name")
        [ -n "$path" ] && add_module_path "$path"
    done
    local -a hmem=()
    for name in "${HMEM_MODULES[@]}"; do
        path=$(module_path "$name")
        [ -n "$path" ] || continue
        for dep in $(module_deps "$path"); do add_module_path "$dep"; done
        hmem+=("$path")
    done
    : >"$tmp/etc/daxmm-modules-hmem"
    for path in "${hmem[@]}"; do
        name=${path##*/}
        name=${name%%.ko*}.ko
        decompress_module "$path" "$tmp/lib/modules/$name"
        echo "$name" >>"$tmp/etc/daxmm-modules-hmem"
    done
    : >"$tmp/etc/daxmm-modules"
    for path in "${ORDER[@]}"; do
        name=${path##*/}
        name=${name%%.ko*}.ko
        decompress_module "$path" "$tmp/lib/modules/$name"
        echo "$name" >>"$tmp/etc/daxmm-modules"
    done

    (cd "$tmp" && find . -mindepth 1 | LC_ALL=C sort |
        cpio --quiet -o -H newc -R 0:0) >"$tmp.cpio"
    mv -f "$tmp.cpio" "$out"
    rm -rf "$tmp"
    trap - EXIT
}

main() {
    if [ $# -ne 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
        exit 2
    fi
    local kdir dir
    kdir=$(cd "$1" && pwd) || die "no kernel directory $1"
    RELEASE=
    if [ -r "$kdir/release" ]; then
        RELEASE=$(cat "$kdir/release")
    else
        for dir in "$kdir"/lib/modules/*/; do
            dir=${dir%/}
            RELEASE=${dir##*/}
        done
    fi
    MODDIR=$kdir/lib/modules/$RELEASE
    if [ -z "$RELEASE" ] || [ ! -r "$MODDIR/modules.dep" ]; then
        die "$kdir has no lib/modules/RELEASE/modules.dep (run depmod -b)"
    fi
    check_busybox

    # The cache key covers everything the archive is made from.
    local key out
    key=$({
        cat "${BASH_SOURCE[0]}"
        echo "$kdir $RELEASE"
        stat -L -c '%s %Y' "$BUSYBOX" "$MODDIR/modules.dep"
    } | sha256sum | cut -c1-16)
    umask 022
    mkdir -p "$CACHE/initramfs" || die "cannot create $CACHE/initramfs (set DAXMM_CACHE)"
    out=$CACHE/initramfs/$RELEASE-$key.cpio
    if [ ! -s "$out" ]; then
        # Written to a temporary name and renamed: concurrent builds of the
        # same key are harmless, and a reader never sees half an archive.
        build "$out"
        log "built $out"
        # Archives of this release built by older versions of this script
        # (or for another directory with the same release); not the recent
        # ones, which a concurrent vmrun may be about to read.
        find "$CACHE/initramfs" -maxdepth 1 -name "$RELEASE-*.cpio" ! -path "$out" -mtime +0 -delete
    fi
    echo "$out"
}

main "$@"
