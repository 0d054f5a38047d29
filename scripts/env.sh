# shellcheck shell=sh
# Source this file (". scripts/env.sh") to get the project's tool environment:
#
#   * the Swift toolchain on PATH. It is installed under /opt/swift on this
#     project's machines, which is not on the default PATH. Set DAXMM_SWIFT_ROOT
#     to use a toolchain installed elsewhere (the directory that holds usr/bin/swift).
#
# It only prepends to PATH when `swift` is not already found, so sourcing it
# twice, or on a machine with swift on PATH, changes nothing. It is plain POSIX
# sh, so sh, dash and bash scripts can all source it; it never exits the caller.

daxmm_swift_on_path() {
    command -v swift >/dev/null 2>&1 && return 0
    for _daxmm_root in ${DAXMM_SWIFT_ROOT:+"$DAXMM_SWIFT_ROOT"} /opt/swift; do
        if [ -x "$_daxmm_root/usr/bin/swift" ]; then
            PATH="$_daxmm_root/usr/bin:$PATH"
            export PATH
            unset _daxmm_root
            return 0
        fi
    done
    unset _daxmm_root
    return 1
}

daxmm_swift_on_path || :
