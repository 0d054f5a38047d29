// Places where the port once answered differently from the kernel source it
// ports (mm/memory.c, mm/vma.c, mm/gup.c, mm/huge_memory.c, mm/memremap.c).
// Each test names the kernel function and the rule, and fails on the old
// answer.

import CDaxMM
import DAXBase
import Testing
@testable import MMCore
import MMTestChecks
import MMTestSupport

@Suite("Kernel parity: mm")
struct MMKernelParityTests {

    // MARK: i_mmap

    @Test("vma_link_file / unlink_file_vma: mmap, __split_vma, mremap and munmap keep the file's i_mmap; unmap_mapping_pages with nr 0 zaps to the end of the file")
    func iMmapFollowsVMAs() throws {
        let rig = try FaultRig(order: 0, bytes: 4 << 20)
        let file = rig.map.file
        let a = try rig.linkVMA(length: 16 * 4096)
        #expect(file.mappers == [rig.mm.findVMA(a)!])
        for i in 0..<16 { #expect(rig.mm.handleFault(a + UInt64(i) * 4096, write: false) == DAX_VM_FAULT_NOPAGE) }
        #expect(rig.mm.rssFilePages == 16)
        // Punch out pages 4..<8: the VMA splits in two, both halves linked.
        try rig.mm.munmap(a + 4 * 4096, 4 * 4096)
        #expect(file.mappers.count == 2)
        #expect(Set(file.mappers) == Set(rig.mm.vmaList()))
        #expect(rig.mm.rssFilePages == 12)
        // Move the upper half: the new VMA replaces the old one in i_mmap.
        let moved = try rig.mm.mremap(a + 8 * 4096, oldLength: 8 * 4096, newLength: 16 * 4096, mayMove: true)
        #expect(file.mappers.count == 2)
        #expect(Set(file.mappers) == Set(rig.mm.vmaList()))
        #expect(rig.mm.rssFilePages == 12, "moved entries keep their mappings")
        // start 10, nr 0: file pages 10 and up, in every VMA (the moved one maps 8..<24).
        VMAKit.read(rig.mm) { unmapMappingPages(file.ref, 10, 0) }
        #expect(rig.mm.rssFilePages == 4 + 2)
        #expect(rig.folio(pgoff: 9).mapcount == 1 && rig.folio(pgoff: 10).mapcount == 0)
        // unmap_mapping_range: holebegin rounds down and holelen up, each on
        // its own, so [4097, +4097) is pages [1, 3).
        VMAKit.read(rig.mm) { unmapMappingRange(file.ref, holebegin: 4096 + 1, holelen: 4096 + 1, evenCows: false) }
        #expect(rig.folio(pgoff: 1).mapcount == 0 && rig.folio(pgoff: 2).mapcount == 0)
        #expect(rig.folio(pgoff: 0).mapcount == 1 && rig.folio(pgoff: 3).mapcount == 1)
        #expect(rig.mm.rssFilePages == 2 + 2)
        try rig.mm.munmap(a, 4 * 4096)
        try rig.mm.munmap(moved, 16 * 4096)
        #expect(file.mappers.isEmpty)
        rig.check()
    }

    // MARK: follow_pfn_pte

    @Test("follow_pfn_pte: a special PTE (no struct page, or a page vm_normal_page will not hand out) is -EEXIST for GUP that wants pages, slow and fast; a normal page before it is still returned")
    func followPfnPteIsEEXIST() throws {
        let rig = try FaultRig(order: 0, bytes: 4 << 20)
        var req = MMapRequest(length: 4 * 4096)
        req.extraFlags = DAX_VM_MIXEDMAP
        let a = try rig.mm.mmap(req)
        let noPage: UInt64 = 0x200000   // 8 GiB: no struct page
        #expect(!rig.kernel.pfnValid(noPage))
        let f0 = rig.folio(pgoff: 0), f1 = rig.folio(pgoff: 1)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(a)!
            #expect(vmInsertPage(vma, a, f0.head) == 0)
            #expect(vmfInsertPfn(vma, a + 4096, noPage) == DAX_VM_FAULT_NOPAGE)
            // A pfn that has a struct page, mapped pfn-only: special too.
            #expect(vmfInsertPfn(vma, a + 2 * 4096, pageToPfn(rig.kernel.ref, f1.head)) == DAX_VM_FAULT_NOPAGE)
        }
        #expect(entrySpecial(VMAKit.pte(rig.mm, a + 4096)) && entrySpecial(VMAKit.pte(rig.mm, a + 2 * 4096)))
        let before0 = VMAKit.counters(rig, f0), before1 = VMAKit.counters(rig, f1)
        let pages = VMAKit.pages(2)
        defer { pages.deallocate() }
        typealias Gup = (MMRef, UInt64, Int, GupFlags, PageArray) -> Int
        let entries: [(String, Gup)] = [("get_user_pages", { getUserPages($0, $1, $2, $3, $4) }),
                                        ("pin_user_pages", { pinUserPages($0, $1, $2, $3, $4) }),
                                        ("get_user_pages_fast", getUserPagesFast),
                                        ("pin_user_pages_fast", pinUserPagesFast)]
        for (name, gup) in entries {
            for at in [a + 4096, a + 2 * 4096] {
                #expect(gup(rig.mm.ref, at, 1, [], pages) == Int(-EEXIST), "\(name) at \(hex(at))")
            }
            #expect(f1.refCount == before1.ref && f1.pincount == before1.pincount, "\(name): nothing taken on the pfn-mapped page")
            // Pages [0, 2): the normal page is returned, the walk stops at the special one.
            #expect(gup(rig.mm.ref, a, 2, [], pages) == 1, "\(name)")
            #expect(pages[0] == f0.head.raw)
            if name.hasPrefix("pin") { unpinUserPages(rig.kernel.ref, pages, 1) } else { putUserPages(rig.kernel.ref, pages, 1) }
        }
        var idle = before0
        idle.pinAcquired += 2; idle.pinReleased += 2
        #expect(VMAKit.counters(rig, f0) == idle)
        try rig.mm.munmap(a, 4 * 4096)
        rig.check()
    }

    // MARK: vmf_insert_folio_pmd / vmf_insert_folio_pud

    @Test("vmf_insert_folio_pmd/pud check the folio order first (WARN, SIGBUS) and the address in insert_pmd/insert_pud after it: a wrong-order folio outside the VMA WARNs",
          arguments: [pmdOrder, pudOrder])
    func hugeInsertOrderCheckedFirst(level: Int) throws {
        let (rig, addr) = try vmaFixture(bytes: 4 << 20, length: 4 << 20, alignment: UInt64(4096) << UInt64(level))
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let r = VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            // One huge page past the VMA: outside, and the folio is order 0.
            let outside = vma.pointee.vm_end + (UInt64(4096) << UInt64(level))
            return VMAKit.withVMF(vma, outside, write: true) {
                level == pmdOrder ? vmfInsertFolioPmd($0, f, write: true) : vmfInsertFolioPud($0, f, write: true)
            }
        }
        #expect(r == DAX_VM_FAULT_SIGBUS)
        let reports = rig.kernel.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.function == (level == pmdOrder ? "vmf_insert_folio_pmd" : "vmf_insert_folio_pud"))
        #expect(reports.first?.rule.contains(level == pmdOrder ? "PMD_ORDER" : "PUD_ORDER") == true)
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    // MARK: memremap_pages' conflict probe

    @Test("pagemap_range probes get_dev_pagemap at the first and last pfn: a live map there is -ENOMEM with a WARN")
    func memremapProbeWarns() throws {
        let k = try makeKernel()
        let a = try mapped(k, .generic, start: base + 2 * MiB, size: 2 * MiB)
        let refs = a.refCount
        let b = makePgmap(k, .fsDax, ranges: [phys(base + 2 * MiB, 4 * MiB)])
        expectMMError(.noMemory) { try b.memremapPages() }
        let reports = k.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.function == "pagemap_range")
        #expect(reports.first?.rule.contains("Conflicting mapping") == true)
        #expect(reports.first?.pfn == pfnOf(base + 2 * MiB))
        #expect(a.isLive && !b.isLive)
        #expect(a.refCount == refs, "the probe's get_dev_pagemap reference was put")
    }

    /// A deliberate difference, not parity: on this error the kernel's
    /// pagemap_range calls pgmap_array_delete over the whole new range, which
    /// also erases the inner (still live) map's pfns, so get_dev_pagemap
    /// stops finding it. The port keeps the live map findable (see
    /// Memremap.swift's pagemapRange); the errno and the missing WARN match.
    @Test("pagemap_range's probe misses a live map strictly inside the range: the hot-add fails with -EEXIST and no WARN (as the kernel); the port, unlike the kernel, keeps the inner map registered")
    func memremapInnerOverlapIsEEXIST() throws {
        let k = try makeKernel()
        let inner = try mapped(k, .generic, start: base + 2 * MiB, size: 2 * MiB)
        let outer = makePgmap(k, .fsDax, ranges: [phys(base, 6 * MiB)])
        let e = expectMMError(.errno) { try outer.memremapPages() }
        if case .errno(let no, _)? = e { #expect(no == EEXIST) }
        #expect(k.drainReports().isEmpty)
        #expect(inner.isLive && !outer.isLive)
        let p = try #require(getDevPagemap(k, pfn: pfnOf(base + 3 * MiB)))
        #expect(p == inner.ref)
        putDevPagemap(p)
        #expect(inner.firstPage().pgmap == inner.ref && inner.firstPage().folio.refCount == 1)
        #expect(getDevPagemap(k, pfn: pfnOf(base)) == nil, "nothing of the outer range was registered")
    }

    @Test("pagemap_range's probe does not see a dying map (percpu_ref_tryget_live fails): the hot-add finds its sub-sections (-EEXIST), not -ENOMEM")
    func memremapOverDyingMapIsEEXIST() throws {
        let k = try makeKernel()
        let old = try mapped(k, .fsDax, start: base, size: 2 * MiB)
        let hold = try #require(getDevPagemap(k, pfn: pfnOf(base)))
        expectMMError(.busy) { try old.memunmapPages(timeoutNanos: 50_000_000) }
        #expect(!old.isLive)
        let new = makePgmap(k, .generic, ranges: [phys(base, 2 * MiB)])
        let e = expectMMError(.errno) { try new.memremapPages() }
        if case .errno(let no, _)? = e { #expect(no == EEXIST) }
        #expect(k.drainReports().isEmpty, "no conflict WARN")
        #expect(!new.isLive)
        putDevPagemap(hold)
        try old.memunmapPages(timeoutNanos: 1_000_000_000)
        // Once the old map is gone the range maps.
        try new.memremapPages()
        #expect(new.isLive && new.firstPage().pgmap == new.ref)
    }
}

