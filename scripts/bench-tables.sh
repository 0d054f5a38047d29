#!/usr/bin/env bash
# Markdown tables from `daxmm bench --json` reports, for BENCHMARKS.md:
#   scripts/bench-tables.sh REPORT.json [REPORT.json...]
# Per report: what ran where, the ratios with their targets, the device rows
# (kernel, window, port, floor, fio: p50/p99 with their ratios) and, when the
# report has it, the port's matrix (port p50, floor p50, the judged ratio).
set -euo pipefail
for f in "$@"; do
    jq -r '
      def r2: if . == null then "-" elif (. | fabs) < 0.1 then (. * 10000 | round / 10000 | tostring)
              else (. * 100 | round / 100 | tostring) end;
      def ns: if . == null then "-" elif . >= 1000000 then ((. / 1000000 * 100 | round / 100 | tostring) + " ms")
              elif . >= 1000 then ((. / 1000 * 100 | round / 100 | tostring) + " µs")
              else ((. * 100 | round / 100 | tostring) + " ns") end;
      def verdict: if .met == true then "met" elif .met == false then "**missed**" else "-" end;
      "#### \(.device) (\(.deviceKind), align \(.alignName)), kernel \(.kernelRelease), \(.date[0:10]), commit \(.commit // "?")\(if .optimized then "" else " (DEBUG BUILD)" end)\n",
      (if (.ratios | length) > 0 then
        "| ratio (p50 / p50, one run) | value | target | |\n|---|---|---|---|",
        (.ratios[] | "| \(.name) | \(.value | r2) | \(if .target == null then "-" else (if .atLeast then ">= " else "<= " end) + (.target | r2) end) | \(verdict) |"),
        "" else empty end),
      (if ([.rows[] | select(.section != "port")] | length) > 0 then
        "| case | p50 | p99 | per | port/kernel | port/floor | note |\n|---|---|---|---|---|---|---|",
        (.rows[] | select(.section != "port") | "| `\(.id)` | \(.p50Ns | ns) | \(.p99Ns | ns) | \(.per) | \(.portOverKernel | r2) | \(.portOverFloor | r2) | \(.note // "" | gsub("\\|"; "/")) |"),
        "" else empty end),
      (.rows as $r | ($r | map({key: .id, value: .}) | from_entries) as $m |
       if ([$r[] | select(.section == "port")] | length) > 0 then
        "| port case | port p50 | floor p50 | ratio | target | |\n|---|---|---|---|---|---|",
        ($r[] | select(.section == "port" and (.id | endswith(".floor") | not)) |
          "| `\(.id | sub("^port\\."; ""))` | \(.p50Ns | ns) | \($m[.id + ".floor"].p50Ns | ns) | \(.targetValue | r2) | \(if .target == null then "-" else (if .targetMinimum then ">= " else "<= " end) + (.target | r2) end) | \(verdict) |"),
        "" else empty end),
      (if (.notes | length) > 0 then (.notes[] | "_\(.)_"), "" else empty end)
    ' "$f"
done
