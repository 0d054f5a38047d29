#!/usr/bin/env bash
# The benchmark regression check a developer runs before committing a change
# to a hot path: `daxmm bench port` (release build) measured now, each case's
# judged ratio (port / floor, time / 1 GiB for memremap, the speedup of two
# threads) against Benchmarks/port-ratios.json. Ratios, never absolute times:
# the same commit reads 2x apart on two machines of the same kind, but its
# port/floor ratios measured in one run agree within about 10%.
#
#   scripts/bench-check.sh                 compare; exit 1 on a regression
#   scripts/bench-check.sh --update        measure and rewrite the baseline
#   scripts/bench-check.sh --tolerance T   allowed worsening (default 0.25 = 25%)
#   scripts/bench-check.sh --filter S      only cases whose id contains S
#
# A case regresses when its ratio grew by more than the tolerance (for a
# speedup: shrank). Cases new since the baseline are listed, not judged; a
# case whose target was met in the baseline and is missed now is named.
# Run it on an otherwise idle machine: the two-thread case needs both cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=Benchmarks/port-ratios.json
TOL=0.25 UPDATE=0 FILTER=
while [ $# -gt 0 ]; do
    case "$1" in
        --update) UPDATE=1 ;;
        --tolerance) TOL="$2"; shift ;;
        --filter) FILTER="$2"; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "bench-check: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
scripts/setup.sh >/dev/null
# shellcheck source=scripts/env.sh
. scripts/env.sh
swift build -c release --product daxmm 2>&1 | tail -n 1
bin="$(swift build -c release --show-bin-path)/daxmm"
mkdir -p .build/bench-results
NOW=.build/bench-results/port-check.json
commit=$(git describe --always --dirty 2>/dev/null || echo unknown)
DAXMM_COMMIT=$commit "$bin" bench port --json ${FILTER:+--filter "$FILTER"} > "$NOW"

# id -> {value, minimum, target, met} of every judged row.
judged='[.rows[] | select(.targetValue != null) | {key: .id, value: {value: .targetValue, minimum: (.targetMinimum // false), target: .target, met: .met}}] | from_entries'

if [ "$UPDATE" = 1 ]; then
    machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
    jq --arg machine "$machine" --arg tol "$TOL" "{date: .date, commit: .commit, machine: \$machine, tolerance: (\$tol | tonumber), cases: ($judged)}" "$NOW" > "$BASE.tmp"
    mv "$BASE.tmp" "$BASE"
    echo "bench-check: baseline $BASE rewritten ($(jq '.cases | length' "$BASE") cases, commit $commit)"
    exit 0
fi
[ -f "$BASE" ] || { echo "bench-check: no baseline $BASE (run with --update first)" >&2; exit 2; }

jq -r --slurpfile base "$BASE" --argjson tol "$TOL" "
  ($judged) as \$now | \$base[0].cases as \$was |
  (\$now | to_entries[]) as \$e |
  (\$was[\$e.key]) as \$b |
  if \$b == null then \"NEW        \(\$e.key)  \(\$e.value.value * 1000 | round / 1000)\"
  else
    (if \$e.value.minimum then (\$e.value.value < \$b.value * (1 - \$tol)) else (\$e.value.value > \$b.value * (1 + \$tol)) end) as \$worse |
    (if \$worse then \"REGRESSED\" elif (\$b.met == true and \$e.value.met == false) then \"NOW-MISSED\" else \"ok\" end) as \$verdict |
    \"\(\$verdict | . + \"           \" | .[0:10]) \(\$e.key)  \(\$b.value * 1000 | round / 1000) -> \(\$e.value.value * 1000 | round / 1000)\"
  end" "$NOW" | tee .build/bench-results/port-check.txt
regressed=$(grep -c '^REGRESSED' .build/bench-results/port-check.txt || true)
echo "bench-check: $(grep -c '^ok' .build/bench-results/port-check.txt || true) ok, $regressed regressed (tolerance $TOL, baseline commit $(jq -r .commit "$BASE"))"
[ "$regressed" = 0 ]
