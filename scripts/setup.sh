#!/usr/bin/env bash
# setup.sh: install the Debian packages this project needs on a bare machine,
# and check that the Swift toolchain is there.
#
# Idempotent and quick when everything is present: it asks dpkg which packages
# are missing and runs `apt-get update` + `apt-get install` only for those.
# Works as root, or through sudo. Exit status: 0 when everything is in place,
# 1 when something could not be installed or swift is missing.
set -euo pipefail
shopt -s inherit_errexit

# What each package is for:
#   qemu-system-x86, busybox-static, cpio, xz-utils, zstd, kmod
#       the test VM (scripts/vm): emulator, the initramfs, unpacking the
#       Debian guest kernel and its modules (xz/zstd), depmod
#   binutils        readelf: checks the guest kernel's PVH entry note
#   debian-archive-keyring
#       verifies the private apt index scripts/vm/kernel.sh downloads
#   ndctl, daxctl   namespace and device setup inside the guest
#   libdaxctl-dev, libndctl-dev, liburing-dev, libnuma-dev, uuid-dev, gcc, libc6-dev
#       building the project's C shims and probes
#   e2fsprogs, xfsprogs  fsdax file systems in the guest
#   jq              JSON from ndctl/daxctl in the scripts
#   fio             its dev-dax engine, for the dax suite's fio tests
PACKAGES=(
    qemu-system-x86 busybox-static cpio xz-utils zstd kmod binutils
    debian-archive-keyring
    ndctl daxctl libdaxctl-dev libndctl-dev liburing-dev libnuma-dev uuid-dev
    gcc libc6-dev
    e2fsprogs xfsprogs jq
    fio
)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf 'setup: %s\n' "$*" >&2; }

missing_packages() {
    local pkg status
    for pkg in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [ "$status" = installed ] || printf '%s\n' "$pkg"
    done
}

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root to run: $*  (not root, and sudo is not installed)"
        return 1
    fi
}

install_packages() {
    local -a missing
    mapfile -t missing < <(missing_packages)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "all ${#PACKAGES[@]} packages already installed"
        return 0
    fi
    log "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    mapfile -t missing < <(missing_packages)
    if [ "${#missing[@]}" -ne 0 ]; then
        log "still missing after apt-get install: ${missing[*]}"
        return 1
    fi
}

check_swift() {
    # shellcheck source=SCRIPTDIR/env.sh
    . "$here/env.sh"
    if ! command -v swift >/dev/null 2>&1; then
        log "swift not found: not on PATH and no /opt/swift/usr/bin/swift" \
            "(set DAXMM_SWIFT_ROOT to the toolchain root)"
        return 1
    fi
    log "swift: $(command -v swift)"
}

main() {
    local rc=0
    install_packages || rc=1
    check_swift || rc=1
    return "$rc"
}

main "$@"
