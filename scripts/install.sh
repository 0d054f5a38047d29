#!/usr/bin/env bash
# install.sh: build daxmm in release and install it (make install), or remove
# what an install put there (make uninstall).
#
#   scripts/install.sh install      PREFIX=/usr/local DESTDIR= by default
#   scripts/install.sh uninstall
#
# PREFIX and DESTDIR come from the environment (the Makefile passes its own);
# every file goes under DESTDIR/PREFIX:
#   bin/daxmm                                        the release binary
#   share/bash-completion/completions/daxmm          bash completion
#   share/zsh/site-functions/_daxmm                  zsh completion
#   share/fish/vendor_completions.d/daxmm.fish       fish completion
#   share/man/man1/daxmm.1                           the manual page
#   share/daxmm/vm/                                  vmrun and its scripts, for
#                                                    `daxmm vm run`
# The completions are what swift-argument-parser generates
# (`daxmm --generate-completion-script SHELL`); the manual page is what its
# generate-manual plugin writes from the same help text.
#
# The build runs as the invoking user. The files are copied as that user when
# the destination is writable, else through sudo, so `make install` as a
# normal user leaves no root-owned files in .build. scripts/setup.sh runs
# first, as for the other make targets.
set -euo pipefail
shopt -s inherit_errexit

TAG=install.sh
log() { printf '%s: %s\n' "$TAG" "$*" >&2; }
die() { log "$*"; exit 1; }

ACTION=${1:-install}
case $ACTION in
install | uninstall) ;;
-h | --help) sed -n '2,23p' "$0"; exit 0 ;;
*) die "unknown action '$ACTION' (install or uninstall)" ;;
esac
TAG=$ACTION

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
case $PREFIX in /*) ;; *) die "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
# A relative DESTDIR is taken from where the caller stands.
case $DESTDIR in '' | /*) ;; *) DESTDIR=$PWD/$DESTDIR ;; esac
PREFIX=${PREFIX%/}
DEST=$DESTDIR$PREFIX

cd "$(dirname "$0")/.."

BIN_DIR=$DEST/bin
BASH_DIR=$DEST/share/bash-completion/completions
ZSH_DIR=$DEST/share/zsh/site-functions
FISH_DIR=$DEST/share/fish/vendor_completions.d
MAN_DIR=$DEST/share/man/man1
VM_DIR=$DEST/share/daxmm/vm
VM_FILES=(vmrun kernel.sh mkinitramfs.sh guest-setup.sh init)

# The files an install creates, for uninstall (share/daxmm is ours alone).
INSTALLED=(
    "$BIN_DIR/daxmm" "$BASH_DIR/daxmm" "$ZSH_DIR/_daxmm" "$FISH_DIR/daxmm.fish"
    "$MAN_DIR/daxmm.1"
)
for f in "${VM_FILES[@]}"; do INSTALLED+=("$VM_DIR/$f"); done

# The closest existing directory at or above $1.
existing_ancestor() {
    local d=$1
    while [ ! -d "$d" ]; do d=$(dirname "$d"); done
    printf '%s\n' "$d"
}

# Root when a destination is not writable as we are: sudo, once for all.
SUDO=()
need_root() {
    local d
    [ "$(id -u)" = 0 ] && return 0
    for d in "$@"; do
        if [ ! -w "$(existing_ancestor "$d")" ]; then
            command -v sudo >/dev/null 2>&1 ||
                die "cannot write to $(existing_ancestor "$d"): not root, and sudo is not installed"
            log "$(existing_ancestor "$d") is not writable: installing through sudo"
            SUDO=(sudo)
            return 0
        fi
    done
}

as_dest() { "${SUDO[@]}" "$@"; }

do_install() {
    scripts/setup.sh
    # shellcheck source=scripts/env.sh
    . scripts/env.sh

    log "building daxmm (release)"
    swift build -c release --product daxmm
    local bin
    bin=$(swift build -c release --show-bin-path)/daxmm
    [ -x "$bin" ] || die "no $bin after the build"

    # The plugin builds the package's products in release (daxmm is up to date
    # by now) and runs generate-manual on daxmm; it writes only under .build.
    log "generating the manual page (swift package plugin generate-manual)"
    swift package plugin generate-manual
    local man=.build/plugins/GenerateManual/outputs/daxmm/daxmm.1
    [ -s "$man" ] || die "generate-manual wrote no $man"

    local stage=.build/install-stage sh
    rm -rf "$stage"
    mkdir -p "$stage"
    for sh in bash zsh fish; do
        "$bin" --generate-completion-script "$sh" >"$stage/daxmm.$sh"
        [ -s "$stage/daxmm.$sh" ] || die "daxmm wrote no $sh completion"
    done

    need_root "$BIN_DIR" "$BASH_DIR" "$ZSH_DIR" "$FISH_DIR" "$MAN_DIR" "$VM_DIR"
    log "installing into $DEST"
    as_dest install -d -m 755 "$BIN_DIR" "$BASH_DIR" "$ZSH_DIR" "$FISH_DIR" "$MAN_DIR" "$VM_DIR"
    as_dest install -m 755 "$bin" "$BIN_DIR/daxmm"
    as_dest install -m 644 "$stage/daxmm.bash" "$BASH_DIR/daxmm"
    as_dest install -m 644 "$stage/daxmm.zsh" "$ZSH_DIR/_daxmm"
    as_dest install -m 644 "$stage/daxmm.fish" "$FISH_DIR/daxmm.fish"
    as_dest install -m 644 "$man" "$MAN_DIR/daxmm.1"
    local f mode
    for f in "${VM_FILES[@]}"; do
        mode=644
        [ -x "scripts/vm/$f" ] && mode=755
        as_dest install -m "$mode" "scripts/vm/$f" "$VM_DIR/$f"
    done
    for f in "${INSTALLED[@]}"; do printf '  %s\n' "$f"; done
}

do_uninstall() {
    local f removed=0
    need_root "$BIN_DIR" "$BASH_DIR" "$ZSH_DIR" "$FISH_DIR" "$MAN_DIR" "$VM_DIR"
    for f in "${INSTALLED[@]}"; do
        if [ -e "$f" ] || [ -L "$f" ]; then
            as_dest rm -f "$f"
            printf '  removed %s\n' "$f"
            removed=$((removed + 1))
        fi
    done
    # Only share/daxmm is ours; the shared directories stay.
    local d
    for d in "$VM_DIR" "$DEST/share/daxmm"; do
        if [ -d "$d" ]; then as_dest rmdir "$d" 2>/dev/null || log "$d is not empty: left in place"; fi
    done
    log "removed $removed file(s) from $DEST"
}

"do_$ACTION"
