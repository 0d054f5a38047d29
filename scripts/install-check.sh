#!/usr/bin/env bash
# install-check.sh: `make install DESTDIR=<tmp> PREFIX=/usr` into a temporary
# directory, check what it installed and that the installed binary runs, then
# `make uninstall` and check that nothing is left.
#
#   scripts/install-check.sh [LOG]     make's output goes to LOG (default: a
#                                      file in the temporary directory)
#
# One line per check, "ok: ..." or "FAIL: ...", and a last line
# "install: N passed, N failed". Exit status 0 when none failed.
# scripts/test.sh runs it in its host phase and counts these figures.

# The checks are functions that check() calls by name.
# shellcheck disable=SC2317
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Outside the source tree, so the installed binary cannot find the source
# tree's scripts/vm above itself or in its working directory.
TMP=$(mktemp -d /tmp/daxmm-install-check.XXXXXX) || exit 1
trap 'rm -rf "$TMP"' EXIT
LOG=${1:-$TMP/make.log}
DEST=$TMP/root
PREFIX=/usr
D=$DEST$PREFIX
PASS=0 FAIL=0

check() { # description command...
    local what=$1
    shift
    if "$@"; then
        echo "ok: $what"; PASS=$((PASS + 1))
    else
        echo "FAIL: $what"; FAIL=$((FAIL + 1))
        return 1
    fi
}

finish() {
    echo "install: $PASS passed, $FAIL failed"
    [ "$FAIL" -eq 0 ]
    exit
}

# What `make install` must lay down, and nothing else.
EXPECTED="$PREFIX/bin/daxmm
$PREFIX/share/bash-completion/completions/daxmm
$PREFIX/share/daxmm/vm/guest-setup.sh
$PREFIX/share/daxmm/vm/init
$PREFIX/share/daxmm/vm/kernel.sh
$PREFIX/share/daxmm/vm/mkinitramfs.sh
$PREFIX/share/daxmm/vm/vmrun
$PREFIX/share/fish/vendor_completions.d/daxmm.fish
$PREFIX/share/man/man1/daxmm.1
$PREFIX/share/zsh/site-functions/_daxmm"

installed_files() { (cd "$DEST" && find . -type f -o -type l) | sed 's|^\.||' | LC_ALL=C sort; }

make_install() {
    make -C "$ROOT" --no-print-directory install DESTDIR="$DEST" PREFIX="$PREFIX" >"$LOG" 2>&1 && return 0
    echo "make install failed; the end of $LOG:" >&2
    tail -n 20 "$LOG" >&2
    return 1
}
check "make install DESTDIR=$DEST PREFIX=$PREFIX" make_install || finish

same_files() {
    local got
    got=$(installed_files)
    [ "$got" = "$EXPECTED" ] && return 0
    diff <(echo "$EXPECTED") <(echo "$got") | sed 's/^/  /' >&2
    return 1
}
check "installs exactly the binary, 3 completions, daxmm.1 and the VM scripts" same_files

check "bin/daxmm is executable" test -x "$D/bin/daxmm"
check "share/daxmm/vm/vmrun is executable" test -x "$D/share/daxmm/vm/vmrun"

bash_completion() {
    bash -n "$D/share/bash-completion/completions/daxmm" &&
        bash -c 'source "$1" && complete -p daxmm' _ "$D/share/bash-completion/completions/daxmm" >/dev/null
}
check "bash completion parses and registers daxmm" bash_completion
check "zsh completion is a #compdef for daxmm" grep -q '^#compdef daxmm' "$D/share/zsh/site-functions/_daxmm"
check "fish completion completes daxmm" grep -qE "^complete -c '?daxmm'? " "$D/share/fish/vendor_completions.d/daxmm.fish"

man_page() {
    local m=$D/share/man/man1/daxmm.1
    grep -q '^\.Dt DAXMM 1' "$m" && grep -q '^\.Sh NAME' "$m" && grep -q '^\.It Em check' "$m" || return 1
    # Render it too where man(1) is installed.
    if command -v man >/dev/null 2>&1; then
        MANWIDTH=80 man -l "$m" 2>/dev/null | grep -q 'daxmm'
    fi
}
check "man page daxmm(1) (mdoc, with the subcommands)" man_page

# The installed binary, from a directory outside the source tree, without
# DAXMM_HOME.
run_installed() { (cd "$TMP" && env -u DAXMM_HOME "$D/bin/daxmm" "$@"); }
help_runs() { run_installed --help | grep -q 'USAGE: daxmm'; }
check "installed daxmm --help" help_runs
list_runs() { run_installed list >/dev/null 2>&1; }
check "installed daxmm list" list_runs
vm_finds_vmrun() { run_installed vm run --help-vm 2>&1 | grep -q '^Usage: vmrun'; }
check "installed daxmm vm run finds the installed vmrun" vm_finds_vmrun
release_build() {
    local out
    out=$(run_installed check --device emulated:size=16M 2>&1) || return 1
    grep -q 'first touch' <<<"$out" && ! grep -q 'debug build' <<<"$out"
}
check "installed daxmm is a release build (check prints no debug note)" release_build

make_uninstall() { make -C "$ROOT" --no-print-directory uninstall DESTDIR="$DEST" PREFIX="$PREFIX" >>"$LOG" 2>&1; }
check "make uninstall" make_uninstall
nothing_left() { [ -z "$(installed_files)" ] && [ ! -e "$D/share/daxmm" ]; }
check "uninstall leaves no file and no share/daxmm" nothing_left

finish
