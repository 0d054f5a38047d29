// mm/memory.c, mm/huge_memory.c: zap of PTE/PMD/PUD mappings, splits (which
// unmap DAX huge entries), may_split refusals and page-table freeing.

import CDaxMM
import Testing
@testable import MMCore
import MMTestChecks
import MMTestSupport

@Suite("Zap and split (mm/memory.c, mm/huge_memory.c)")
struct ZapSplitTests {
    @Test("munmap drops exactly one ref, one mapcount, the entry's rss and NR_FILE_MAPPED/PMDMAPPED per entry, and frees the page tables",
          arguments: [0, 9, 18])
    func munmapUndoesEveryEntry(order: Int) throws {
        let size = UInt64(4096) << UInt64(order)
        let nr = Int64(1) << Int64(order)
        let rig = try FaultRig(order: order, bytes: max(size * 2, 4 << 20))
        let tables = rig.kernel.pageTablesInUse
        let addr = try rig.linkVMA(length: size * 2)
        // One VMA, two entries of the map's fault size (PTE, PMD or PUD):
        //
        //   addr               addr+size         addr+2*size
        //   [ VMA pgoff 0                       ]
        //   [ f0, write fault ][ f1, read fault ]
        let f0 = rig.folio(pgoff: 0), f1 = rig.folio(pgoff: UInt64(nr))
        let b0 = VMAKit.counters(rig, f0), b1 = VMAKit.counters(rig, f1)
        #expect(rig.mm.handleFault(addr, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.mm.handleFault(addr + size, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(f0.refCount == b0.ref + 1 && f1.refCount == b1.ref + 1)
        #expect(f0.mapcount == 1 && f1.mapcount == 1)
        #expect(rig.mm.rssFilePages == 2 * nr)
        #expect(rig.kernel.stat(DAX_NR_FILE_MAPPED) == b0.fileMapped + 2 * nr)
        #expect(rig.kernel.stat(DAX_NR_FILE_PMDMAPPED) == b0.pmdMapped + (order == pmdOrder ? 2 * nr : 0))
        #expect(rig.kernel.pageTablesInUse > tables)
        rig.check()
        try rig.mm.munmap(addr, size * 2)
        #expect(VMAKit.counters(rig, f0) == b0)
        #expect(VMAKit.counters(rig, f1) == b1)
        #expect(rig.mm.vmaList().isEmpty)
        #expect(rig.kernel.pageTablesInUse == tables, "every table but the pgd is freed")
        #expect(rig.mm.ref.pointee.pgtables_bytes == 0)
        // The write-faulted entry was dirty and young: the folio keeps that.
        #expect(f0.isDirty)
        #expect(f0.head.test(DAX_PG_referenced))
        rig.check()
    }

    @Test("munmap of one 4K page inside a 2M VMA of a 4K-order map: only that PTE goes; the VMA splits in two")
    func munmapOnePteInsideVma() throws {
        let (rig, addr) = try vmaFixture(length: 2 << 20)
        let pages = VMAKit.pages(512)
        defer { pages.deallocate() }
        // Fault all 512 pages in through GUP, then drop the GUP refs.
        #expect(getUserPages(rig.mm.ref, addr, 512, [], pages) == 512)
        putUserPages(rig.kernel.ref, pages, 512)
        #expect(rig.mm.rssFilePages == 512)
        let fm = rig.kernel.stat(DAX_NR_FILE_MAPPED)
        let hole = addr + 3 * 4096
        // munmap of one page splits the VMA around the hole:
        //
        //   addr           hole=addr+12K  addr+16K       addr+2M
        //   [ VMA pgoff 0 ] (unmapped)    [ VMA pgoff 4 ]
        let f3 = rig.folio(pgoff: 3), f4 = rig.folio(pgoff: 4)
        #expect(f3.refCount == 2 && f4.refCount == 2)
        try rig.mm.munmap(hole, 4096)
        #expect(f3.refCount == 1 && f3.mapcount == 0)
        #expect(f4.refCount == 2 && f4.mapcount == 1)
        #expect(rig.mm.rssFilePages == 511)
        #expect(rig.kernel.stat(DAX_NR_FILE_MAPPED) == fm - 1)
        #expect(VMAKit.pte(rig.mm, hole) == 0)
        #expect(entryPfn(VMAKit.pte(rig.mm, hole + 4096)) == rig.pgmap.ranges[0].startPfn + 4)
        let vmas = rig.mm.vmaList()
        #expect(vmas.count == 2)
        #expect(vmas.map { $0.pointee.vm_end } == [hole, addr + (2 << 20)])
        #expect(vmas.last?.pointee.vm_start == hole + 4096)
        #expect(vmas.last?.pointee.vm_pgoff == 4)
        rig.check()
    }

    @Test("order-9 map: munmap at a non-2M-aligned address is -EINVAL (may_split) and nothing changes")
    func munmapRefusedByMaySplit() throws {
        let (rig, addr) = try vmaFixture(order: pmdOrder, bytes: 4 << 20, length: 4 << 20)
        #expect(rig.mm.handleFault(addr, write: true) & DAX_VM_FAULT_ERROR == 0)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let e0 = VMAKit.pmd(rig.mm, addr)
        // One VMA over two PMD folios; each refused range starts or ends inside
        // one of them:
        //
        //   addr       addr+4K    addr+8K  addr+1M  addr+2M  addr+3M  addr+4M
        //   [ VMA pgoff 0                                            ]
        //   [ f: PMD, mapped                       ][ g: not mapped  ]
        //   [ refused ][ refused ]         [ refused        ]
        let tables = rig.kernel.pageTablesInUse
        for (start, len) in [(addr + 4096, UInt64(4096)), (addr, UInt64(4096)), (addr + (1 << 20), UInt64(2 << 20))] {
            #expect(VMAKit.errno { try rig.mm.munmap(start, len) } == EINVAL)
        }
        #expect(rig.mm.vmaList().count == 1)
        #expect(rig.mm.vmaList().first?.pointee.vm_start == addr)
        #expect(rig.mm.vmaList().first?.pointee.vm_end == addr + (4 << 20))
        #expect(VMAKit.pmd(rig.mm, addr) == e0)
        #expect(VMAKit.counters(rig, f) == before)
        #expect(rig.kernel.pageTablesInUse == tables)
        rig.check()
        // At a 2M boundary the same map splits fine and only that PMD goes.
        let g = rig.folio(pgoff: 512)
        #expect(rig.mm.handleFault(addr + (2 << 20), write: false) & DAX_VM_FAULT_ERROR == 0)
        try rig.mm.munmap(addr + (2 << 20), 2 << 20)
        #expect(g.refCount == 1 && g.mapcount == 0)
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    @Test("order-9 map: mprotect at a non-2M-aligned address is -EINVAL (may_split) and nothing changes")
    func mprotectRefusedByMaySplit() throws {
        let (rig, addr) = try vmaFixture(order: pmdOrder, bytes: 4 << 20, length: 4 << 20)
        #expect(rig.mm.handleFault(addr, write: true) & DAX_VM_FAULT_ERROR == 0)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let e0 = VMAKit.pmd(rig.mm, addr)
        let flags = rig.mm.vmaList().first!.pointee.vm_flags
        // mprotect of [addr, +4K) or [addr+4K, +4K) would split the VMA inside
        // f's PMD:
        //
        //   addr       addr+4K    addr+8K      addr+2M  addr+4M
        //   [ VMA pgoff 0                              ]
        //   [ f: PMD, mapped, writable        ][ g     ]
        //   [ refused ][ refused ]
        #expect(VMAKit.errno { try rig.mm.mprotect(addr + 4096, 4096, [.read]) } == EINVAL)
        #expect(VMAKit.errno { try rig.mm.mprotect(addr, 4096, [.read]) } == EINVAL)
        #expect(rig.mm.vmaList().count == 1)
        #expect(rig.mm.vmaList().first!.pointee.vm_flags == flags)
        #expect(VMAKit.pmd(rig.mm, addr) == e0)
        #expect(entryWrite(VMAKit.pmd(rig.mm, addr)))
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    @Test("zap of part of a PMD mapping without may_split splits it, i.e. unmaps the whole PMD (ref, mapcount, rss -512, PMDMAPPED -512)")
    func partialZapOfPmdUnmapsIt() throws {
        let (rig, addr) = try vmaFixture(order: pmdOrder, bytes: 4 << 20, length: 4 << 20, ops: .noMaySplit)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        #expect(rig.mm.handleFault(addr, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(f.refCount == before.ref + 1 && f.entireMapcount == 1)
        // Zap of one 4K page inside f's PMD entry unmaps the whole entry; the
        // VMA stays whole:
        //
        //   addr  addr+4K  addr+8K  addr+2M  addr+4M
        //   [ VMA pgoff 0, no may_split     ]
        //   [ f: PMD               ][ g     ]
        //         [ zap   ]
        VMAKit.read(rig.mm) { zapPageRange(rig.mm.ref, addr + 4096, addr + 2 * 4096) }
        #expect(VMAKit.counters(rig, f) == before)
        #expect(!entryPresent(VMAKit.pmd(rig.mm, addr)))
        #expect(f.isDirty, "split propagates the PMD's dirty bit to the folio")
        #expect(rig.mm.vmaList().count == 1, "zap leaves the VMA")
        rig.check()
    }

    @Test("munmap of a 4K piece of a PMD-mapped VMA without may_split: the VMA splits and the whole PMD is unmapped")
    func munmapPieceOfPmdWithoutMaySplit() throws {
        let (rig, addr) = try vmaFixture(order: pmdOrder, bytes: 4 << 20, length: 4 << 20, ops: .noMaySplit)
        let f = rig.folio(pgoff: 0), g = rig.folio(pgoff: 512)
        let bf = VMAKit.counters(rig, f)
        #expect(rig.mm.handleFault(addr, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.mm.handleFault(addr + (2 << 20), write: false) & DAX_VM_FAULT_ERROR == 0)
        // munmap of [addr+8K, +4K) splits the VMA (no may_split refuses) and
        // with it f's PMD entry, which is unmapped whole; g's is untouched
        // (before, after):
        //
        //   addr           addr+8K       addr+12K  addr+2M   addr+4M
        //   [ VMA pgoff 0, no may_split                     ]
        //   [ f: PMD                              ][ g: PMD ]
        //   [ VMA pgoff 0 ] (unmapped)   [ VMA pgoff 3      ]
        //    f: not mapped                         [ g: PMD ]
        try rig.mm.munmap(addr + 8192, 4096)
        #expect(VMAKit.counters(rig, f).ref == bf.ref)
        #expect(f.mapcount == 0 && f.entireMapcount == 0)
        #expect(g.refCount == 2 && g.entireMapcount == 1, "the other PMD is untouched")
        #expect(rig.mm.rssFilePages == 512)
        #expect(rig.kernel.stat(DAX_NR_FILE_PMDMAPPED) == bf.pmdMapped + 512)
        #expect(rig.mm.vmaList().count == 2)
        rig.check()
    }

    @Test("zap of part of a PUD mapping splits it: the whole PUD is unmapped (rss -262144)")
    func partialZapOfPudUnmapsIt() throws {
        let (rig, addr) = try vmaFixture(order: pudOrder, bytes: 1 << 30, length: 1 << 30, ops: .noMaySplit)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        #expect(rig.mm.handleFault(addr + (5 << 20), write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.mm.rssFilePages == Int64(hpagePudNr))
        #expect(f.refCount == before.ref + 1 && f.entireMapcount == 1)
        // Zap of [addr+2M, addr+4M) inside f's PUD entry (faulted at addr+5M)
        // unmaps the whole entry; the VMA stays:
        //
        //   addr  addr+2M  addr+4M       addr+1G
        //   [ VMA pgoff 0, no may_split ]
        //   [ f: PUD                    ]
        //         [ zap   ]
        VMAKit.read(rig.mm) { zapPageRange(rig.mm.ref, addr + (2 << 20), addr + (4 << 20)) }
        #expect(VMAKit.counters(rig, f) == before)
        #expect(!entryPresent(VMAKit.pud(rig.mm, addr)))
        #expect(!f.isDirty, "a read-faulted PUD was clean")
        rig.check()
    }

    @Test("zap of a whole PMD range through zap_page_range_single: same accounting as munmap, VMA kept, refault works")
    func zapWholePmdThenRefault() throws {
        let (rig, addr) = try vmaFixture(order: pmdOrder, bytes: 4 << 20, length: 4 << 20)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        #expect(rig.mm.handleFault(addr, write: false) & DAX_VM_FAULT_ERROR == 0)
        let mapped = VMAKit.counters(rig, f)
        // Zap of exactly f's PMD range; the VMA stays for the refault:
        //
        //   addr      addr+2M  addr+4M
        //   [ VMA pgoff 0     ]
        //   [ f: PMD ][ g     ]
        //   [ zap    ]
        VMAKit.read(rig.mm) { zapPageRange(rig.mm.ref, addr, addr + (2 << 20)) }
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
        #expect(rig.mm.handleFault(addr + 4096, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(VMAKit.counters(rig, f) == mapped)
        rig.check()
    }

    @Test("page tables freed by munmap only when no VMA still needs them")
    func pageTablesFreedOnlyWhenUnused() throws {
        let rig = try FaultRig(order: 0, bytes: 2 << 20)
        let tables = rig.kernel.pageTablesInUse
        let a = try rig.linkVMA(length: 8192, start: 0x4000_0000_0000)
        let b = try rig.linkVMA(length: 8192, start: a + 8192, pgoff: 2)
        // Two VMAs side by side, under the same PUD, PMD and PTE tables:
        //
        //   a=0x4000_0000_0000  b=a+8K         b+8K
        //   [ VMA pgoff 0      ][ VMA pgoff 2 ]
        #expect(rig.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.mm.handleFault(b, write: false) & DAX_VM_FAULT_ERROR == 0)
        let used = rig.kernel.pageTablesInUse
        #expect(used == tables + 3, "PUD, PMD and PTE tables")
        try rig.mm.munmap(a, 8192)
        #expect(rig.kernel.pageTablesInUse == used, "b still uses the same PTE table")
        #expect(entryPfn(VMAKit.pte(rig.mm, b)) == rig.pgmap.ranges[0].startPfn + 2)
        try rig.mm.munmap(b, 8192)
        #expect(rig.kernel.pageTablesInUse == tables)
        rig.check()
    }
    @Test("exit_mmap (the MM going away) zaps every entry at every level and frees every table including the pgd",
          arguments: [0, 9])
    func exitMmapUndoesEverything(order: Int) throws {
        let rig = try FaultRig(order: order, bytes: 4 << 20)
        let tables = rig.kernel.pageTablesInUse
        let fm = rig.kernel.stat(DAX_NR_FILE_MAPPED), pm = rig.kernel.stat(DAX_NR_FILE_PMDMAPPED)
        let f = rig.folio(pgoff: 0), g = rig.folio(pgoff: 512)
        do {
            let mm = try MM(kernel: rig.kernel)
            let a = try mm.mmap(rig.map.request(length: 4 << 20))
            #expect(mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
            #expect(mm.handleFault(a + (2 << 20), write: false) & DAX_VM_FAULT_ERROR == 0)
            #expect(f.refCount == 2 && g.refCount == 2)
            #expect(rig.kernel.pageTablesInUse > tables + 1)
            #expect(invariants(mms: [mm], pgmaps: [rig.pgmap]).isEmpty)
        }
        #expect(f.refCount == 1 && f.mapcount == 0)
        #expect(g.refCount == 1 && g.mapcount == 0)
        #expect(rig.kernel.stat(DAX_NR_FILE_MAPPED) == fm && rig.kernel.stat(DAX_NR_FILE_PMDMAPPED) == pm)
        #expect(rig.kernel.pageTablesInUse == tables)
        rig.check()
    }
    @Test("fs-dax (zero-based) folios: zap returns them to idle refcount 0 with no report, at PTE and PMD level", arguments: [0, 9])
    func fsdaxZapReturnsToIdle(order: Int) throws {
        let (rig, a) = try vmaFixture(type: .fsDax, order: order, bytes: 4 << 20, length: 4 << 20)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        #expect(before.ref == 0)
        #expect(rig.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(f.refCount == 1 && f.mapcount == 1, "the temporary fs/dax reference is gone; the entry's stays")
        let pages = VMAKit.pages(1)
        defer { pages.deallocate() }
        #expect(getUserPages(rig.mm.ref, a, 1, [], pages) == 1)
        #expect(f.refCount == 2)
        putUserPages(rig.kernel.ref, pages, 1)
        rig.check(GupTests.ledger(rig, []))
        try rig.mm.munmap(a, 4 << 20)
        #expect(VMAKit.counters(rig, f) == before)
        #expect(f.refCount == 0)
        rig.check(GupTests.ledger(rig, []))
    }
}
