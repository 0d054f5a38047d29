#!/bin/sh
# `daxmm exercise` on the guest's real devices, one named check per run:
# device-dax at each alignment (with io_uring FOLL_LONGTERM pins), O_DIRECT
# FOLL_PIN pins into a device-dax window from the fsdax namespace's block
# device, fs-dax mode over the 4K device (O_DIRECT, and FOLL_LONGTERM refused
# by the port and by the kernel on a real ext4 -o dax file), and last the
# namespace reconfigured under a live window, which must end the run with an
# error naming the extent.
#
#   exercise-suite.sh DAXMM RESULTS-FILE
#
# Writes "PASS name" / "FAIL name" lines to RESULTS-FILE, then the line
# "exercise: N passed, N failed"; each run's output goes to stdout. Needs root
# (pagemap pfns, ndctl).
set -u
DAXMM=$1
OUT=$2
: >"$OUT"

log() { echo "exercise-suite: $*"; }
result() { echo "$1 $2" >>"$OUT"; log "$1 $2"; }

# run NAME EXPECT(0|1) ARGS...: expect exit 0, or 1 with "exercise: FAILED".
run() {
    name=$1 expect=$2
    shift 2
    log "== $name: daxmm exercise $*"
    "$DAXMM" exercise "$@" >"/tmp/ex-$name.out" 2>&1
    rc=$?
    cat "/tmp/ex-$name.out"
    if [ "$rc" -eq "$expect" ]; then result PASS "$name"; else result FAIL "$name (exit $rc, expected $expect)"; fi
}

# dev_for_align 4096|2097152|1073741824: the first enabled device-dax with it.
dev_for_align() {
    for d in /sys/bus/dax/devices/dax*; do
        [ -e "$d/align" ] || continue
        [ "$(cat "$d/align")" = "$1" ] && { basename "$d"; return 0; }
    done
    return 1
}

D4K=$(dev_for_align 4096) || D4K=
D2M=$(dev_for_align 2097152) || D2M=
D1G=$(dev_for_align 1073741824) || D1G=
PMEM=$(ls /dev/pmem* 2>/dev/null | head -n1)
log "devices: 4K=${D4K:-none} 2M=${D2M:-none} 1G=${D1G:-none} pmem=${PMEM:-none}; kernel $(uname -r)"

for a in 4K 2M 1G; do
    eval d=\$D$a
    [ -n "$d" ] || { result FAIL "devdax-$a (no device of this alignment)"; continue; }
done

# Device-dax: faults at each alignment, io_uring FOLL_LONGTERM pins, the
# pagemap cross-checks. The 4K window is small: each extent is a host VMA.
[ -n "$D4K" ] && run devdax-4K 0 --device "$D4K" --window 16M --pattern random --threads 2 --ops 20000 --pins uring
[ -n "$D2M" ] && run devdax-2M 0 --device "$D2M" --window 256M --pattern random --threads 2 --ops 50000 --pins uring
[ -n "$D1G" ] && run devdax-1G 0 --device "$D1G" --window 1G --pattern strided --threads 2 --ops 20000 --pins uring
# O_DIRECT (FOLL_PIN) from the fsdax namespace's block device.
if [ -n "$D2M" ] && [ -n "$PMEM" ]; then
    run devdax-2M-odirect 0 --device "$D2M" --window 64M --pattern sequential --threads 1 --ops 20000 --pins odirect --direct-io "$PMEM"
else
    result FAIL "devdax-2M-odirect (needs a 2M device-dax and a pmem block device)"
fi

# fs-dax mode: the port's extent store over the 4K device.
if [ -n "$D4K" ]; then
    run fsdax-4K 0 --device "$D4K" --mode fsdax --window 16M --pattern random --threads 2 --ops 20000
    if [ -n "$PMEM" ]; then
        run fsdax-4K-odirect 0 --device "$D4K" --mode fsdax --window 8M --pattern sequential --threads 1 --ops 5000 --pins odirect --direct-io "$PMEM"
    fi
    # FOLL_LONGTERM on fs-dax: the port refuses, and so does the kernel on a
    # real ext4 -o dax file.
    if [ -n "$PMEM" ] && mkdir -p /mnt/daxmm-ext4 && mkfs.ext4 -q -F -b 4096 "$PMEM" >/dev/null 2>&1 &&
        mount -o dax "$PMEM" /mnt/daxmm-ext4; then
        run fsdax-4K-longterm 0 --device "$D4K" --mode fsdax --window 8M --threads 1 --ops 2000 --pins uring --fsdax-file /mnt/daxmm-ext4/longterm
        umount /mnt/daxmm-ext4
    else
        result FAIL "fsdax-4K-longterm (could not mount ext4 -o dax on ${PMEM:-no pmem device})"
    fi
fi

# Bad input: each a clear line and exit 1, nothing else.
[ -n "$D2M" ] && run bad-window-too-large 1 --device "$D2M" --window 64G
[ -n "$D2M" ] && run bad-window-misaligned 1 --device "$D2M" --window 3M
[ -n "$D2M" ] && run bad-threads-0 1 --device "$D2M" --threads 0
[ -n "$D1G" ] && run bad-fsdax-on-1G 1 --device "$D1G" --mode fsdax

# Last: the namespace is reconfigured under a live window. The kernel zaps
# the user mappings (kill_dev_dax) and later accesses get SIGBUS; the port
# must do the same, and the run must end with an error naming the extent.
if [ -n "$D2M" ]; then
    # The char device's parent is the nd dax device, which names its namespace.
    nddax=$(dirname "$(readlink -f "/sys/bus/dax/devices/$D2M")")
    ns=$(cat "$nddax/namespace" 2>/dev/null)
    log "== devdax-reconfigure-under-window: $D2M is ${ns:-?}"
    if [ -z "$ns" ]; then
        result FAIL "devdax-reconfigure-under-window (no namespace found for $D2M under $nddax)"
        ns=none
    fi
    "$DAXMM" exercise --device "$D2M" --window 256M --pattern random --threads 2 --ops 1000000000 --duration 600 >/tmp/ex-reconf.out 2>&1 &
    pid=$!
    sleep 15
    if [ "$ns" = none ]; then nrc=1; else
        ndctl create-namespace -f -e "$ns" -m raw >/tmp/ex-reconf-ndctl.out 2>&1
        nrc=$?
    fi
    # If the reconfiguration did not happen, the run would go on for its
    # whole duration: stop it.
    [ "$nrc" -eq 0 ] || kill "$pid" 2>/dev/null
    wait $pid
    rc=$?
    cat /tmp/ex-reconf.out /tmp/ex-reconf-ndctl.out 2>/dev/null
    if [ "$ns" = none ]; then
        :
    elif [ "$nrc" -ne 0 ]; then
        result FAIL "devdax-reconfigure-under-window (ndctl create-namespace -f -e $ns -m raw failed: $nrc)"
    elif [ "$rc" -eq 1 ] && grep -q "went away" /tmp/ex-reconf.out && grep -q "exercise: FAILED" /tmp/ex-reconf.out; then
        result PASS devdax-reconfigure-under-window
    else
        result FAIL "devdax-reconfigure-under-window (exit $rc; expected 1 with the extent that failed)"
    fi
fi
p=$(grep -c '^PASS ' "$OUT")
f=$(grep -c '^FAIL ' "$OUT")
echo "exercise: $p passed, $f failed" | tee -a "$OUT"
exit 0
