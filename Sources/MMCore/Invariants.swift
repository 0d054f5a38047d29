// The global invariants of the mm and DAX core, numbered as
// `InvariantViolation.rule` reports them ("invariant 4"), and a checker over
// MMs and pgmaps. Not a hot path: it allocates freely and takes every lock it
// reads under.
//
// For a folio: R is its refcount, M the present PTE/PMD/PUD entries mapping
// any part of it, base its type's idle refcount (1 for GENERIC, 0 for
// FS_DAX, PRIVATE, COHERENT and P2PDMA).
//  1. Reference accounting: R = base + M + GUP gets + pin refs + transient
//     refs; every present entry, PTE, PMD or PUD, adds one ref and one mapcount.
//  2. Free iff zero: free_zone_device_folio runs exactly on a transition to
//     0, and R never falls below base. folio_get and try_grab_folio refuse 0.
//  3. Idle fs-dax: dax_page_is_idle iff R == 0, which implies M == 0 and no pins.
//  4. Page-cache entries hold no refs: adding or removing fs/dax xarray
//     entries never changes R.
//  5. Association makes layout: an fs-dax folio is compound of order k iff a
//     live entry of order k is associated with it; at the last
//     disassociation every page has R == 0.
//  6. Share states: owned (mapping set), shared (no mapping, share >= 1) or
//     unassociated (no mapping, share 0).
//  7. Tail pages: every tail of a compound ZONE_DEVICE folio has refcount 0
//     and its compound head names the head.
//  8. Truncate precondition: before blocks are freed, the range has no DAX
//     entries and every folio that was in it has R == 0 (dax_break_layout).
//  9. rmap levels: a PMD maps a folio of exactly HPAGE_PMD_NR pages, a PUD one
//     of HPAGE_PUD_NR; folio, entire and per-page mapcounts match the entries.
// 10. Special entries: no refcounted folio is mapped by a special entry
//     (violated by DAX PMDs/PUDs in 6.15 as merged); they never change R or M.
// 11. Long-term pins: no fs-dax folio carries a FOLL_LONGTERM pin.
// 12. Pins imply refs: a pinned folio has R >= base + its pin refs.
// 13. pgmap ref: memunmap_pages cannot finish while a PRIVATE/COHERENT folio
//     is allocated or a get_dev_pagemap ref is held.
// 14. rss: per mm, MM_FILEPAGES counts the pages its entries map (+1 per PTE,
//     +HPAGE_PMD_NR per PMD, +HPAGE_PUD_NR per PUD); the zero page and
//     pfn-only special entries do not count.
// 15. Device-dax layout: folio order is vmemmap_shift for life.

import CDaxMM
import DAXBase

public struct InvariantViolation: Sendable, CustomStringConvertible {
    /// The rule's number in the list at the top of this file.
    public var rule: Int
    public var dump: PageDump?
    public var detail: String
    public var description: String {
        if let dump { return "invariant \(rule) violated: \(detail)\n\(dump)" }
        return "invariant \(rule) violated: \(detail)"
    }
}

/// Extra references a test knows it holds (FOLL_GET refs, pins counted as
/// refs, transient holders), by head pfn: the G + pinRefs + T of rule 1.
public typealias RefLedger = [UInt64: Int64]

/// Checks rules 1, 2, 7, 9, 12 and 14 (and 10, no special entry maps a
/// refcounted folio, unless the 6.15-as-merged mode is on); the others concern
/// fs/dax entries, pins and pgmap refs, which the page tables do not show.
///
/// - Parameters:
///   - ledger: when given, rule 1 is checked as an equality
///     R == base + M + ledger[head]; otherwise as the inequality
///     R >= base + M + (large ? pincount : 0).
public func invariants(mms: [MM], pgmaps: [DevPagemap], ledger: RefLedger? = nil) -> [InvariantViolation] {
    var out: [InvariantViolation] = []
    guard let kernel = pgmaps.first?.kernel ?? mms.first?.kernel else { return out }
    let k = kernel.ref

    // Count entries per folio and per page from the page tables.
    var entries: [UInt64: Int64] = [:]        // head pfn -> all entries (M)
    var entire: [UInt64: Int64] = [:]         // head pfn -> PMD+PUD entries
    var ptePerPage: [UInt64: Int64] = [:]     // pfn -> PTEs mapping it
    for mm in mms {
        mm.lockRead()
        defer { mm.unlockRead() }
        var rss: Int64 = 0
        for vma in mm.vmaList() {
            var a = vma.pointee.vm_start
            while a < vma.pointee.vm_end {
                let w = walk(mm.ref, a)
                var step = UInt64(pageSize)
                var e: PTEntry = 0
                var level = RmapLevel.pte
                if let pud = w.pud, entryLeaf(dax_load_u64(pud)) {
                    e = dax_load_u64(pud); level = .pud; step = UInt64(pudSize) - (a & UInt64(pudSize - 1))
                } else if let pmd = w.pmd, entryLeaf(dax_load_u64(pmd)) {
                    e = dax_load_u64(pmd); level = .pmd; step = UInt64(pmdSize) - (a & UInt64(pmdSize - 1))
                } else if let pte = w.pte {
                    e = dax_load_u64(pte)
                } else if w.pmd == nil && w.pud != nil {
                    step = UInt64(pudSize) - (a & UInt64(pudSize - 1))
                } else if w.pud == nil {
                    step = (UInt64(pudSize) << 9) - (a & ((UInt64(pudSize) << 9) - 1))
                } else {
                    step = UInt64(pmdSize) - (a & UInt64(pmdSize - 1))
                }
                defer { a += step }
                guard entryPresent(e) else { continue }
                let pfn = entryPfn(e)
                if isZeroPfn(pfn) || !pfnValid(k, pfn) { continue }
                let page = pfnToPage(k, pfn)
                let folio = page.folio
                let head = pageToPfn(k, folio.head)
                if entrySpecial(e) && k.pointee.mode & DAX_MODE_SPECIAL_HUGE_ENTRIES.rawValue == 0
                    && folio.isZoneDevice && folio.refCount > 0 && level != .pte {
                    out.append(InvariantViolation(rule: 10, dump: dumpPage(k, page, rule: "refcounted folio mapped by a special entry", function: "invariants"),
                                                  detail: "mm \(mm.ref.pointee.id) address \(hex(a))"))
                }
                if entrySpecial(e) && !vmaIsDax(vma) { continue }
                entries[head, default: 0] += 1
                switch level {
                case .pte:
                    ptePerPage[pfn, default: 0] += 1
                    rss += 1
                case .pmd:
                    entire[head, default: 0] += 1
                    rss += Int64(hpagePmdNr)
                    if folio.nrPages != hpagePmdNr {
                        out.append(InvariantViolation(rule: 9, dump: dumpPage(k, page, rule: "PMD entry maps a folio that is not HPAGE_PMD_NR pages", function: "invariants"),
                                                      detail: "mm \(mm.ref.pointee.id) address \(hex(a))"))
                    }
                case .pud:
                    entire[head, default: 0] += 1
                    rss += Int64(hpagePudNr)
                    if folio.nrPages != hpagePudNr {
                        out.append(InvariantViolation(rule: 9, dump: dumpPage(k, page, rule: "PUD entry maps a folio that is not HPAGE_PUD_NR pages", function: "invariants"),
                                                      detail: "mm \(mm.ref.pointee.id) address \(hex(a))"))
                    }
                }
            }
        }
        let counted = mm.rss(DAX_MM_FILEPAGES)
        if counted != rss {
            out.append(InvariantViolation(rule: 14, dump: nil,
                                          detail: "mm \(mm.ref.pointee.id): MM_FILEPAGES \(counted) but its entries map \(rss) pages"))
        }
    }

    // Walk every folio of every pgmap.
    for pgmap in pgmaps where pgmap.isLive {
        let base = Int64(pgmap.type.idleRefcount)
        for (ri, r) in pgmap.ranges.enumerated() {
            // Folios in sections whose struct pages are still deferred were
            // never looked up: idle, unmapped, unpinned. They are skipped,
            // not initialised.
            var pfn = pgmap.nextInitialisedFolio(range: ri, from: r.startPfn)
            while pfn < r.endPfn {
                let head = pfnToPage(k, pfn)
                let folio = head.folio
                let nr = max(folio.nrPages, 1)
                defer { pfn = pgmap.nextInitialisedFolio(range: ri, from: pfn + UInt64(nr)) }
                if folio.raw != head.raw {
                    out.append(InvariantViolation(rule: 7, dump: dumpPage(k, head, rule: "folio walk landed on a tail page", function: "invariants"),
                                                  detail: "pgmap \(pgmap.ref.pointee.id)"))
                    continue
                }
                let R = Int64(folio.refCount)
                let M = entries[pfn] ?? 0
                let pins = Int64(folio.pincount)
                func report(_ rule: Int, _ text: String) {
                    out.append(InvariantViolation(rule: rule, dump: dumpPage(k, head, rule: text, function: "invariants"),
                                                  detail: "pgmap \(pgmap.ref.pointee.id) (\(pgmap.type))"))
                }
                // Rule 1
                if let ledger {
                    let extra = ledger[pfn] ?? 0
                    if R != base + M + extra {
                        report(1, "refcount \(R) != base \(base) + entries \(M) + held refs \(extra)")
                    }
                } else if R < base + M + (folio.hasPincount ? pins : 0) {
                    report(1, "refcount \(R) < base \(base) + entries \(M) + pins \(pins)")
                }
                // Mapcounts match the page tables (rules 1 and 9).
                if Int64(folio.mapcount) != M {
                    report(9, "folio_mapcount \(folio.mapcount) != present entries \(M)")
                }
                if folio.isLarge && Int64(folio.entireMapcount) != (entire[pfn] ?? 0) {
                    report(9, "entire_mapcount \(folio.entireMapcount) != PMD+PUD entries \(entire[pfn] ?? 0)")
                }
                // Rule 2: never below the idle value while the map is live.
                if R < base {
                    report(2, "refcount \(R) below the type's idle value \(base)")
                }
                // Rule 12: pins imply references.
                if folio.hasPincount && pins > 0 && R < base + pins {
                    report(12, "pincount \(pins) but refcount \(R) < base + pins")
                }
                if pins < 0 { report(12, "negative pincount \(pins)") }
                // Rule 7 and per-page mapcounts.
                for i in 0..<nr {
                    let p = folio.page(i)
                    if i > 0 {
                        if p.refcountRaw != 0 {
                            out.append(InvariantViolation(rule: 7, dump: dumpPage(k, p, rule: "tail page refcount \(p.refcountRaw) != 0", function: "invariants"),
                                                          detail: "pgmap \(pgmap.ref.pointee.id)"))
                        }
                        if p.compoundHead.raw != folio.raw {
                            out.append(InvariantViolation(rule: 7, dump: dumpPage(k, p, rule: "tail's compound_head does not name its head", function: "invariants"),
                                                          detail: "pgmap \(pgmap.ref.pointee.id)"))
                        }
                    }
                    if folio.isLarge {
                        let ptes = ptePerPage[pfn + UInt64(i)] ?? 0
                        if Int64(p.pageMapcount) != ptes {
                            out.append(InvariantViolation(rule: 9, dump: dumpPage(k, p, rule: "page _mapcount+1 = \(p.pageMapcount) but \(ptes) PTEs map it", function: "invariants"),
                                                          detail: "pgmap \(pgmap.ref.pointee.id)"))
                        }
                    }
                }
            }
        }
    }
    return out
}
