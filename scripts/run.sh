#!/usr/bin/env bash
# The main job: install what is missing, build, then `daxmm run` (list the
# devices, check the default or given device). Extra arguments go to
# `daxmm run`, e.g. scripts/run.sh --device emulated:size=4G,align=1G
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck source=scripts/env.sh
. scripts/env.sh
swift build --product daxmm
exec "$(swift build --show-bin-path)/daxmm" run "$@"
