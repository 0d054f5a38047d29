#!/usr/bin/env bash
# The main job: install what is missing, build (release, so the times it
# prints mean something), then `daxmm run` (list the devices, check the
# default or given device). Extra arguments go to `daxmm run`, e.g.
# scripts/run.sh --device emulated:size=4G,align=1G
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck source=scripts/env.sh
. scripts/env.sh
swift build -c release --product daxmm
exec "$(swift build -c release --show-bin-path)/daxmm" run "$@"
