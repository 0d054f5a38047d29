#!/usr/bin/env bash
# guest-setup.sh: create persistent-memory namespaces inside the test VM.
#
#   guest-setup.sh SPEC...     (re)create namespaces, then list them
#   guest-setup.sh --list      list the namespaces
#
# SPEC is MODE:ALIGN:SIZE[@TARGET], as vmrun's --namespace: MODE devdax,
# fsdax, raw or sector; ALIGN and SIZE may be empty (ndctl's defaults; SIZE
# empty = all the free space); TARGET regionN, or nmemN for the region on that
# DIMM; default: the first region with room.
#
# vmrun's guest init runs it before the command; it also works by hand in the
# guest (as root). Messages and the summary go to stderr. Exit status 1 when a
# namespace cannot be created, with ndctl's message.
#
# What it does:
#   * loads the nvdimm/dax modules if they are not loaded yet;
#   * when any SPEC is given, initialises the namespace labels of every DIMM
#     that has a label area (this destroys their namespaces): a fresh label
#     area reads as "no labels", and the kernel then treats the region as
#     label-less, which cannot be split into several namespaces;
#   * creates each namespace in order: `ndctl create-namespace -r REGION -m
#     MODE -a ALIGN -s SIZE` on a labelled region; on a label-less region
#     (memmap pmem, or an NVDIMM without a label area) the region's single
#     namespace is reconfigured as a whole (`-f -e namespaceN.0`).
set -euo pipefail
shopt -s inherit_errexit

SYS=/sys/bus/nd/devices

log() { printf 'guest-setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

# "512M" -> bytes (binary units, as ndctl reads them)
parse_size() {
    local s=${1^^}
    [[ $s =~ ^([0-9]+)([KMGT]?)$ ]] || return 1
    case ${BASH_REMATCH[2]} in
    '') echo "${BASH_REMATCH[1]}" ;;
    K) echo $((BASH_REMATCH[1] << 10)) ;;
    M) echo $((BASH_REMATCH[1] << 20)) ;;
    G) echo $((BASH_REMATCH[1] << 30)) ;;
    T) echo $((BASH_REMATCH[1] << 40)) ;;
    esac
}

load_modules() {
    local m missing=()
    for m in libnvdimm nfit nd_pmem dax_pmem device_dax; do
        [ -d "/sys/module/$m" ] || missing+=("$m")
    done
    [ ${#missing[@]} -eq 0 ] && return
    # nd_e820 only exists for legacy pmem; a kernel may lack it.
    modprobe -q --ignore-install nd_e820 || :
    modprobe --ignore-install -a "${missing[@]}" || die "modprobe ${missing[*]} failed"
}

# Names of the regions / DIMMs, in numeric order.
list_devices() { # prefix
    local d
    for d in "$SYS/$1"*; do
        [ -e "$d" ] && [[ ${d##*/} =~ ^$1[0-9]+$ ]] && echo "${d##*/}"
    done | sort -V
}

# A region whose namespaces are described by labels (and can be several) has
# nstype 5 (ND_DEVICE_NAMESPACE_PMEM); a label-less one has 4 (..._IO).
region_is_labelled() { [ "$(cat "$SYS/$1/nstype")" = 5 ]; }

# DIMMs with a namespace label area (they have label slots).
dimm_has_labels() { cat "$SYS/$1/available_slots" >/dev/null 2>&1; }

region_of_dimm() { # nmemN -> regionM
    local r
    for r in $(list_devices region); do
        grep -q "^$1," "$SYS/$r"/mapping* 2>/dev/null && { echo "$r"; return 0; }
    done
    return 1
}

region_free() { # region -> bytes in the largest free extent
    local r=$1
    if [ -r "$SYS/$r/max_available_extent" ]; then
        cat "$SYS/$r/max_available_extent"
    else
        cat "$SYS/$r/available_size"
    fi
}

init_labels() {
    local d dimms=()
    for d in $(list_devices nmem); do
        dimm_has_labels "$d" && dimms+=("$d")
    done
    [ ${#dimms[@]} -eq 0 ] && return
    log "initialising the namespace labels of ${dimms[*]}"
    ndctl disable-region all >/dev/null 2>&1 || :
    run_ndctl "init-labels -f ${dimms[*]}" init-labels -f "${dimms[@]}" >/dev/null
    run_ndctl "enable-region all" enable-region all >/dev/null
}

# Runs ndctl; on failure prints what it said, and dies with $1 as context.
run_ndctl() { # context args...
    local context=$1 out rc=0
    shift
    out=$(ndctl "$@" 2>&1) || rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '%s\n' "$out" | sed 's/^/    ndctl: /' >&2
        die "$context failed (ndctl $*, exit $rc)"
    fi
    printf '%s\n' "$out"
}

declare -A RECONFIGURED=()
# What create-namespace printed, as region objects for summary_of.
CREATED=()

# Records ndctl create-namespace's JSON output $2 for region $1.
record_created() {
    local node=null
    if [ -r "$SYS/$1/target_node" ]; then
        node=$(cat "$SYS/$1/target_node")
    elif [ -r "$SYS/$1/numa_node" ]; then
        node=$(cat "$SYS/$1/numa_node")
    fi
    CREATED+=("{\"dev\":\"$1\",\"target_node\":$node,\"namespaces\":[$2]}")
}

create_namespace() { # spec
    local spec=$1 mode align size target region bytes r seed
    [[ $spec =~ ^(devdax|fsdax|raw|sector):([0-9]+[KMGTkmgt]?)?:([0-9]+[KMGTkmgt]?)?(@((region|nmem)[0-9]+))?$ ]] ||
        die "bad namespace spec '$spec' (MODE:ALIGN:SIZE[@regionN|@nmemN])"
    mode=${BASH_REMATCH[1]}
    align=${BASH_REMATCH[2]}
    size=${BASH_REMATCH[3]}
    target=${BASH_REMATCH[5]}
    bytes=0
    [ -n "$size" ] && bytes=$(parse_size "$size")

    case $target in
    region*)
        [ -d "$SYS/$target" ] || die "$spec: there is no $target (regions: $(list_devices region | paste -sd' '))"
        region=$target ;;
    nmem*)
        [ -d "$SYS/$target" ] || die "$spec: there is no $target (DIMMs: $(list_devices nmem | paste -sd' '))"
        region=$(region_of_dimm "$target") || die "$spec: $target is in no region"
        ;;
    '')
        region=
        for r in $(list_devices region); do
            if region_is_labelled "$r"; then
                [ "$(region_free "$r")" -ge "$bytes" ] && [ "$(region_free "$r")" -gt 0 ] &&
                    { region=$r; break; }
            elif [ -z "$size" ] && [ -z "${RECONFIGURED[$r]:-}" ]; then
                region=$r
                break
            fi
        done
        if [ -z "$region" ]; then
            for r in $(list_devices region); do
                region_is_labelled "$r" && continue
                [ -n "$size" ] && die "$spec: no labelled region has room for it, and a label-less" \
                    "region ($r) holds one namespace spanning it: leave SIZE empty ($mode:$align:)"
            done
            die "$spec: no region has room for it; regions:
$(ndctl list -R -u 2>&1)"
        fi
        ;;
    esac

    local -a args=(-m "$mode")
    [ -n "$align" ] && args+=(-a "$align")
    if [[ ${align^^} == 1G && -n $size && $bytes -lt $((2 << 30)) ]]; then
        log "note: a 1G-aligned devdax namespace needs SIZE >= 2G (about 1G is usable)"
    fi
    if region_is_labelled "$region"; then
        [ -n "$size" ] && args+=(-s "$size")
        record_created "$region" "$(run_ndctl "$spec on $region" create-namespace -r "$region" "${args[@]}")"
    else
        [ -z "$size" ] || die "$spec: $region has no labels: it holds one namespace spanning" \
            "the whole region, so leave SIZE empty ($mode:$align:)"
        [ -z "${RECONFIGURED[$region]:-}" ] ||
            die "$spec: label-less $region was already configured by an earlier spec"
        seed=
        for r in "$SYS/$region"/namespace*.0; do
            [ -e "$r" ] && seed=${r##*/}
        done
        [ -n "$seed" ] || die "$spec: label-less $region has no namespace to reconfigure"
        record_created "$region" "$(run_ndctl "$spec on $region" create-namespace -f -e "$seed" "${args[@]}")"
        RECONFIGURED[$region]=1
    fi
}

# One line per namespace, e.g.
#   namespace0.0 devdax 502M align=2M /dev/dax0.0 (region0, node 0)
# from JSON on stdin: `ndctl list -N -R -v` output or an array of regions.
summary_of() {
    local json
    json=$(cat)
    if [ -z "$json" ] || [ "$json" = '[]' ]; then
        log "no namespaces"
        return
    fi
    if ! command -v jq >/dev/null; then
        printf '%s\n' "$json" >&2
        return
    fi
    jq -r '
        def list: if type == "array" then .[] else . end;
        def human: if . >= 1073741824 and . % 1073741824 == 0 then "\(. / 1073741824)G"
            elif . >= 1048576 and . % 1048576 == 0 then "\(. / 1048576)M"
            elif . % 1024 == 0 then "\(. / 1024)K" else "\(.)" end;
        (if type == "object" and has("regions") then .regions else . end) | list
        | .dev as $region | .target_node as $rnode
        | (.namespaces // []) | list
        | (.target_node // $rnode) as $node
        | "\(.dev) \(.mode) \(.size | human)"
          + (if .align then " align=\(.align | human)" else "" end)
          + (if .chardev then " /dev/\(.chardev)"
             elif .daxregion then " /dev/\(.daxregion.devices[0].chardev)"
             elif .blockdev then " /dev/\(.blockdev)" else "" end)
          + " (\($region)" + (if $node != null then ", node \($node)" else "" end) + ")"
    ' <<<"$json" | sort -V | sed 's/^/guest-setup: /' >&2
}

main() {
    case ${1:-} in
    -h | --help) usage; return 0 ;;
    --list)
        load_modules
        ndctl list -N -R -v 2>/dev/null | summary_of
        return 0 ;;
    '') usage >&2; return 2 ;;
    esac
    [ "$(id -u)" = 0 ] || die "must run as root"
    command -v ndctl >/dev/null || die "ndctl not found"
    load_modules
    # Wait for the kernel's asynchronous probing of the nvdimm buses (what
    # ndctl does first, without the cost of a process under TCG).
    cat "$SYS"/ndbus*/wait_probe >/dev/null 2>&1 || :
    [ -n "$(list_devices region)" ] || die "no pmem regions: did the VM get any --pmem?"
    init_labels
    local spec
    for spec in "$@"; do
        create_namespace "$spec"
    done
    # The namespaces just created; no extra ndctl run (each costs a few
    # tenths of a second under TCG).
    local IFS=,
    summary_of <<<"[${CREATED[*]}]"
}

main "$@"
