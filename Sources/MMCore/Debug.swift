// include/linux/mmdebug.h, mm/debug.c: VM_BUG_ON_FOLIO / VM_WARN_ON_FOLIO and
// dump_page.
//
// A failed check never crashes the process: it records a report (a fixed-size
// C record, no allocation, safe in a signal handler) in the kernel's ring and
// the caller refuses the operation. The safe API turns reports into
// `MMError.bug(PageDump)`, and `PageDump.description` prints like dump_page.

import CDaxMM
import DAXBase

/// What dump_page printed for one folio, and the rule that failed.
public struct PageDump: Equatable, Sendable, CustomStringConvertible {
    public var pfn: UInt64
    public var headPfn: UInt64
    public var refcount: Int32
    public var mapcount: Int32
    public var entireMapcount: Int32
    public var pincount: Int32
    public var order: Int
    public var flags: UInt64
    /// enum memory_type value of the pgmap (0 if none).
    public var pgmapType: Int32
    public var mapping: UInt64
    public var index: UInt64
    /// The check, e.g. "VM_BUG_ON_FOLIO(folio_ref_count(folio) + 127u <= 127u)".
    public var rule: String
    /// The ported function that ran the check.
    public var function: String

    public var flagNames: String {
        var names: [String] = []
        let table: [(dax_page_flag_bits, String)] = [
            (DAX_PG_locked, "locked"), (DAX_PG_referenced, "referenced"), (DAX_PG_uptodate, "uptodate"),
            (DAX_PG_dirty, "dirty"), (DAX_PG_head, "head"), (DAX_PG_reserved, "reserved"),
            (DAX_PG_zone_device, "zone_device"),
        ]
        for (bit, name) in table where flags & (1 << UInt64(bit.rawValue)) != 0 {
            // page[1]'s low byte is the order, not flags; only the head's are printed.
            names.append(name)
        }
        return names.joined(separator: "|")
    }

    public var pgmapTypeName: String { memoryTypeName(pgmapType) }

    public var description: String {
        var s = "page: refcount:\(refcount) mapcount:\(mapcount) mapping:\(hexDigits(mapping, width: 16)) index:\(hex(index)) pfn:\(hex(pfn))\n"
        if order > 0 {
            s += "head: pfn:\(hex(headPfn)) order:\(order) entire_mapcount:\(entireMapcount) pincount:\(pincount)\n"
        }
        s += "flags: \(hex(flags))(\(flagNames)) pgmap:\(pgmapTypeName)\n"
        s += "page dumped because: \(rule) in \(function)"
        return s
    }
}

public func memoryTypeName(_ t: Int32) -> String {
    switch t {
    case Int32(DAX_MEMORY_DEVICE_PRIVATE.rawValue): return "MEMORY_DEVICE_PRIVATE"
    case Int32(DAX_MEMORY_DEVICE_COHERENT.rawValue): return "MEMORY_DEVICE_COHERENT"
    case Int32(DAX_MEMORY_DEVICE_FS_DAX.rawValue): return "MEMORY_DEVICE_FS_DAX"
    case Int32(DAX_MEMORY_DEVICE_GENERIC.rawValue): return "MEMORY_DEVICE_GENERIC"
    case Int32(DAX_MEMORY_DEVICE_PCI_P2PDMA.rawValue): return "MEMORY_DEVICE_PCI_P2PDMA"
    default: return "none"
    }
}

/// Records a report on `page` (its folio's counters) for a failed check.
/// Allocation-free; callable from the fault path.
public func vmReport(_ k: KernelRef, _ page: Page, rule: StaticString, function: StaticString = #function) {
    let seq = UInt64(bitPattern: dax_atomic64_add_return(dax_kernel_report_seq(k), 1))
    let slotIndex = Int((seq - 1) % UInt64(DAX_REPORT_RING))
    do {
        do {
            let ring = dax_kernel_reports(k)!
            let slot = ring + slotIndex
            if dax_load_u64(dax_page_report_seq(slot)) != 0 {
                dax_atomic64_add(dax_kernel_report_lost(k), 1)
            }
            let folio = page.folio
            slot.pointee.pfn = pageToPfn(k, page)
            slot.pointee.head_pfn = pageToPfn(k, folio.head)
            slot.pointee.refcount = folio.refCount
            slot.pointee.mapcount = folio.mapcount
            slot.pointee.entire_mapcount = folio.entireMapcount
            slot.pointee.pincount = folio.pincount
            slot.pointee.order = Int32(folio.order)
            slot.pointee.flags = folio.head.flags
            slot.pointee.pgmap_type = folio.pgmap?.pointee.type ?? 0
            slot.pointee.mapping = folio.mapping
            slot.pointee.index = folio.index
            copyCString(rule, into: &slot.pointee.rule)
            copyCString(function, into: &slot.pointee.function)
            dax_store_u64(dax_page_report_seq(slot), seq)
        }
    }
}

/// Copies a static string into a fixed C char array, truncating, NUL-terminated.
@inline(__always)
func copyCString<T>(_ s: StaticString, into field: inout T) {
    withUnsafeMutableBytes(of: &field) { dst in
        let n = min(s.utf8CodeUnitCount, dst.count - 1)
        dst.baseAddress!.copyMemory(from: s.utf8Start, byteCount: n)
        dst[n] = 0
    }
}

func drainReports(_ k: KernelRef) -> [PageDump] {
    var out: [(UInt64, PageDump)] = []
    do {
        do {
            let ring = dax_kernel_reports(k)!
            for i in 0..<Int(DAX_REPORT_RING) {
                let slot = ring + i
                let seq = dax_load_u64(dax_page_report_seq(slot))
                guard seq != 0 else { continue }
                let r = slot.pointee
                let rule = withUnsafeBytes(of: r.rule) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                let fn = withUnsafeBytes(of: r.function) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                out.append((seq, PageDump(
                    pfn: r.pfn, headPfn: r.head_pfn, refcount: r.refcount, mapcount: r.mapcount,
                    entireMapcount: r.entire_mapcount, pincount: r.pincount, order: Int(r.order), flags: r.flags,
                    pgmapType: r.pgmap_type, mapping: r.mapping, index: r.index, rule: rule, function: fn)))
                dax_store_u64(dax_page_report_seq(slot), 0)
            }
        }
    }
    return out.sorted { $0.0 < $1.0 }.map(\.1)
}

/// A PageDump of a folio's current state (for invariant reports, off the hot path).
public func dumpPage(_ k: KernelRef, _ page: Page, rule: String, function: String) -> PageDump {
    let folio = page.folio
    return PageDump(
        pfn: pageToPfn(k, page), headPfn: pageToPfn(k, folio.head), refcount: folio.refCount,
        mapcount: folio.mapcount, entireMapcount: folio.entireMapcount, pincount: folio.pincount,
        order: folio.order, flags: folio.head.flags, pgmapType: folio.pgmap?.pointee.type ?? 0,
        mapping: folio.mapping, index: folio.index, rule: rule, function: function)
}
