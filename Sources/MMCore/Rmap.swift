// mm/rmap.c, include/linux/rmap.h: file rmap at PTE, PMD and PUD level, with
// CONFIG_PAGE_MAPCOUNT (per-page _mapcount kept for large folios) as 6.15
// builds it by default.
//
// The rmap functions never touch _refcount; callers pair every add with a
// folio_get and every remove with a put (mm/memory.c, mm/huge_memory.c).
//
// Public functions here take raw records (KernelRef, MMRef, VMARef, Page,
// PageArray); their preconditions are in Kernel.swift ("The raw-record API").

import CDaxMM

/// enum rmap_level
public enum RmapLevel: Int, Sendable { case pte = 0, pmd, pud }

/// ENTIRELY_MAPPED / FOLIO_PAGES_MAPPED (mm/internal.h).
public let entirelyMapped: Int32 = 0x80_0000
public let folioPagesMapped: Int32 = entirelyMapped - 1

/// __folio_rmap_sanity_checks. The kernel only WARNs; the port reports and
/// returns false so the caller refuses instead of corrupting counters.
@inline(__always)
func folioRmapSanityChecks(_ k: KernelRef, _ folio: Folio, _ page: Page, _ nrPages: Int, _ level: RmapLevel) -> Bool {
    guard nrPages > 0 else {
        vmReport(k, page, rule: "VM_WARN_ON_FOLIO(nr_pages <= 0)", function: "__folio_rmap_sanity_checks")
        return false
    }
    let first = page.raw - folio.raw
    guard page.compoundHead.raw == folio.raw, first >= 0, first + nrPages <= folio.nrPages else {
        vmReport(k, page, rule: "VM_WARN_ON_FOLIO(page_folio(page) != folio || last page outside folio)",
                 function: "__folio_rmap_sanity_checks")
        return false
    }
    switch level {
    case .pte:
        return true
    case .pmd:
        guard folio.nrPages == hpagePmdNr, nrPages == hpagePmdNr else {
            vmReport(k, page, rule: "VM_WARN_ON_FOLIO(folio_nr_pages(folio) != HPAGE_PMD_NR || nr_pages != HPAGE_PMD_NR)",
                     function: "__folio_rmap_sanity_checks")
            return false
        }
        return true
    case .pud:
        guard folio.nrPages == hpagePudNr, nrPages == hpagePudNr else {
            vmReport(k, page, rule: "VM_WARN_ON_FOLIO(folio_nr_pages(folio) != HPAGE_PUD_NR || nr_pages != HPAGE_PUD_NR)",
                     function: "__folio_rmap_sanity_checks")
            return false
        }
        return true
    }
}

/// atomic_inc_and_test on a -1 biased counter: true on -1 -> 0.
@inline(__always) func incAndTest(_ p: UnsafeMutablePointer<Int32>) -> Bool { dax_atomic_add_return(p, 1) == 0 }
/// atomic_add_negative(-1, p): true on 0 -> -1.
@inline(__always) func decNegative(_ p: UnsafeMutablePointer<Int32>) -> Bool { dax_atomic_add_return(p, -1) < 0 }

/// __folio_add_rmap: returns (pages newly mapped, pages newly PMD-mapped).
@inline(__always)
func folioAddRmap(_ k: KernelRef, _ folio: Folio, _ page: Page, _ nrPages: Int, _ level: RmapLevel) -> (Int32, Int32) {
    var nr: Int32 = 0
    var nrPmdmapped: Int32 = 0
    let p1 = folio.raw + 1
    switch level {
    case .pte:
        if !folio.isLarge {
            return (incAndTest(dax_page_mapcount(page.raw)) ? 1 : 0, 0)
        }
        var first: Int32 = 0
        for i in 0..<nrPages where incAndTest(dax_page_mapcount(page.raw + i)) { first += 1 }
        if first > 0 {
            let mapped = dax_atomic_add_return(dax_page_nr_pages_mapped(p1), first)
            if mapped < entirelyMapped { nr = first }
        }
        dax_atomic_add(dax_page_large_mapcount(p1), Int32(nrPages))
    case .pmd, .pud:
        if incAndTest(dax_page_entire_mapcount(p1)) {
            let mapped = dax_atomic_add_return(dax_page_nr_pages_mapped(p1), entirelyMapped)
            if mapped < entirelyMapped &+ entirelyMapped {
                let n = Int32(folio.nrPages)
                if level == .pmd { nrPmdmapped = n }
                nr = max(0, n - (mapped & folioPagesMapped))
            }
        }
        dax_atomic_add(dax_page_large_mapcount(p1), 1)
    }
    return (nr, nrPmdmapped)
}

/// __folio_remove_rmap: returns (pages no longer mapped, pages no longer PMD-mapped).
@inline(__always)
func folioRemoveRmap(_ k: KernelRef, _ folio: Folio, _ page: Page, _ nrPages: Int, _ level: RmapLevel) -> (Int32, Int32) {
    var nr: Int32 = 0
    var nrPmdmapped: Int32 = 0
    let p1 = folio.raw + 1
    switch level {
    case .pte:
        if !folio.isLarge {
            let v = dax_atomic_add_return(dax_page_mapcount(page.raw), -1)
            if v < -1 {
                vmReport(k, page, rule: "VM_WARN_ON_FOLIO(page_mapcount(page) < 0)", function: "__folio_remove_rmap")
            }
            return (v == -1 ? 1 : 0, 0)
        }
        let lm = dax_atomic_add_return(dax_page_large_mapcount(p1), -Int32(nrPages))
        var last: Int32 = 0
        for i in 0..<nrPages {
            let v = dax_atomic_add_return(dax_page_mapcount(page.raw + i), -1)
            if v == -1 { last += 1 }
            if v < -1 {
                vmReport(k, Page(page.raw + i), rule: "VM_WARN_ON_FOLIO(page_mapcount(page) < 0)", function: "__folio_remove_rmap")
            }
        }
        if lm < -1 {
            vmReport(k, page, rule: "VM_WARN_ON_FOLIO(folio_large_mapcount(folio) < 0)", function: "__folio_remove_rmap")
        }
        if last > 0 {
            let mapped = dax_atomic_add_return(dax_page_nr_pages_mapped(p1), -last)
            if mapped < entirelyMapped { nr = last }
        }
    case .pmd, .pud:
        let lm = dax_atomic_add_return(dax_page_large_mapcount(p1), -1)
        let em = dax_atomic_add_return(dax_page_entire_mapcount(p1), -1)
        if em < -1 || lm < -1 {
            vmReport(k, page, rule: "VM_WARN_ON_FOLIO(folio_entire_mapcount(folio) < 0)", function: "__folio_remove_rmap")
        }
        if em == -1 {
            let mapped = dax_atomic_add_return(dax_page_nr_pages_mapped(p1), -entirelyMapped)
            if mapped < entirelyMapped {
                let n = Int32(folio.nrPages)
                if level == .pmd { nrPmdmapped = n }
                nr = max(0, n - (mapped & folioPagesMapped))
            }
        }
    }
    return (nr, nrPmdmapped)
}

/// __folio_mod_stat: NR_ANON_MAPPED / NR_ANON_THPS for anon folios,
/// NR_FILE_MAPPED / NR_FILE_PMDMAPPED for file folios.
@inline(__always)
func folioModStat(_ k: KernelRef, _ nr: Int32, _ nrPmdmapped: Int32, anon: Bool = false, slot: Int32 = dax_this_slot()) {
    if nr != 0 { modNodeStat(k, anon ? DAX_NR_ANON_MAPPED : DAX_NR_FILE_MAPPED, Int64(nr), slot: slot) }
    if nrPmdmapped != 0 { modNodeStat(k, anon ? DAX_NR_ANON_THPS : DAX_NR_FILE_PMDMAPPED, Int64(nrPmdmapped), slot: slot) }
}

// MARK: the file rmap API

/// __folio_add_file_rmap: sanity checks, the counters, the node stats.
@inline(__always)
func folioAddFileRmap(_ k: KernelRef, _ folio: Folio, _ page: Page, _ nr: Int, _ level: RmapLevel,
                      slot: Int32 = dax_this_slot()) -> Bool {
    guard folioRmapSanityChecks(k, folio, page, nr, level) else { return false }
    let (n, pmd) = folioAddRmap(k, folio, page, nr, level)
    folioModStat(k, n, pmd, slot: slot)
    return true
}

/// __folio_remove_rmap with its caller's stat update: file or anon by the
/// folio's mapping. An anon folio left partially mapped by a PTE-level
/// removal (some pages still mapped, none by a PMD) is queued for deferred
/// split (deferred_split_folio: PG_partially_mapped on page[1]).
@inline(__always)
func folioRemoveFileRmap(_ k: KernelRef, _ folio: Folio, _ page: Page, _ nr: Int, _ level: RmapLevel) -> Bool {
    guard folioRmapSanityChecks(k, folio, page, nr, level) else { return false }
    let (n, pmd) = folioRemoveRmap(k, folio, page, nr, level)
    let anon = folio.isAnon
    folioModStat(k, -n, -pmd, anon: anon)
    if anon && folio.isLarge && n > 0 && folio.isMapped && folio.entireMapcount == 0 {
        deferredSplitFolio(k, folio, partiallyMapped: true)
    }
    return true
}

/// folio_add_file_rmap_ptes
@inline(__always) @discardableResult
public func folioAddFileRmapPtes(_ k: KernelRef, _ folio: Folio, _ page: Page, _ nr: Int) -> Bool {
    folioAddFileRmap(k, folio, page, nr, .pte)
}

/// folio_add_file_rmap_pte
@inline(__always) @discardableResult
public func folioAddFileRmapPte(_ k: KernelRef, _ folio: Folio, _ page: Page, slot: Int32 = dax_this_slot()) -> Bool {
    folioAddFileRmap(k, folio, page, 1, .pte, slot: slot)
}

/// folio_add_file_rmap_pmd
@inline(__always) @discardableResult
public func folioAddFileRmapPmd(_ k: KernelRef, _ folio: Folio, _ page: Page, slot: Int32 = dax_this_slot()) -> Bool {
    folioAddFileRmap(k, folio, page, hpagePmdNr, .pmd, slot: slot)
}

/// folio_add_file_rmap_pud
@inline(__always) @discardableResult
public func folioAddFileRmapPud(_ k: KernelRef, _ folio: Folio, _ page: Page, slot: Int32 = dax_this_slot()) -> Bool {
    folioAddFileRmap(k, folio, page, hpagePudNr, .pud, slot: slot)
}

/// folio_remove_rmap_ptes
@inline(__always) @discardableResult
public func folioRemoveRmapPtes(_ k: KernelRef, _ folio: Folio, _ page: Page, _ nr: Int) -> Bool {
    folioRemoveFileRmap(k, folio, page, nr, .pte)
}

/// folio_remove_rmap_pte
@inline(__always) @discardableResult
public func folioRemoveRmapPte(_ k: KernelRef, _ folio: Folio, _ page: Page) -> Bool {
    folioRemoveFileRmap(k, folio, page, 1, .pte)
}

/// folio_remove_rmap_pmd
@inline(__always) @discardableResult
public func folioRemoveRmapPmd(_ k: KernelRef, _ folio: Folio, _ page: Page) -> Bool {
    folioRemoveFileRmap(k, folio, page, hpagePmdNr, .pmd)
}

/// folio_remove_rmap_pud
@inline(__always) @discardableResult
public func folioRemoveRmapPud(_ k: KernelRef, _ folio: Folio, _ page: Page) -> Bool {
    folioRemoveFileRmap(k, folio, page, hpagePudNr, .pud)
}
