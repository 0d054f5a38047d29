#!/usr/bin/env bash
# `make bench ARGS='...'`: install what is missing, build daxmm optimised
# (figures from a debug build mean nothing), run `daxmm bench ARGS`
# (default: all, on the default device: the first real device-dax, else the
# emulated one). Examples:
#   scripts/bench.sh fault --device emulated:size=256M,align=2M
#   scripts/bench.sh all --device /dev/dax0.0 --json --plot .build/bench.svg
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck source=scripts/env.sh
. scripts/env.sh
swift build -c release --product daxmm
bin="$(swift build -c release --show-bin-path)/daxmm"
if [ $# -eq 0 ]; then set -- all; fi
DAXMM_COMMIT=${DAXMM_COMMIT:-$(git describe --always --dirty 2>/dev/null || true)} exec "$bin" bench "$@"
