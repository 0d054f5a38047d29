// The global invariants of the mm and DAX core, numbered as
// `InvariantViolation.rule` reports them ("invariant 4"), and a checker over
// MMs and pgmaps. Not a hot path: it allocates freely and takes every lock it
// reads under.
//
// For a folio: R is its refcount, M the entries mapping any part of it
// (present PTEs/PMDs/PUDs, device-private and device-exclusive entries),
// base its type's idle refcount (1 for GENERIC, 0 for FS_DAX, PRIVATE,
// COHERENT, P2PDMA and the page allocator's folios).
//  1. Reference accounting: R = base + M + GUP gets + pin refs + transient
//     refs; every present entry, PTE, PMD or PUD, and every device-private
//     or device-exclusive entry adds one ref and one mapcount; a migration
//     entry adds neither (the migration holds its own reference).
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
// 14. rss: per mm, MM_FILEPAGES and MM_ANONPAGES each count the pages its
//     entries map in that counter (mm_counter(folio): anon folios in
//     MM_ANONPAGES; +1 per PTE, +HPAGE_PMD_NR per PMD, +HPAGE_PUD_NR per
//     PUD); the zero pages and pfn-only special entries do not count. A
//     device-private or device-exclusive entry counts like a PTE, a
//     migration entry counts too (zap_nonpresent_ptes drops its rss).
// 15. Device-dax layout: folio order is vmemmap_shift for life.
// 16. PageAnonExclusive (include/linux/page-flags.h, mm/rmap.c
//     folio_try_dup_anon_rmap, mm/gup.c gup_must_unshare): a page marked
//     exclusive is mapped by at most one entry in all MMs (a PTE, a PMD
//     mapping its folio, or a device-exclusive/private entry); a pinned
//     anon page (folio_maybe_dma_pinned) is never mapped by two MMs.
// 17. rmap reachability (mm/rmap.c rmap_walk_anon, vma_address): every
//     entry mapping an anon folio (present, device-exclusive or
//     device-private) lies in a VMA that the folio's anon_vma holds, at
//     vma_address(vma, folio->index + page offset): rmap_walk finds it.
// 18. Free pages (mm/page_alloc.c free_pages_prepare, __free_one_page):
//     every block on the allocator's free lists heads with PageBuddy and its
//     order, and each page of it has refcount 0, no mapping, no mapcount; a
//     PageBuddy page is on a list; every other page of the zone belongs to
//     an allocated folio (refcount > 0, rule 2).
// 19. Global anon counters (mm/rmap.c __folio_mod_stat; checked only when
//     the caller passes every MM and pgmap of the kernel, `complete`):
//     NR_ANON_MAPPED is the pages of anon folios that are mapped (all of a
//     PMD-mapped folio, else the pages with a mapcount), NR_ANON_THPS the
//     pages of PMD-mapped anon folios.
// 20. pfn swap entries (include/linux/swapops.h pfn_swap_entry_to_page):
//     every migration, device-private, device-exclusive and hwpoison entry
//     names a pfn with a struct page; a device-exclusive entry an anon
//     folio (make_device_exclusive), a device-private entry a
//     device-private page.
// 21. Writable anon mappings are exclusive (mm/memory.c wp_page_reuse,
//     can_change_pte_writable; mm/rmap.c folio_try_dup_anon_rmap, which
//     fork calls only after write-protecting): a present writable PTE of an
//     anon folio maps a PageAnonExclusive page, a writable PMD an anon
//     folio whose head is PageAnonExclusive. The COW guarantee: no process
//     can write a page another one maps.
//
// For the page allocator's folios base is 0: the allocation's reference
// becomes the first mapping's.

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

/// Checks rules 1, 2, 7, 9, 12, 14, 16, 17, 18, 20 and 21 (and 10, no special
/// entry maps a refcounted folio, unless the 6.15-as-merged mode is on; and
/// 19 when `complete`); the others concern fs/dax entries, pins and pgmap
/// refs, which the page tables do not show. The folios checked are those of
/// `pgmaps` and every allocated folio of the page allocator's zone.
///
/// - Parameters:
///   - ledger: when given, rule 1 is checked as an equality
///     R == base + M + ledger[head]; otherwise as the inequality
///     R >= base + M + (large ? pincount : 0).
///   - complete: `mms` and `pgmaps` are every MM and pgmap of the kernel,
///     so the global counters (rule 19) must add up.
public func invariants(mms: [MM], pgmaps: [DevPagemap], ledger: RefLedger? = nil,
                       complete: Bool = false) -> [InvariantViolation] {
    var out: [InvariantViolation] = []
    guard let kernel = pgmaps.first?.kernel ?? mms.first?.kernel else { return out }
    let k = kernel.ref

    /// An entry mapping an anon folio, for rules 16 and 17.
    struct AnonMapping {
        var mm: Int
        var vma: VMARef
        var address: UInt64
        var pfn: UInt64
        var level: RmapLevel
    }

    // Count entries per folio and per page from the page tables.
    var entries: [UInt64: Int64] = [:]        // head pfn -> all entries (M)
    var entire: [UInt64: Int64] = [:]         // head pfn -> PMD+PUD entries
    var deviceEntries: [UInt64: Int64] = [:]  // head pfn -> device-private/exclusive entries
    var ptePerPage: [UInt64: Int64] = [:]     // pfn -> PTEs (and device entries) mapping it
    var mmsPerPage: [UInt64: Set<Int>] = [:]  // pfn -> MMs whose PTEs map it
    var mmsPerHead: [UInt64: Set<Int>] = [:]  // head pfn -> MMs whose PMDs/PUDs map it
    var anonMaps: [UInt64: [AnonMapping]] = [:]
    for mm in mms {
        mm.lockRead()
        defer { mm.unlockRead() }
        let mmID = Int(mm.ref.pointee.id)
        var rssFile: Int64 = 0, rssAnon: Int64 = 0
        func countRss(_ folio: Folio, _ n: Int64) {
            if mmCounter(folio) == DAX_MM_ANONPAGES { rssAnon += n } else { rssFile += n }
        }
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
                let at = "mm \(mm.ref.pointee.id) address \(hex(a))"
                // A non-present PTE: pfn swap entries (rules 1, 9, 14, 20).
                if level == .pte && isSwapPte(e) {
                    let entry = pteToSwpEntry(e)
                    guard isPfnSwapEntry(entry) else { continue }
                    let pfn = swpOffsetPfn(entry)
                    guard pfnValid(k, pfn) else {
                        out.append(InvariantViolation(rule: 20, dump: nil, detail: "\(at): \(entry) names pfn \(hex(pfn)) with no struct page"))
                        continue
                    }
                    let page = pfnToPage(k, pfn)
                    let folio = page.folio
                    let head = pageToPfn(k, folio.head)
                    if isDeviceExclusiveEntry(entry) && !folio.isAnon {
                        out.append(InvariantViolation(rule: 20, dump: dumpPage(k, page, rule: "device-exclusive entry maps a folio that is not anon", function: "invariants"),
                                                      detail: at))
                    }
                    if isDevicePrivateEntry(entry) && folio.pgmap?.pointee.type != Int32(DAX_MEMORY_DEVICE_PRIVATE.rawValue) {
                        out.append(InvariantViolation(rule: 20, dump: dumpPage(k, page, rule: "device-private entry maps a page that is not device-private", function: "invariants"),
                                                      detail: at))
                    }
                    if isMigrationEntry(entry) { countRss(folio, 1) }
                    if swapEntryHoldsMapping(entry) {
                        countRss(folio, 1)
                        entries[head, default: 0] += 1
                        deviceEntries[head, default: 0] += 1
                        ptePerPage[pfn, default: 0] += 1
                        mmsPerPage[pfn, default: []].insert(mmID)
                        if folio.isAnon {
                            anonMaps[head, default: []].append(AnonMapping(mm: mmID, vma: vma, address: a, pfn: pfn, level: .pte))
                        }
                    }
                    continue
                }
                guard entryPresent(e) else { continue }
                let pfn = entryPfn(e)
                if isZeroPfn(pfn) || isHugeZeroPfn(k, pfn) || !pfnValid(k, pfn) { continue }
                let page = pfnToPage(k, pfn)
                let folio = page.folio
                let head = pageToPfn(k, folio.head)
                if entrySpecial(e) && k.pointee.mode & DAX_MODE_SPECIAL_HUGE_ENTRIES.rawValue == 0
                    && folio.isZoneDevice && folio.refCount > 0 && level != .pte {
                    out.append(InvariantViolation(rule: 10, dump: dumpPage(k, page, rule: "refcounted folio mapped by a special entry", function: "invariants"),
                                                  detail: at))
                }
                if entrySpecial(e) && !vmaIsDax(vma) { continue }
                // Rule 21
                if folio.isAnon && entryWrite(e) && !(level == .pte ? page : folio.head).isAnonExclusive {
                    out.append(InvariantViolation(rule: 21, dump: dumpPage(k, page, rule: "writable \(level == .pte ? "PTE" : "PMD") of an anon page that is not PageAnonExclusive", function: "invariants"),
                                                  detail: at))
                }
                entries[head, default: 0] += 1
                if folio.isAnon {
                    anonMaps[head, default: []].append(AnonMapping(mm: mmID, vma: vma, address: a, pfn: pfn, level: level))
                }
                switch level {
                case .pte:
                    ptePerPage[pfn, default: 0] += 1
                    mmsPerPage[pfn, default: []].insert(mmID)
                    countRss(folio, 1)
                case .pmd:
                    entire[head, default: 0] += 1
                    mmsPerHead[head, default: []].insert(mmID)
                    countRss(folio, Int64(hpagePmdNr))
                    if folio.nrPages != hpagePmdNr {
                        out.append(InvariantViolation(rule: 9, dump: dumpPage(k, page, rule: "PMD entry maps a folio that is not HPAGE_PMD_NR pages", function: "invariants"),
                                                      detail: at))
                    }
                case .pud:
                    entire[head, default: 0] += 1
                    mmsPerHead[head, default: []].insert(mmID)
                    countRss(folio, Int64(hpagePudNr))
                    if folio.nrPages != hpagePudNr {
                        out.append(InvariantViolation(rule: 9, dump: dumpPage(k, page, rule: "PUD entry maps a folio that is not HPAGE_PUD_NR pages", function: "invariants"),
                                                      detail: at))
                    }
                }
            }
        }
        let countedFile = mm.rss(DAX_MM_FILEPAGES)
        if countedFile != rssFile {
            out.append(InvariantViolation(rule: 14, dump: nil,
                                          detail: "mm \(mm.ref.pointee.id): MM_FILEPAGES \(countedFile) but its entries map \(rssFile) pages"))
        }
        let countedAnon = mm.rss(DAX_MM_ANONPAGES)
        if countedAnon != rssAnon {
            out.append(InvariantViolation(rule: 14, dump: nil,
                                          detail: "mm \(mm.ref.pointee.id): MM_ANONPAGES \(countedAnon) but its entries map \(rssAnon) anon pages"))
        }
    }

    // What the anon folios' mapcounts say (rule 19).
    var anonMapped: Int64 = 0, anonThps: Int64 = 0

    /// The per-folio rules for the folio headed at `pfn`, of idle refcount
    /// `base`; `where` names its pgmap or zone in reports.
    func checkFolio(_ pfn: UInt64, base: Int64, _ where_: String) {
        let head = pfnToPage(k, pfn)
        let folio = head.folio
        let nr = max(folio.nrPages, 1)
        let R = Int64(folio.refCount)
        let M = entries[pfn] ?? 0
        let pins = Int64(folio.pincount)
        func report(_ rule: Int, _ text: String, page: Page? = nil) {
            out.append(InvariantViolation(rule: rule, dump: dumpPage(k, page ?? head, rule: text, function: "invariants"),
                                          detail: where_))
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
            let dev = deviceEntries[pfn] ?? 0
            report(9, dev == 0 ? "folio_mapcount \(folio.mapcount) != present entries \(M)"
                               : "folio_mapcount \(folio.mapcount) != present and device entries \(M)")
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
        let anon = folio.isAnon
        let entireMaps = entire[pfn] ?? 0
        let pinned = anon && folio.maybeDmaPinned
        var pagesMapped: Int64 = 0
        // Rule 7, per-page mapcounts, rule 16.
        for i in 0..<nr {
            let p = folio.page(i)
            let ppfn = pfn + UInt64(i)
            if i > 0 {
                if p.refcountRaw != 0 {
                    report(7, "tail page refcount \(p.refcountRaw) != 0", page: p)
                }
                if p.compoundHead.raw != folio.raw {
                    report(7, "tail's compound_head does not name its head", page: p)
                }
            }
            let ptes = ptePerPage[ppfn] ?? 0
            if folio.isLarge {
                if Int64(p.pageMapcount) != ptes {
                    report(9, "page _mapcount+1 = \(p.pageMapcount) but \(ptes) PTEs map it", page: p)
                }
                if p.pageMapcount > 0 { pagesMapped += 1 }
            }
            guard anon else { continue }
            if p.isAnonExclusive && ptes + entireMaps > 1 {
                report(16, "PageAnonExclusive page mapped by \(ptes + entireMaps) entries", page: p)
            }
            if pinned {
                let mmsMapping = (mmsPerPage[ppfn] ?? []).union(mmsPerHead[pfn] ?? [])
                if mmsMapping.count > 1 {
                    report(16, "maybe-DMA-pinned anon page mapped by \(mmsMapping.count) MMs", page: p)
                }
            }
        }
        guard anon else { return }
        // Rule 19's sums.
        if !folio.isLarge {
            if folio.mapcount > 0 { anonMapped += 1 }
        } else if folio.entireMapcount > 0 {
            anonMapped += Int64(nr)
            if nr == hpagePmdNr { anonThps += Int64(nr) }
        } else {
            anonMapped += pagesMapped
        }
        // Rule 17: every entry is where rmap_walk looks.
        guard let maps = anonMaps[pfn], !maps.isEmpty else { return }
        guard let av = folio.anonVMA else { return }
        let members = Set(anonVMAMembers(av))
        for m in maps {
            let off = m.level == .pte ? m.pfn - pfn : 0
            let page = pfnToPage(k, m.pfn)
            if !members.contains(m.vma) {
                report(17, "mapped at \(hex(m.address)) in mm \(m.mm) by a VMA its anon_vma does not hold", page: page)
            } else if vmaAddress(m.vma, folio.index + off, 1) != m.address {
                let want = vmaAddress(m.vma, folio.index + off, 1).map { hex($0) } ?? "none"
                report(17, "mapped at \(hex(m.address)) in mm \(m.mm) but vma_address says \(want)", page: page)
            }
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
                checkFolio(pfn, base: base, "pgmap \(pgmap.ref.pointee.id) (\(pgmap.type))")
            }
        }
    }

    // Walk the page allocator's zone: the free lists (rule 18), then every
    // allocated folio between them.
    if let z = k.pointee.ram {
        var free: [UInt64: Int] = [:]   // block pfn -> order
        dax_spin_lock(dax_ram_lock(z))
        let areas = dax_ram_free_area(z)!
        let zoneStart = z.pointee.start_pfn, grown = z.pointee.grown_pfn
        for order in 0..<Int(DAX_NR_PAGE_ORDERS) {
            var link = areas[order].head
            var seen = 0
            while link != 0 && seen <= Int(grown - zoneStart) {
                let bpfn = link - 1
                seen += 1
                guard bpfn >= zoneStart, bpfn < grown else {
                    out.append(InvariantViolation(rule: 18, dump: nil, detail: "free list of order \(order) links pfn \(hex(bpfn)) outside the zone"))
                    break
                }
                free[bpfn] = order
                link = ramLink(z, bpfn)[0]
            }
        }
        dax_spin_unlock(dax_ram_lock(z))
        for (bpfn, order) in free.sorted(by: { $0.key < $1.key }) {
            let hp = pfnToPage(k, bpfn)
            func bad(_ p: Page, _ text: String) {
                out.append(InvariantViolation(rule: 18, dump: dumpPage(k, p, rule: text, function: "invariants"),
                                              detail: "free block of order \(order) at pfn \(hex(bpfn))"))
            }
            if !pageBuddy(hp) || buddyOrder(hp) != order {
                bad(hp, "free-list block without PageBuddy of its order (buddy \(pageBuddy(hp)), order \(buddyOrder(hp)))")
            }
            for i in 0..<(1 << order) {
                let p = Page(hp.raw + i)
                if p.refcountRaw != 0 { bad(p, "free page refcount \(p.refcountRaw) != 0") }
                if p.raw.pointee.mapping != 0 { bad(p, "free page has a mapping") }
                if i > 0 && p.pageMapcount != 0 { bad(p, "free page _mapcount+1 = \(p.pageMapcount)") }
                if p.isTail || p.isHead { bad(p, "free page still compound") }
            }
        }
        var pfn = zoneStart
        while pfn < grown {
            if let order = free[pfn] {
                pfn += UInt64(1) << UInt64(order)
                continue
            }
            let page = pfnToPage(k, pfn)
            if pageBuddy(page) {
                out.append(InvariantViolation(rule: 18, dump: dumpPage(k, page, rule: "PageBuddy block on no free list", function: "invariants"),
                                              detail: "zone pfn \(hex(pfn))"))
                pfn += UInt64(1) << UInt64(min(buddyOrder(page), Int(DAX_MAX_PAGE_ORDER)))
                continue
            }
            if page.isTail {
                out.append(InvariantViolation(rule: 7, dump: dumpPage(k, page, rule: "zone walk landed on a tail page", function: "invariants"),
                                              detail: "zone pfn \(hex(pfn))"))
                pfn += 1
                continue
            }
            let folio = page.folio
            if folio.refCount <= 0 {
                out.append(InvariantViolation(rule: 2, dump: dumpPage(k, page, rule: "zone page neither free nor referenced", function: "invariants"),
                                              detail: "zone pfn \(hex(pfn))"))
            }
            checkFolio(pfn, base: 0, "zone pfn \(hex(pfn))")
            pfn += UInt64(max(folio.nrPages, 1))
        }
    }

    // Rule 19: the node counters add up (all of the kernel was walked).
    if complete {
        let mapped = kernel.stat(DAX_NR_ANON_MAPPED), thps = kernel.stat(DAX_NR_ANON_THPS)
        if mapped != anonMapped {
            out.append(InvariantViolation(rule: 19, dump: nil, detail: "NR_ANON_MAPPED \(mapped) but the anon folios' mapcounts map \(anonMapped) pages"))
        }
        if thps != anonThps {
            out.append(InvariantViolation(rule: 19, dump: nil, detail: "NR_ANON_THPS \(thps) but PMD-mapped anon folios hold \(anonThps) pages"))
        }
    }
    return out
}
