#!/usr/bin/env bash
# The whole test suite. On the host: the Swift Testing unit tests, a `make
# install` check (scripts/install-check.sh) and `daxmm test --suite mm,vm`
# (the port alone, and the VM harness, which boots a few small guests). Then
# one QEMU guest per guest kernel, with the layout below, running
# `daxmm test` on real device-dax and fs-dax: Debian unstable's kernel (which
# has the ZONE_DEVICE refcount series) runs the dax, fsdax, diff and vm
# suites, Debian 12's 6.12 (which predates it) the dax and diff suites; and
# a guest with two NUMA nodes runs the discovery tests.
#
#   scripts/test.sh                 everything (installs what is missing)
#   scripts/test.sh --host-only     skip the guests
#   scripts/test.sh --kernels "sid" only the named guest kernels
#
# Every `daxmm test` phase is counted from its last line ("N passed, N
# failed, N skipped") and its exit status (0, 1 on a failure, 77 when every
# test skipped); a run without that line (a crash, a guest that died or
# timed out) counts as a failure. Inside a guest every test must run: the
# runner fails an undeclared skip there, and a guest run where everything
# skipped (77) is a failure. Logs: .build/test-results. Ends with one line
# "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

KERNELS="sid 6.12"
HOST_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --host-only) HOST_ONLY=1 ;;
        --kernels) KERNELS="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "test.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

scripts/setup.sh
# shellcheck source=scripts/env.sh
. scripts/env.sh

RESULTS=$ROOT/.build/test-results
rm -rf "$RESULTS"; mkdir -p "$RESULTS"
TOTAL_PASS=0 TOTAL_FAIL=0 TOTAL_SKIP=0
PHASES=()

PHASE_T0=$SECONDS
start_phase() { echo "== $*"; PHASE_T0=$SECONDS; }

add_phase() { # PHASE PASSED FAILED SKIPPED
    TOTAL_PASS=$((TOTAL_PASS + $2)); TOTAL_FAIL=$((TOTAL_FAIL + $3)); TOTAL_SKIP=$((TOTAL_SKIP + $4))
    PHASES+=("$1: $2 passed, $3 failed, $4 skipped ($((SECONDS - PHASE_T0)) s)")
}

# count_swift_testing PHASE LOG XML RC: the Swift Testing run's figures from
# its xunit report (skips from its "skipped" lines). A run that exited
# non-zero (a crash) counts as a failure even when its report shows none.
count_swift_testing() {
    local phase=$1 log=$2 xml=$3 rc=$4 tests failed skipped passed
    tests=$(grep -o 'tests="[0-9]*"' "$xml" 2>/dev/null | head -n1 | tr -dc 0-9 || true)
    failed=$(grep -o 'failures="[0-9]*"' "$xml" 2>/dev/null | head -n1 | tr -dc 0-9 || true)
    tests=${tests:-0} failed=${failed:-0}
    # Swift Testing may colour its lines: strip the escapes before matching.
    skipped=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -cE '➜ Test .*(skipped|was cancelled)' || true)
    if [ "$tests" = 0 ] && [ "$failed" = 0 ]; then
        echo "test.sh: $phase: no xunit report: the run died before Swift Testing finished" >&2
        failed=1
    fi
    if [ "$rc" -ne 0 ] && [ "$failed" = 0 ]; then
        echo "test.sh: $phase: the run exited with status $rc" >&2
        failed=1
    fi
    passed=$((tests - failed - skipped))
    [ "$passed" -ge 0 ] || passed=0
    add_phase "$phase" "$passed" "$failed" "$skipped"
}

# count_checks PHASE LOG RC: a shell check whose last line is "WORD: N
# passed, N failed". No such line, or a non-zero exit with none failed,
# counts as a failure.
count_checks() {
    local phase=$1 log=$2 rc=$3 line passed=0 failed=1
    line=$(grep -E '^[a-z-]+: [0-9]+ passed, [0-9]+ failed$' "$log" | tail -n1 || true)
    if [[ $line =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
        passed=${BASH_REMATCH[1]} failed=${BASH_REMATCH[2]}
    else
        echo "test.sh: $phase: no summary line" >&2
    fi
    if [ "$rc" -ne 0 ] && [ "$failed" = 0 ]; then
        echo "test.sh: $phase: the check exited with status $rc" >&2
        failed=1
    fi
    add_phase "$phase" "$passed" "$failed" 0
}

# count_daxmm PHASE OUT RC GUEST: a `daxmm test` run, from the last line of
# its output OUT and its exit status RC (for a guest run, vmrun's: the
# runner's own, or 124/125/255 when the guest timed out, could not be set up
# or died). GUEST=1: everything skipping (77) is a failure.
count_daxmm() {
    local phase=$1 out=$2 rc=$3 guest=$4 line passed=0 failed=0 skipped=0
    line=$(tail -n 1 "$out" 2>/dev/null || true)
    if [[ $line =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped$ ]]; then
        passed=${BASH_REMATCH[1]} failed=${BASH_REMATCH[2]} skipped=${BASH_REMATCH[3]}
    else
        echo "test.sh: $phase: no \"N passed, N failed, N skipped\" line (exit status $rc)" >&2
        failed=1
    fi
    case $rc in
    0) ;;
    1) if [ "$failed" = 0 ]; then
           echo "test.sh: $phase: exit status 1 with no failed test" >&2
           failed=1
       fi ;;
    77) if [ "$guest" = 1 ]; then
            echo "test.sh: $phase: every test skipped inside the guest; counted as failures" >&2
            failed=$((failed + skipped)) skipped=0
            [ "$failed" -gt 0 ] || failed=1
        fi ;;
    *) echo "test.sh: $phase: exit status $rc" >&2
       [ "$failed" -gt 0 ] || failed=1 ;;
    esac
    add_phase "$phase" "$passed" "$failed" "$skipped"
}

# run_logged STEM CMD...: runs CMD with its stdout in STEM.out and its
# stderr in STEM.err, both also shown; sets RC.
run_logged() {
    local stem=$1
    shift
    set +e
    "$@" 2> >(tee "$stem.err" >&2) | tee "$stem.out"
    RC=${PIPESTATUS[0]}
    set -e
    # The stderr tee may still be writing.
    sleep 0.2
}

echo "== build"
swift build --build-tests
BIN=$(swift build --show-bin-path)
TESTBIN=$BIN/daxmmPackageTests.xctest
DAXMM=$BIN/daxmm

start_phase "host unit tests"
set +e
"$TESTBIN" --testing-library swift-testing --xunit-output "$RESULTS/host.xml" 2>&1 | tee "$RESULTS/host.log"
rc=${PIPESTATUS[0]}
set -e
count_swift_testing host "$RESULTS/host.log" "$RESULTS/host.xml" "$rc"

# make install into a temporary DESTDIR (a release build, reused by later
# runs), the installed files, the installed binary, make uninstall.
start_phase "install check"
set +e
scripts/install-check.sh "$RESULTS/install-make.log" 2>&1 | tee "$RESULTS/install.log"
rc=${PIPESTATUS[0]}
set -e
count_checks install "$RESULTS/install.log" "$rc"

# The port alone, and the VM harness as a user meets it (bad input refused
# before booting; a namespace that cannot be made; a good run).
start_phase "host daxmm test --suite mm,vm"
run_logged "$RESULTS/daxmm-host" "$DAXMM" test --suite mm,vm --log "$RESULTS/daxmm-host.log"
count_daxmm daxmm-host "$RESULTS/daxmm-host.out" "$RC" 0

if [ "$HOST_ONLY" = 0 ]; then
    # One boot per kernel serves the whole real-device batch. 1G alignment
    # needs a namespace of at least 2G, so the region is 4G. --hmem: 256M of
    # soft-reserved memory, a dynamic dax region for daxctl create-device.
    LAYOUT=(--pmem nfit:4G --namespace devdax:2M:512M --namespace devdax:4K:256M --namespace devdax:1G:2G
            --namespace fsdax::512M --hmem 256M
            --env DAXMM_VM_EXPECT_ALIGNS=4K,2M,1G --env DAXMM_VM_EXPECT_FSDAX=1)
    for k in $KERNELS; do
        case $k in
        6.12) suites=dax,diff ;;
        *) suites=dax,fsdax,diff,vm ;;
        esac
        start_phase "guest daxmm test --suite $suites, kernel $k"
        run_logged "$RESULTS/vm-$k" scripts/vm/vmrun --kernel "$k" "${LAYOUT[@]}" \
            --timeout 1800 --console-log "$RESULTS/vm-$k.console" -- \
            "$DAXMM" test --suite "$suites" --log "$RESULTS/vm-$k.log"
        count_daxmm "vm-$k" "$RESULTS/vm-$k.out" "$RC" 1
    done

    # Two DIMMs on two NUMA nodes: discovery reports each device's node.
    k=${KERNELS%% *}
    start_phase "guest daxmm test devdax-discovery-*, two NUMA nodes, kernel $k"
    run_logged "$RESULTS/vm-numa" scripts/vm/vmrun --kernel "$k" --numa-nodes 2 \
        --pmem nfit:2G,node=0 --pmem nfit:2G,node=1 \
        --namespace devdax:2M:1G@nmem0 --namespace devdax:2M:1G@nmem1 \
        --env DAXMM_VM_EXPECT_NODES=0,1 --env DAXMM_VM_EXPECT_ALIGNS=2M \
        --timeout 1800 --console-log "$RESULTS/vm-numa.console" -- \
        "$DAXMM" test 'devdax-discovery-*' --log "$RESULTS/vm-numa.log"
    count_daxmm vm-numa "$RESULTS/vm-numa.out" "$RC" 1
fi

echo "== summary"
for p in "${PHASES[@]}"; do echo "  $p"; done
echo "$TOTAL_PASS passed, $TOTAL_FAIL failed, $TOTAL_SKIP skipped"
[ "$TOTAL_FAIL" -eq 0 ]
