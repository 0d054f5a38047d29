#!/usr/bin/env bash
# The whole test suite: host tests and a `make install` check
# (scripts/install-check.sh), then the real-device tests inside a QEMU
# guest on each guest kernel (Debian unstable's, which has the ZONE_DEVICE
# refcount series, and Debian 12's 6.12, which predates it).
#
#   scripts/test.sh                 everything (installs what is missing)
#   scripts/test.sh --host-only     skip the guests
#   scripts/test.sh --kernels "sid" only the named guest kernels
#
# Ends with one line "N passed, N failed, N skipped". Inside a guest no test
# may skip: a skip there means a missing device, and counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

KERNELS="sid 6.12"
HOST_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --host-only) HOST_ONLY=1 ;;
        --kernels) KERNELS="$2"; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
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

# count PHASE LOG XML STRICT RC: adds a phase's figures to the totals. A
# run that exited non-zero (a crash, a dead guest) counts as a failure even
# when its report shows none.
count() {
    local phase=$1 log=$2 xml=$3 strict=$4 rc=${5:-0} tests failed skipped passed
    tests=$(grep -o 'tests="[0-9]*"' "$xml" 2>/dev/null | head -n1 | tr -dc 0-9 || true)
    failed=$(grep -o 'failures="[0-9]*"' "$xml" 2>/dev/null | head -n1 | tr -dc 0-9 || true)
    tests=${tests:-0} failed=${failed:-0}
    # Swift Testing may colour its lines: strip the escapes before matching.
    skipped=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -cE '➜ Test .*(skipped|was cancelled)' || true)
    if [ "$tests" = 0 ] && [ "$failed" = 0 ]; then
        # No report at all: the run died before Swift Testing finished.
        failed=1
    fi
    if [ "$rc" -ne 0 ] && [ "$failed" = 0 ]; then
        echo "test.sh: $phase: the run exited with status $rc" >&2
        failed=1
    fi
    passed=$((tests - failed - skipped))
    [ "$passed" -ge 0 ] || passed=0
    if [ "$strict" = 1 ] && [ "$skipped" -gt 0 ]; then
        echo "test.sh: $phase: $skipped test(s) skipped inside the guest; counted as failures:" >&2
        sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '➜ Test .*(skipped|was cancelled)' >&2 || true
        failed=$((failed + skipped)); skipped=0
    fi
    TOTAL_PASS=$((TOTAL_PASS + passed)); TOTAL_FAIL=$((TOTAL_FAIL + failed)); TOTAL_SKIP=$((TOTAL_SKIP + skipped))
    PHASES+=("$phase: $passed passed, $failed failed, $skipped skipped")
}

# count_checks PHASE LOG RC: adds the figures of a shell check whose last
# line is "WORD: N passed, N failed". No such line, or a non-zero exit with
# none failed, counts as a failure.
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
    TOTAL_PASS=$((TOTAL_PASS + passed)); TOTAL_FAIL=$((TOTAL_FAIL + failed))
    PHASES+=("$phase: $passed passed, $failed failed, 0 skipped")
}

echo "== build"
swift build --build-tests
BIN=$(swift build --show-bin-path)
TESTBIN=$BIN/daxmmPackageTests.xctest

echo "== host tests"
set +e
"$TESTBIN" --testing-library swift-testing --xunit-output "$RESULTS/host.xml" 2>&1 | tee "$RESULTS/host.log"
rc=${PIPESTATUS[0]}
set -e
count host "$RESULTS/host.log" "$RESULTS/host.xml" 0 "$rc"

# make install into a temporary DESTDIR (a release build, reused by later
# runs), the installed files, the installed binary, make uninstall.
echo "== install check"
set +e
scripts/install-check.sh "$RESULTS/install-make.log" 2>&1 | tee "$RESULTS/install.log"
rc=${PIPESTATUS[0]}
set -e
count_checks install "$RESULTS/install.log" "$rc"

if [ "$HOST_ONLY" = 0 ]; then
    # One boot per kernel serves the whole real-device batch. 1G alignment needs
    # a namespace of at least 2G, so the region is 4G.
    NAMESPACES=(--namespace devdax:2M:512M --namespace devdax:4K:256M --namespace devdax:1G:2G --namespace fsdax::512M)
    for k in $KERNELS; do
        echo "== guest tests, kernel $k"
        log=$RESULTS/vm-$k.log xml=$RESULTS/vm-$k.xml
        set +e
        scripts/vm/vmrun --kernel "$k" --pmem nfit:4G "${NAMESPACES[@]}" \
            --env DAXMM_VM_EXPECT_ALIGNS=4K,2M,1G --env DAXMM_VM_EXPECT_FSDAX=1 \
            --timeout 1800 --console-log "$RESULTS/vm-$k.console" -- \
            sh -c "uname -r >&2; '$TESTBIN' --testing-library swift-testing --filter 'Real' --xunit-output '$xml'; \
                   echo \$? >'$RESULTS/vm-$k.rc'; \
                   scripts/vm/exercise-suite.sh '$BIN/daxmm' '$RESULTS/exercise-$k.txt'; \
                   exit \$(cat '$RESULTS/vm-$k.rc')" \
            2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        set -e
        if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then
            echo "test.sh: guest run on kernel $k ended with status $rc (console: $RESULTS/vm-$k.console)" >&2
        fi
        # daxmm exercise on the same guest's devices (scripts/vm/exercise-suite.sh).
        count_checks "exercise-$k" "$RESULTS/exercise-$k.txt" 0
        count "vm-$k" "$log" "$xml" 1 "$rc"
    done
fi

if [ "$HOST_ONLY" = 0 ]; then
    # Two DIMMs on two NUMA nodes: discovery reports each device's node.
    k=${KERNELS%% *}
    echo "== guest tests, two NUMA nodes, kernel $k"
    log=$RESULTS/vm-numa.log xml=$RESULTS/vm-numa.xml
    set +e
    scripts/vm/vmrun --kernel "$k" --numa-nodes 2 --pmem nfit:2G,node=0 --pmem nfit:2G,node=1 \
        --namespace devdax:2M:1G@nmem0 --namespace devdax:2M:1G@nmem1 \
        --env DAXMM_VM_EXPECT_NODES=0,1 --env DAXMM_VM_EXPECT_ALIGNS=2M \
        --timeout 1800 --console-log "$RESULTS/vm-numa.console" -- \
        sh -c "'$TESTBIN' --testing-library swift-testing --filter RealDiscoveryTests --xunit-output '$xml'" \
        2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    count "vm-numa" "$log" "$xml" 1 "$rc"
fi

echo "== summary"
for p in "${PHASES[@]}"; do echo "  $p"; done
echo "$TOTAL_PASS passed, $TOTAL_FAIL failed, $TOTAL_SKIP skipped"
[ "$TOTAL_FAIL" -eq 0 ]
