#!/usr/bin/env bash
# `make bench-vm`: `daxmm bench` on real device-dax inside the project's VM
# (the CI layout: dax0.0 2M 512M, dax0.1 4K 256M, dax0.2 1G 2G, an fsdax
# namespace), one device after the other, with the optimised binary, and
# fio's dev-dax engine: `all` on the first device (the port's own matrix
# once), `device` (fault, pin, fio) on the others. Under the machine-wide VM lock, one guest at a time.
#
#   scripts/bench-vm.sh                 sid guest kernel
#   KERNEL=6.12 scripts/bench-vm.sh     Debian 12's 6.12
#   QUICK=1 scripts/bench-vm.sh         fewer samples
#
# Results: .build/bench-results/<kernel>-<align>.{json,svg,txt} and
# bench-vm-<kernel>.log. The guest is TCG: its times are not hardware times;
# ratios within one run still compare.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KERNEL=${KERNEL:-sid}; [ -n "$KERNEL" ] || KERNEL=sid
scripts/setup.sh
# shellcheck source=scripts/env.sh
. scripts/env.sh
swift build -c release --product daxmm
BIN="$(swift build -c release --show-bin-path)/daxmm"
case "$BIN" in "$ROOT"/*) ;; *) echo "bench-vm: $BIN is not under $ROOT (the guest sees only the work tree)" >&2; exit 1 ;; esac
OUT=$ROOT/.build/bench-results
mkdir -p "$OUT"
COMMIT=$(git describe --always --dirty 2>/dev/null || echo unknown)
QUICKFLAG=""
if [ "${QUICK:-0}" = 1 ]; then QUICKFLAG="--quick"; fi

# The guest's script: every device-dax device by alignment (discovery, not
# names), the text table to the log, JSON and SVG into $OUT.
GUEST=$(cat <<GEOF
set -u
rc=0
for dev in \$(daxctl list -D | jq -r '.[] | select(.mode=="devdax") | .chardev' | sort); do
  align=\$(daxctl list -d "\$dev" | jq -r '.[0].align')
  case "\$align" in 4096) a=4K;; 2097152) a=2M;; 1073741824) a=1G;; *) a=\$align;; esac
  base="$OUT/$KERNEL-\$a"
  # The port's own matrix does not depend on the device: once, with the first.
  mode=device; [ -n "\${first:-}" ] || { mode=all; first=1; }
  echo "== daxmm bench \$mode --device /dev/\$dev (align \$a)"
  "$BIN" bench \$mode --device "/dev/\$dev" $QUICKFLAG --json --plot "\$base.svg" > "\$base.json" || rc=1
  "$BIN" bench --from "\$base.json" > "\$base.txt" || rc=1
  cat "\$base.txt"
done
exit \$rc
GEOF
)
echo "bench-vm: kernel $KERNEL, results in $OUT"
flock /tmp/daxmm-vm.lock scripts/vm/vmrun --kernel "$KERNEL" --pmem nfit:4G \
    --namespace devdax:2M:512M --namespace devdax:4K:256M --namespace devdax:1G:2G --namespace fsdax::512M \
    --env DAXMM_COMMIT="$COMMIT" --timeout 900 -- sh -c "$GUEST" 2>&1 | tee "$OUT/bench-vm-$KERNEL.log"
exit "${PIPESTATUS[0]}"
