// fork (kernel/fork.c dup_mmap, mm/memory.c copy_page_range and its
// copy_present_pte / copy_present_page / copy_nonpresent_pte,
// mm/huge_memory.c copy_huge_pmd) and the copy-on-write that follows.

import Testing
@testable import MMCore
import CDaxMM
import DAXBase
import MMTestChecks
import MMTestSupport

@Suite("fork: dup_mmap and copy_page_range")
struct ForkTests {
    @Test("copy_present_pte: after fork both processes map each anon page read-only (refcount 2, mapcount 2, PageAnonExclusive cleared), the child's rss counts them, nothing is allocated, the parent hears MMU_NOTIFY_PROTECTION_PAGE over the VMA; a write in either copies, the other keeps its bytes; the last mapper reuses")
    func forkThenCow() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        for i in 0..<4 {
            #expect(mm.handleFault(a + UInt64(i) * 4096, write: true) == 0)
            pageBytes(k, entryPfn(AnonFaultTests.pte(mm, a + UInt64(i) * 4096)))[0] = UInt8(0x10 + i)
        }
        let pfns = (0..<4).map { entryPfn(AnonFaultTests.pte(mm, a + UInt64($0) * 4096)) }
        let mapped0 = k.stat(DAX_NR_ANON_MAPPED)
        let alloc0 = k.ramStats!.allocatedPages
        let log = try NotifierLog(mm)
        var child: MM? = try mm.fork()
        log.stop()
        #expect(log.has(.protectionPage, a, a + 64 * KiB), "\(log.ranges)")
        #expect(child!.vmaList().count == 1 && child!.rssAnonPages == 4 && mm.rssAnonPages == 4)
        #expect(k.stat(DAX_NR_ANON_MAPPED) == mapped0, "the pages were already mapped")
        #expect(k.ramStats!.allocatedPages == alloc0)
        for (i, pfn) in pfns.enumerated() {
            let addr = a + UInt64(i) * 4096
            let pe = AnonFaultTests.pte(mm, addr), ce = AnonFaultTests.pte(child!, addr)
            #expect(entryPfn(ce) == pfn && !entryWrite(pe) && !entryWrite(ce) && !entryYoung(ce))
            let page = pfnToPage(k.ref, pfn)
            #expect(page.folio.refCount == 2 && page.folio.mapcount == 2 && !page.isAnonExclusive)
        }
        // The child writes page 0: a copy with the parent's bytes.
        #expect(child!.handleFault(a, write: true) == 0)
        let c0 = AnonFaultTests.pte(child!, a)
        #expect(entryPfn(c0) != pfns[0] && entryWrite(c0))
        #expect(pageBytes(k, entryPfn(c0))[0] == 0x10)
        pageBytes(k, entryPfn(c0))[0] = 0xcc
        #expect(pageBytes(k, pfns[0])[0] == 0x10, "the parent keeps its bytes")
        #expect(pfnToPage(k.ref, pfns[0]).folio.refCount == 1 && pfnToPage(k.ref, pfns[0]).folio.mapcount == 1)
        #expect(child!.rssAnonPages == 4 && k.ramStats!.allocatedPages == alloc0 + 1)
        #expect(k.stat(DAX_NR_ANON_MAPPED) == mapped0 + 1)
        // The parent writes page 0: the last mapper reuses (no allocation).
        #expect(mm.handleFault(a, write: true) == 0)
        #expect(entryPfn(AnonFaultTests.pte(mm, a)) == pfns[0] && pfnToPage(k.ref, pfns[0]).isAnonExclusive)
        #expect(k.ramStats!.allocatedPages == alloc0 + 1)
        // The parent writes page 1: copied (the child still maps it).
        #expect(mm.handleFault(a + 4096, write: true) == 0)
        let p1 = AnonFaultTests.pte(mm, a + 4096)
        #expect(entryPfn(p1) != pfns[1] && pageBytes(k, entryPfn(p1))[0] == 0x11)
        #expect(pageBytes(k, pfns[1])[0] == 0x11)
        #expect(k.ramStats!.allocatedPages == alloc0 + 2)
        child = nil
        #expect(k.ramStats!.allocatedPages == alloc0, "the child's copy of page 0 and the old page 1 are freed")
        #expect(pfnToPage(k.ref, pfns[2]).folio.refCount == 1 && pfnToPage(k.ref, pfns[2]).folio.mapcount == 1)
        #expect(k.stat(DAX_NR_ANON_MAPPED) == mapped0)
        try mm.munmap(a, 64 * KiB)
        #expect(k.ramStats!.allocatedPages == 0 && k.stat(DAX_NR_ANON_MAPPED) == mapped0 - 4)
        #expect(k.drainReports().isEmpty)
    }

    @Test("vma_needs_copy: a private VMA with no anon_vma yet and a shared anon VMA are not copied (they refault); the zero-page PTE of a copied VMA is copied as is, with no reference")
    func needsCopy() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: false) == 0)
        let c1 = try mm.fork()
        #expect(AnonFaultTests.pte(c1, a) == 0, "no anon_vma: the child refaults")
        #expect(mm.handleFault(a + 4096, write: true) == 0)
        let c2 = try mm.fork()
        let z = AnonFaultTests.pte(c2, a)
        #expect(entryPfn(z) == 0 && entrySpecial(z))
        #expect(c2.rssAnonPages == 1)
        #expect(c2.handleFault(a, write: true) == 0 && c2.rssAnonPages == 2)
        #expect(entryPfn(AnonFaultTests.pte(mm, a)) == 0, "the parent still maps the zero page")
        #expect(k.drainReports().isEmpty)
    }

    @Test("copy_huge_pmd: a THP is shared by fork (refcount 2, entire mapcount 2, head not PageAnonExclusive, both PMDs read-only, child MM_ANONPAGES 512); a parent write splits its PMD and copies one page; once the child is gone a write reuses the PTE-mapped THP in place (folio_large_mapcount == refcount)")
    func forkThpCow() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 2 * MiB, hugepage: true)
        #expect(mm.handleFault(a, write: true) == 0)
        let folio = pfnToPage(k.ref, entryPfn(AnonFaultTests.pmd(mm, a))).folio
        pageBytes(k, pageToPfn(k.ref, folio.page(3)))[0] = 0x33
        let alloc0 = k.ramStats!.allocatedPages
        let thps0 = k.stat(DAX_NR_ANON_THPS)
        var child: MM? = try mm.fork()
        #expect(folio.refCount == 2 && folio.entireMapcount == 2 && !folio.head.isAnonExclusive)
        #expect(!entryWrite(AnonFaultTests.pmd(mm, a)) && !entryWrite(AnonFaultTests.pmd(child!, a)))
        #expect(entryLeaf(AnonFaultTests.pmd(child!, a)))
        #expect(child!.rssAnonPages == Int64(hpagePmdNr) && k.stat(DAX_NR_ANON_THPS) == thps0)
        #expect(k.ramStats!.allocatedPages == alloc0)

        #expect(mm.handleFault(a + 3 * 4096, write: true) == 0)
        #expect(!entryLeaf(AnonFaultTests.pmd(mm, a)), "the parent's PMD was split")
        let p3 = AnonFaultTests.pte(mm, a + 3 * 4096)
        #expect(entryPfn(p3) != pageToPfn(k.ref, folio.page(3)) && entryWrite(p3))
        #expect(pageBytes(k, entryPfn(p3))[0] == 0x33)
        #expect(k.ramStats!.allocatedPages == alloc0 + 1)
        #expect(mm.rssAnonPages == Int64(hpagePmdNr))
        #expect(folio.mapcount == Int32(hpagePmdNr - 1) + 1 && folio.refCount == Int32(hpagePmdNr - 1) + 1)
        #expect(k.stat(DAX_NR_ANON_THPS) == thps0, "the child's PMD still maps the whole folio")
        // With the child's PMD mapping in place, a write to another page
        // still copies: another mm maps the folio.
        #expect(mm.handleFault(a + 5 * 4096, write: true) == 0)
        #expect(entryPfn(AnonFaultTests.pte(mm, a + 5 * 4096)) != pageToPfn(k.ref, folio.page(5)))
        #expect(k.ramStats!.allocatedPages == alloc0 + 2)

        child = nil
        #expect(folio.refCount == Int32(hpagePmdNr - 2) && folio.mapcount == Int32(hpagePmdNr - 2))
        #expect(k.stat(DAX_NR_ANON_THPS) == thps0 - Int64(hpagePmdNr) && folio.isPartiallyMapped)
        #expect(mm.handleFault(a + 7 * 4096, write: true) == 0)
        let p7 = AnonFaultTests.pte(mm, a + 7 * 4096)
        #expect(entryPfn(p7) == pageToPfn(k.ref, folio.page(7)) && entryWrite(p7), "reused in place")
        #expect(folio.page(7).isAnonExclusive && k.ramStats!.allocatedPages == alloc0 + 2)
        try mm.munmap(a, 2 * MiB)
        #expect(k.ramStats!.allocatedPages == 0 && mm.rssAnonPages == 0)
        #expect(k.drainReports().isEmpty)
    }

    @Test("copy_huge_pmd: the huge zero PMD is copied as it is (read-only, no rss, no reference); a child write splits it and copies one zeroed page")
    func forkHugeZero() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 4 * MiB, hugepage: true)
        #expect(mm.handleFault(a, write: false) == 0)
        #expect(mm.handleFault(a + UInt64(pmdSize), write: true) == 0)
        let hz = AnonFaultTests.pmd(mm, a)
        #expect(isHugeZeroPfn(k.ref, entryPfn(hz)))
        let c = try mm.fork()
        let cz = AnonFaultTests.pmd(c, a)
        #expect(entryLeaf(cz) && entryPfn(cz) == entryPfn(hz) && !entryWrite(cz))
        #expect(c.rssAnonPages == Int64(hpagePmdNr))
        let alloc0 = k.ramStats!.allocatedPages
        #expect(c.handleFault(a + 4096, write: true) == 0)
        #expect(!entryLeaf(AnonFaultTests.pmd(c, a)) && entryLeaf(AnonFaultTests.pmd(mm, a)))
        #expect(c.rssAnonPages == Int64(hpagePmdNr) + 1 && k.ramStats!.allocatedPages == alloc0 + 1)
        #expect(k.drainReports().isEmpty)
    }

    @Test("vma_needs_copy with VM_MIXEDMAP: a shared device-dax PTE is copied at fork (file folio +1 reference, +1 mapcount, MM_FILEPAGES 1 in the child, the child's entry clean, the parent's still writable), a DAX PMD is not (it refaults); the invariants hold over both mms")
    func forkMixedmapFile() throws {
        let (rig, a) = try vmaFixture(order: pmdOrder, bytes: 4 << 20, length: 4 << 20, extraFlags: DAX_VM_MIXEDMAP)
        #expect(rig.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
        let pmdFolio = rig.folio(pgoff: 0)
        #expect(pmdFolio.entireMapcount == 1)
        // A PTE mapping in the second PMD (a 4K insert).
        let b = a + UInt64(pmdSize)
        let f = rig.folio(pgoff: UInt64(hpagePmdNr) + 3)
        VMAKit.write(rig.mm) {
            let vma = rig.mm.findVMA(b)!
            #expect(VMAKit.withVMF(vma, b + 3 * 4096) { vmfInsertPageMkwrite($0, f.head, write: true) } == DAX_VM_FAULT_NOPAGE)
        }
        let ref0 = f.refCount, map0 = f.mapcount, pref0 = pmdFolio.refCount
        let c = try rig.mm.fork()
        let ce = AnonFaultTests.pte(c, b + 3 * 4096), pe = AnonFaultTests.pte(rig.mm, b + 3 * 4096)
        #expect(entryPfn(ce) == pageToPfn(rig.kernel.ref, f.head) && !entryDirty(ce) && entryWrite(ce))
        #expect(entryWrite(pe), "a shared mapping is not write-protected")
        #expect(f.refCount == ref0 + 1 && f.mapcount == map0 + 1 && c.rssFilePages == 1)
        #expect(AnonFaultTests.pmd(c, a) == 0 && pmdFolio.refCount == pref0, "the DAX PMD refaults in the child")
        expectInvariants(rig.kernel, mms: [rig.mm, c], pgmaps: rig.pgmaps)
        try c.munmap(b, UInt64(pmdSize))
        #expect(f.refCount == ref0 && f.mapcount == map0)
    }

    @Test("do_huge_pmd_wp_page after fork: once the child is gone the parent's write reuses the THP PMD in place (refcount 1: folio_move_anon_rmap, head PageAnonExclusive), nothing allocated")
    func forkThpReuseWhole() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 2 * MiB, hugepage: true)
        #expect(mm.handleFault(a, write: true) == 0)
        let pfn = entryPfn(AnonFaultTests.pmd(mm, a))
        let folio = pfnToPage(k.ref, pfn).folio
        var child: MM? = try mm.fork()
        #expect(child!.rssAnonPages == Int64(hpagePmdNr))
        child = nil
        #expect(folio.refCount == 1 && folio.entireMapcount == 1 && !folio.head.isAnonExclusive)
        let alloc0 = k.ramStats!.allocatedPages
        #expect(mm.handleFault(a + 12345, write: true) == 0)
        let e = AnonFaultTests.pmd(mm, a)
        #expect(entryLeaf(e) && entryWrite(e) && entryPfn(e) == pfn)
        #expect(folio.head.isAnonExclusive && k.ramStats!.allocatedPages == alloc0)
        #expect(k.drainReports().isEmpty)
    }

    @Test("copy_present_page: a pinned anon page is copied for the child at fork (the child's page exclusive, writable, same bytes; the parent's PTE stays writable and exclusive; one page allocated; MM_ANONPAGES 1 in each)")
    func forkPinnedCopies() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: true) == 0)
        let pfn = entryPfn(AnonFaultTests.pte(mm, a))
        pageBytes(k, pfn)[1] = 0x77
        let pinned = try mm.pinPages(a, count: 1, flags: [.write, .longterm])
        let folio = pfnToPage(k.ref, pfn).folio
        #expect(folio.maybeDmaPinned)
        let ref0 = folio.refCount
        let alloc0 = k.ramStats!.allocatedPages
        let mapped0 = k.stat(DAX_NR_ANON_MAPPED)
        let c = try mm.fork()
        let ce = AnonFaultTests.pte(c, a), pe = AnonFaultTests.pte(mm, a)
        #expect(entryPfn(ce) != pfn && entryWrite(ce) && entryDirty(ce))
        #expect(pfnToPage(k.ref, entryPfn(ce)).isAnonExclusive && pageBytes(k, entryPfn(ce))[1] == 0x77)
        #expect(entryPfn(pe) == pfn && entryWrite(pe) && folio.head.isAnonExclusive)
        #expect(folio.refCount == ref0 && folio.mapcount == 1)
        #expect(k.ramStats!.allocatedPages == alloc0 + 1 && k.stat(DAX_NR_ANON_MAPPED) == mapped0 + 1)
        #expect(c.rssAnonPages == 1 && mm.rssAnonPages == 1)
        mm.unpin(pinned)
        #expect(k.drainReports().isEmpty)
    }

    @Test("copy_huge_pmd with a pinned THP: folio_try_dup_anon_rmap_pmd fails, the parent's PMD is split and every page is copied for the child by copy_present_page (512 pages allocated; the parent's PTEs stay writable and exclusive)")
    func forkPinnedThpSplits() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 2 * MiB, hugepage: true)
        #expect(mm.handleFault(a, write: true) == 0)
        let folio = pfnToPage(k.ref, entryPfn(AnonFaultTests.pmd(mm, a))).folio
        let pinned = try mm.pinPages(a, count: 1, flags: [.write, .longterm])
        #expect(folio.pincount == 1)
        let alloc0 = k.ramStats!.allocatedPages
        let c = try mm.fork()
        #expect(!entryLeaf(AnonFaultTests.pmd(mm, a)), "split in the parent")
        #expect(entryWrite(AnonFaultTests.pte(mm, a + 4096)) && folio.page(1).isAnonExclusive)
        #expect(k.ramStats!.allocatedPages == alloc0 + Int64(hpagePmdNr))
        #expect(c.rssAnonPages == Int64(hpagePmdNr) && mm.rssAnonPages == Int64(hpagePmdNr))
        #expect(folio.mapcount == Int32(hpagePmdNr))
        #expect(entryPfn(AnonFaultTests.pte(c, a + 4096)) != pageToPfn(k.ref, folio.page(1)))
        mm.unpin(pinned)
        #expect(k.drainReports().isEmpty)
    }

    @Test("copy_nonpresent_pte: a device-exclusive entry is restored in the parent and copied as a present page; while its folio is locked fork fails with ENOMEM")
    func forkDeviceExclusive() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: true) == 0)
        let pfn = entryPfn(AnonFaultTests.pte(mm, a))
        let folio = pfnToPage(k.ref, pfn).folio
        let p = try mm.makeDeviceExclusive(a, owner: UnsafeMutableRawPointer(bitPattern: 0xd00d))
        #expect(throws: MMError.self) { _ = try mm.fork() }
        #expect(isSwapPte(AnonFaultTests.pte(mm, a)), "the entry stays while its folio is locked")
        mm.releaseDeviceExclusive(p)
        let c = try mm.fork()
        let pe = AnonFaultTests.pte(mm, a), ce = AnonFaultTests.pte(c, a)
        #expect(entryPresent(pe) && entryPfn(pe) == pfn && !entryWrite(pe))
        #expect(entryPresent(ce) && entryPfn(ce) == pfn && !entryWrite(ce))
        #expect(folio.refCount == 2 && folio.mapcount == 2 && c.rssAnonPages == 1)
        #expect(k.drainReports().isEmpty)
    }

    @Test("copy_nonpresent_pte: a writable migration entry counts in the child's rss, becomes readable in the parent (soft-dirty kept) and in the child, and takes no reference or mapcount")
    func forkMigrationEntry() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: true) == 0)
        let pfn = entryPfn(AnonFaultTests.pte(mm, a))
        let folio = pfnToPage(k.ref, pfn).folio
        // try_to_migrate_one's end state: a writable migration entry, the
        // rmap and the mapping's reference held by the migration.
        mm.lockRead()
        let ptep = walk(mm.ref, a).pte!
        setPteAt(mm.ref, a, ptep, pteSwpMksoftDirty(swpEntryToPte(makeWritableMigrationEntry(pfn))))
        mm.unlockRead()
        let c = try mm.fork()
        let pe = pteToSwpEntry(AnonFaultTests.pte(mm, a)), ce = pteToSwpEntry(AnonFaultTests.pte(c, a))
        #expect(isMigrationEntry(pe) && !isWritableMigrationEntry(pe) && swpOffsetPfn(pe) == pfn)
        #expect(pteSwpSoftDirty(AnonFaultTests.pte(mm, a)))
        #expect(isMigrationEntry(ce) && !isWritableMigrationEntry(ce))
        #expect(c.rssAnonPages == 1 && folio.refCount == 1 && folio.mapcount == 1)
        // Put the parent back as remove_migration_pte would (same folio,
        // now read-only), and drop the child's entry.
        mm.lockRead()
        setPteAt(mm.ref, a, ptep, entryWrprotect(pfnEntry(pfn, PT.present | PT.user)))
        mm.unlockRead()
        try c.munmap(a, 64 * KiB)
        #expect(c.rssAnonPages == 0 && folio.refCount == 1)
        #expect(k.drainReports().isEmpty)
    }
}
