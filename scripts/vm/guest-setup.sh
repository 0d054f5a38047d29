#!/usr/bin/env bash
# guest-setup.sh: create persistent-memory namespaces inside the test VM.
#
#   guest-setup.sh SPEC...     (re)create namespaces, then list them
#   guest-setup.sh --list      list the namespaces (and the dynamic dax
#                              regions of vmrun --hmem)
#
# SPEC is MODE:ALIGN:SIZE[@TARGET], as vmrun's --namespace: MODE devdax,
# fsdax, raw or sector; ALIGN and SIZE may be empty (ndctl's defaults; SIZE
# empty = all the free space); TARGET regionN, or nmemN for the region on that
# DIMM; default: the first region with room.
#
# vmrun's guest init runs it before the command; it also works by hand in the
# guest (as root). Messages and the summary go to stderr. Exit status 1 when a
# namespace cannot be created, with the reason (or ndctl's message).
#
# What it does:
#   * loads the nvdimm/dax modules if they are not loaded yet;
#   * checks every SPEC first, against the regions as they will be once the
#     labels are initialised (the target exists, the kernel offers ALIGN for
#     MODE, SIZE is what ndctl accepts, the specs fit): a SPEC that cannot be
#     created stops it here, before any namespace is changed;
#   * then initialises the namespace labels of every DIMM
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

# 1073741824 -> 1G, 268435456 -> 256M
human() {
    local b=$1
    if [ "$b" -eq 0 ]; then echo 0
    elif [ "$b" -ge $((1 << 30)) ] && [ $((b % (1 << 30))) -eq 0 ]; then echo "$((b >> 30))G"
    elif [ "$b" -ge $((1 << 20)) ] && [ $((b % (1 << 20))) -eq 0 ]; then echo "$((b >> 20))M"
    elif [ $((b % 1024)) -eq 0 ]; then echo "$((b >> 10))K"
    else echo "$b"; fi
}

# The alignments the kernel offers for MODE on REGION (the seed device's
# supported_alignments, which ndctl checks -a against), or nothing when this
# kernel does not say.
supported_alignments() { # mode region
    local seed_attr seed
    case $1 in
    devdax) seed_attr=dax_seed ;;
    fsdax) seed_attr=pfn_seed ;;
    *) return 0 ;;
    esac
    seed=$(cat "$SYS/$2/$seed_attr" 2>/dev/null) || return 0
    [ -n "$seed" ] && cat "$SYS/$seed/supported_alignments" 2>/dev/null || :
}

# The plan, one entry per SPEC: made in full before anything is changed, so
# that a spec that cannot be satisfied (syntax, an alignment the kernel does
# not offer, a size ndctl refuses, no room) stops the setup while the
# existing namespaces are still untouched.
P_SPEC=() P_MODE=() P_ALIGN=() P_SIZE=() P_REGION=()
declare -A FREE=()        # labelled region -> bytes left after the planned namespaces
declare -A RECONFIGURED=() # label-less region -> the spec that takes it

# Region size: what a labelled region has free once init_labels has run.
region_size() { cat "$SYS/$1/size"; }

# Whether the region will hold labelled namespaces once init_labels has run:
# all its DIMMs have a label area. (Before that, a fresh label area reads as
# "no labels" and the region as label-less.)
will_be_labelled() { # region
    local m dimm n=0
    for m in "$SYS/$1"/mapping[0-9]*; do
        [ -r "$m" ] || continue
        dimm=$(cut -d, -f1 "$m")
        dimm_has_labels "$dimm" || return 1
        n=$((n + 1))
    done
    [ "$n" -gt 0 ]
}

plan_namespace() { # spec
    local spec=$1 mode align size target region bytes=0 abytes=0 r room ralign supported
    [[ $spec =~ ^(devdax|fsdax|raw|sector):([0-9]+[KMGTkmgt]?)?:([0-9]+[KMGTkmgt]?)?(@((region|nmem)[0-9]+))?$ ]] ||
        die "bad namespace spec '$spec' (MODE:ALIGN:SIZE[@regionN|@nmemN])"
    mode=${BASH_REMATCH[1]}
    align=${BASH_REMATCH[2]}
    size=${BASH_REMATCH[3]}
    target=${BASH_REMATCH[5]}
    [ -n "$size" ] && bytes=$(parse_size "$size")
    [ -n "$align" ] && abytes=$(parse_size "$align")
    if [ -n "$align" ] && [[ $mode == raw || $mode == sector ]]; then
        die "$spec: $mode namespaces take no ALIGN (ndctl: $mode mode does not support setting an alignment)"
    fi

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
            if will_be_labelled "$r"; then
                room=${FREE[$r]:-$(region_size "$r")}
                [ "$room" -ge "$bytes" ] && [ "$room" -gt 0 ] && { region=$r; break; }
            elif [ -z "$size" ] && [ -z "${RECONFIGURED[$r]:-}" ]; then
                region=$r
                break
            fi
        done
        if [ -z "$region" ]; then
            for r in $(list_devices region); do
                will_be_labelled "$r" && continue
                [ -n "$size" ] && die "$spec: no labelled region has room for it, and a label-less" \
                    "region ($r) holds one namespace spanning it: leave SIZE empty ($mode:$align:)"
            done
            local rooms=
            for r in $(list_devices region); do
                will_be_labelled "$r" || continue
                rooms+=" $r: $(human "${FREE[$r]:-$(region_size "$r")}") of $(human "$(region_size "$r")");"
            done
            die "$spec: no region has room for $(human "$bytes") (free after the specs before it:${rooms%;})"
        fi
        ;;
    esac

    if [ -n "$align" ]; then
        supported=$(supported_alignments "$mode" "$region")
        if [ -n "$supported" ] && ! [[ " $supported " == *" $abytes "* ]]; then
            local names= a
            for a in $supported; do names+=" $(human "$a")"; done
            die "$spec: the kernel offers no $mode alignment $align on $region (supported:$names)"
        fi
    fi

    if will_be_labelled "$region"; then
        room=${FREE[$region]:-$(region_size "$region")}
        [ -z "$size" ] && bytes=$room
        ralign=$(cat "$SYS/$region/align" 2>/dev/null) || ralign=$((16 << 20))
        [ "$bytes" -gt 0 ] || die "$spec: $region has no room left after the specs before it"
        [ "$bytes" -le "$room" ] ||
            die "$spec: $region has $(human "$room") free (of $(human "$(region_size "$region")")) after the specs before it, not $(human "$bytes")"
        [ $((bytes % ralign)) -eq 0 ] ||
            die "$spec: SIZE must be a multiple of $region's alignment, $(human "$ralign")"
        if [ "$mode" != raw ] && [ "$bytes" -lt $((16 << 20)) ]; then
            die "$spec: a $mode namespace must be at least 16M"
        fi
        FREE[$region]=$((room - bytes))
    else
        [ -z "$size" ] || die "$spec: $region has no labels: it holds one namespace spanning" \
            "the whole region, so leave SIZE empty ($mode:$align:)"
        [ -z "${RECONFIGURED[$region]:-}" ] ||
            die "$spec: label-less $region is already taken by ${RECONFIGURED[$region]}"
        RECONFIGURED[$region]=$spec
        bytes=$(region_size "$region")
    fi
    if [ "$abytes" -gt 0 ] && [ $((bytes % abytes)) -ne 0 ]; then
        die "$spec: SIZE $(human "$bytes") is not a multiple of ALIGN $align"
    fi
    # The info block and the struct pages come first and the data starts at
    # the next ALIGN boundary: 1G alignment costs a whole 1G.
    if [ "$abytes" -eq $((1 << 30)) ] && [ "$bytes" -lt $((2 << 30)) ]; then
        die "$spec: a 1G-aligned $mode namespace needs SIZE >= 2G (its first 1G holds the metadata)"
    fi
    P_SPEC+=("$spec") P_MODE+=("$mode") P_ALIGN+=("$align") P_SIZE+=("$size") P_REGION+=("$region")
}

create_namespace() { # plan index
    local i=$1 spec region out seed r
    spec=${P_SPEC[i]} region=${P_REGION[i]}
    local -a args=(-m "${P_MODE[i]}")
    [ -n "${P_ALIGN[i]}" ] && args+=(-a "${P_ALIGN[i]}")
    # (The output is assigned first: a failure inside $(...) used as an
    # argument would not stop the script.)
    if region_is_labelled "$region"; then
        [ -n "${P_SIZE[i]}" ] && args+=(-s "${P_SIZE[i]}")
        out=$(run_ndctl "$spec on $region" create-namespace -r "$region" "${args[@]}")
    else
        seed=
        for r in "$SYS/$region"/namespace*.0; do
            [ -e "$r" ] && seed=${r##*/}
        done
        [ -n "$seed" ] || die "$spec: label-less $region has no namespace to reconfigure"
        out=$(run_ndctl "$spec on $region" create-namespace -f -e "$seed" "${args[@]}")
    fi
    record_created "$region" "$out"
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

# One line per dynamic dax region (soft-reserved memory, vmrun --hmem), e.g.
#   hmem.0: dax region 1, 256M, 192M available, align=2M, devices dax1.0 64M
dynamic_regions() {
    local d name devs dev size
    for d in /sys/bus/platform/devices/hmem.*/dax_region; do
        [ -d "$d" ] || continue
        name=${d%/dax_region}
        name=${name##*/}
        devs=
        for dev in "${d%/dax_region}"/dax*.*; do
            [ -e "$dev/size" ] || continue
            size=$(cat "$dev/size")
            devs+=" ${dev##*/} $(human "$size"),"
        done
        log "$name: dax region $(cat "$d/id"), $(human "$(cat "$d/size")"), $(human "$(cat "$d/available_size")") available," \
            "align=$(human "$(cat "$d/align")")${devs:+, devices${devs%,}}"
    done
}

main() {
    case ${1:-} in
    -h | --help) usage; return 0 ;;
    --list)
        load_modules
        ndctl list -N -R -v 2>/dev/null | summary_of
        dynamic_regions
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
    local spec i
    for spec in "$@"; do
        plan_namespace "$spec"
    done
    init_labels
    for i in "${!P_SPEC[@]}"; do
        create_namespace "$i"
    done
    # The namespaces just created; no extra ndctl run (each costs a few
    # tenths of a second under TCG).
    local IFS=,
    summary_of <<<"[${CREATED[*]}]"
}

main "$@"
