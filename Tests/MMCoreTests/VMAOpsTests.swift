// VMA operations: mmap (alignment, MAP_FIXED, the file's mmap hook), munmap,
// mprotect (write-protect and the mkwrite re-fault) and mremap (shrink, grow,
// move with the entries and their references).

import CDaxMM
import Testing
@testable import MMCore
import MMTestChecks
import MMTestSupport

@Suite("VMA operations: mmap, munmap, mprotect, mremap")
struct VMAOpsTests {
    static let fixedBase: UInt64 = 0x5000_0000_0000

    @Test("mmap returns an address aligned to the request's alignment",
          arguments: [UInt64(4096), UInt64(2 << 20), UInt64(1 << 30)])
    func mmapHonoursAlignment(alignment: UInt64) throws {
        let rig = try FaultRig(order: 0, bytes: 2 << 20)
        // Something of an odd size first, so the top-down search must align.
        _ = try rig.mm.mmap(MMapRequest(length: 3 * 4096))
        var req = MMapRequest(length: 5 * 4096)
        req.alignment = alignment
        let a = try rig.mm.mmap(req)
        #expect(a % alignment == 0)
        let vma = try #require(VMAKit.read(rig.mm) { vmaLookup(rig.mm.ref, a) })
        #expect(vma.pointee.vm_start == a && vma.pointee.vm_end == a + 5 * 4096)
        #expect(rig.mm.vmaList().count == 2)
        // The two do not overlap.
        let l = rig.mm.vmaList()
        #expect(l[0].pointee.vm_end <= l[1].pointee.vm_start)
    }

    @Test("mmap argument errors: zero length, bad alignment, unaligned MAP_FIXED are -EINVAL and leave no VMA")
    func mmapArgumentErrors() throws {
        let rig = try FaultRig(order: 0, bytes: 2 << 20)
        let tables = rig.kernel.pageTablesInUse
        #expect(VMAKit.errno { try rig.mm.mmap(MMapRequest(length: 0)) } == EINVAL)
        var req = MMapRequest(length: 4096)
        req.alignment = 3 * 4096
        #expect(VMAKit.errno { try rig.mm.mmap(req) } == EINVAL)
        req.alignment = 2048
        #expect(VMAKit.errno { try rig.mm.mmap(req) } == EINVAL)
        req = MMapRequest(length: 4096)
        req.fixedAddress = Self.fixedBase + 100
        #expect(VMAKit.errno { try rig.mm.mmap(req) } == EINVAL)
        #expect(rig.mm.vmaList().isEmpty)
        #expect(rig.kernel.pageTablesInUse == tables)
    }

    @Test("mmap hook returning -EINVAL refuses the mapping: no VMA, and a MAP_FIXED target keeps its old mapping")
    func mmapHookRefusal() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10, start: Self.fixedBase)
        #expect(rig.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let e0 = VMAKit.pte(rig.mm, a)

        var bad = rig.map.request(length: 64 << 10)
        bad.mmapHook = { _ in -EINVAL }
        #expect(VMAKit.errno { try rig.mm.mmap(bad) } == EINVAL)
        #expect(rig.mm.vmaList().count == 1)
        bad.fixedAddress = a
        #expect(VMAKit.errno { try rig.mm.mmap(bad) } == EINVAL)
        #expect(rig.mm.vmaList().count == 1)
        #expect(VMAKit.pte(rig.mm, a) == e0)
        #expect(VMAKit.counters(rig, f) == before)

        // A hook that accepts runs on the new VMA before it is inserted.
        var good = rig.map.request(length: 64 << 10)
        good.mmapHook = { vma in
            vma.pointee.vm_flags |= DAX_VM_DONTEXPAND
            return 0
        }
        let b = try rig.mm.mmap(good)
        #expect(VMAKit.read(rig.mm) { vmaLookup(rig.mm.ref, b)!.pointee.vm_flags } & DAX_VM_DONTEXPAND != 0)
        rig.check()
    }

    @Test("MAP_FIXED over an existing mapping replaces it: old entries zapped and their references dropped")
    func mapFixedReplaces() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10, start: Self.fixedBase)
        for i in 0..<4 { #expect(rig.mm.handleFault(a + UInt64(i) * 4096, write: true) & DAX_VM_FAULT_ERROR == 0) }
        let fm = rig.kernel.stat(DAX_NR_FILE_MAPPED)
        // MAP_FIXED of two pages at a+4K cuts the old VMA in two:
        //
        //   a=fixedBase     a+4K                a+12K           a+64K
        //   [ old, pgoff 0 ][ new, pgoff 100   ][ old, pgoff 3 ]
        //    page 0 kept     pages 1-2 zapped    page 3 kept
        #expect(try rig.linkVMA(length: 8192, start: a + 4096, pgoff: 100) == a + 4096)
        for i in [1, 2] {
            let f = rig.folio(pgoff: UInt64(i))
            #expect(f.refCount == 1 && f.mapcount == 0)
        }
        for i in [0, 3] {
            let f = rig.folio(pgoff: UInt64(i))
            #expect(f.refCount == 2 && f.mapcount == 1)
        }
        #expect(rig.mm.rssFilePages == 2)
        #expect(rig.kernel.stat(DAX_NR_FILE_MAPPED) == fm - 2)
        #expect(VMAKit.pte(rig.mm, a + 4096) == 0)
        #expect(rig.mm.vmaList().count == 3)
        // The new VMA faults from its own pgoff.
        #expect(rig.mm.handleFault(a + 4096, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.folio(pgoff: 100).refCount == 2)
        #expect(entryPfn(VMAKit.pte(rig.mm, a + 4096)) == rig.pgmap.ranges[0].startPfn + 100)
        rig.check()
    }

    @Test("munmap argument errors: unaligned start or zero length is -EINVAL; an empty range is a no-op")
    func munmapArgumentErrors() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10)
        #expect(rig.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        #expect(VMAKit.errno { try rig.mm.munmap(a + 1, 4096) } == EINVAL)
        #expect(VMAKit.errno { try rig.mm.munmap(a, 0) } == EINVAL)
        #expect(VMAKit.errno { try rig.mm.munmap(Self.fixedBase, 4096) } == nil)
        #expect(rig.mm.vmaList().count == 1)
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    @Test("mprotect dropping PROT_WRITE write-protects present entries; write faults then SIGSEGV; PROT_WRITE back makes them writable again (pte_modify with PAGE_SHARED) with no counter change",
          arguments: [0, 9, 18])
    func mprotectWriteProtects(order: Int) throws {
        let len: UInt64 = order == 0 ? 64 << 10 : UInt64(4096) << UInt64(order)
        let (rig, a) = try vmaFixture(order: order, bytes: max(len, 4 << 20), length: len)
        #expect(rig.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
        let entry = { order == 0 ? VMAKit.pte(rig.mm, a) : order == pmdOrder ? VMAKit.pmd(rig.mm, a) : VMAKit.pud(rig.mm, a) }
        #expect(entryWrite(entry()))
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let faults = rig.map.state.pointee.faults

        try rig.mm.mprotect(a, len, [.read])
        #expect(!entryWrite(entry()) && entryPresent(entry()))
        #expect(VMAKit.counters(rig, f) == before)
        #expect(rig.mm.handleFault(a, write: true) == DAX_VM_FAULT_SIGSEGV)
        #expect(rig.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0)
        rig.check()

        try rig.mm.mprotect(a, len, [.read, .write])
        // pte_modify with the new vm_page_prot: a shared mapping without
        // write notification (no page_mkwrite/pfn_mkwrite) gets _PAGE_RW
        // back at once; the write needs no write-protect fault.
        #expect(entryWrite(entry()), "regaining VM_WRITE makes the entries writable (PAGE_SHARED)")
        #expect(rig.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(entryWrite(entry()) && entryDirty(entry()))
        #expect(VMAKit.counters(rig, f) == before)
        #expect(rig.map.state.pointee.faults == faults, "no call into the driver")
        rig.check()
    }

    @Test("mprotect of a middle part of a 4K-order VMA splits it in three and write-protects only that part")
    func mprotectMiddleSplits() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10)
        for i in 0..<16 { #expect(rig.mm.handleFault(a + UInt64(i) * 4096, write: true) & DAX_VM_FAULT_ERROR == 0) }
        let before = (0..<16).map { VMAKit.counters(rig, rig.folio(pgoff: UInt64($0))) }
        // mprotect(PROT_READ) of the middle 16K splits the VMA in three:
        //
        //   a              a+16K         a+32K          a+64K
        //   [ pgoff 0, RW ][ pgoff 4, R ][ pgoff 8, RW ]
        try rig.mm.mprotect(a + 4 * 4096, 4 * 4096, [.read])
        let vmas = rig.mm.vmaList()
        #expect(vmas.map { $0.pointee.vm_start } == [a, a + 4 * 4096, a + 8 * 4096])
        #expect(vmas.map { $0.pointee.vm_pgoff } == [0, 4, 8])
        #expect(vmas.map { $0.pointee.vm_flags & DAX_VM_WRITE != 0 } == [true, false, true])
        for i in 0..<16 {
            #expect(entryWrite(VMAKit.pte(rig.mm, a + UInt64(i) * 4096)) == !(4..<8).contains(i))
        }
        #expect((0..<16).map { VMAKit.counters(rig, rig.folio(pgoff: UInt64($0))) } == before)
        #expect(rig.mm.handleFault(a + 5 * 4096, write: true) == DAX_VM_FAULT_SIGSEGV)
        rig.check()
    }

    @Test("MAP_FIXED past TASK_SIZE or below mmap_min_addr is -ENOMEM")
    func mapFixedOutsideRange() throws {
        let rig = try FaultRig(order: 0, bytes: 2 << 20)
        var req = MMapRequest(length: 8192)
        req.fixedAddress = MM.taskSize - 4096
        #expect(VMAKit.errno { try rig.mm.mmap(req) } == ENOMEM)
        req.fixedAddress = MM.mmapFloor - 4096
        #expect(VMAKit.errno { try rig.mm.mmap(req) } == ENOMEM)
        #expect(rig.mm.vmaList().isEmpty)
    }

    @Test("mprotect over a range with a hole is -ENOMEM and changes nothing")
    func mprotectHoleIsENOMEM() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10, start: Self.fixedBase)
        _ = try rig.linkVMA(length: 64 << 10, start: Self.fixedBase + (128 << 10))
        #expect(rig.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
        // mprotect over [a, a+192K) spans a hole: -ENOMEM.
        //
        //   a=fixedBase    a+64K     a+128K         a+192K
        //   [ VMA pgoff 0 ] (hole)   [ VMA pgoff 0 ]
        let flags = rig.mm.vmaList().map { $0.pointee.vm_flags }
        #expect(VMAKit.errno { try rig.mm.mprotect(a, 192 << 10, [.read]) } == ENOMEM)
        #expect(VMAKit.errno { try rig.mm.mprotect(a, 192 << 10, [.read, .write]) } == ENOMEM)
        #expect(rig.mm.vmaList().map { $0.pointee.vm_flags } == flags)
        #expect(rig.mm.vmaList().count == 2)
        #expect(entryWrite(VMAKit.pte(rig.mm, a)))
        rig.check()
    }

    @Test("mremap shrink unmaps the tail and drops its references")
    func mremapShrink() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10)
        let pages = VMAKit.pages(16)
        defer { pages.deallocate() }
        #expect(getUserPages(rig.mm.ref, a, 16, [], pages) == 16)
        putUserPages(rig.kernel.ref, pages, 16)
        let fm = rig.kernel.stat(DAX_NR_FILE_MAPPED)
        // Shrink 64K -> 32K in place (before, after):
        //
        //   a              a+32K         a+64K
        //   [ VMA pgoff 0               ]
        //   [ VMA pgoff 0 ] (unmapped)
        #expect(try rig.mm.mremap(a, oldLength: 64 << 10, newLength: 32 << 10, mayMove: false) == a)
        for i in 0..<16 {
            let f = rig.folio(pgoff: UInt64(i))
            #expect(f.refCount == (i < 8 ? 2 : 1) && f.mapcount == (i < 8 ? 1 : 0))
        }
        #expect(rig.mm.rssFilePages == 8)
        #expect(rig.kernel.stat(DAX_NR_FILE_MAPPED) == fm - 8)
        #expect(rig.mm.vmaList().first?.pointee.vm_end == a + (32 << 10))
        rig.check()
    }

    @Test("mremap grows in place when the space above is free; the new part faults from the right file offset")
    func mremapGrowInPlace() throws {
        let (rig, a) = try vmaFixture(length: 32 << 10, start: Self.fixedBase)
        #expect(rig.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0)
        let f0 = rig.folio(pgoff: 0)
        let b0 = VMAKit.counters(rig, f0)
        // Grow 32K -> 64K in place into free space (before, after); the new part
        // faults from its file offset:
        //
        //   a=fixedBase      a+32K  a+48K       a+64K
        //   [ VMA pgoff 0   ]
        //   [ VMA pgoff 0                      ]
        //    page 0 mapped           pgoff 12
        #expect(try rig.mm.mremap(a, oldLength: 32 << 10, newLength: 64 << 10, mayMove: false) == a)
        #expect(rig.mm.vmaList().count == 1)
        #expect(rig.mm.vmaList().first?.pointee.vm_end == a + (64 << 10))
        #expect(VMAKit.counters(rig, f0) == b0)
        #expect(rig.mm.handleFault(a + (48 << 10), write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(entryPfn(VMAKit.pte(rig.mm, a + (48 << 10))) == rig.pgmap.ranges[0].startPfn + 12)
        rig.check()
    }

    @Test("mremap MREMAP_MAYMOVE moves PTEs with their references: same pfns at the new address, old range empty, counters unchanged")
    func mremapMovePtes() throws {
        let (rig, a) = try vmaFixture(length: 32 << 10, start: Self.fixedBase)
        var blocker = MMapRequest(length: 4096)
        blocker.fixedAddress = a + (32 << 10)
        _ = try rig.mm.mmap(blocker)
        for i in 0..<8 { #expect(rig.mm.handleFault(a + UInt64(i) * 4096, write: i % 2 == 0) & DAX_VM_FAULT_ERROR == 0) }
        let folios = (0..<8).map { rig.folio(pgoff: UInt64($0)) }
        let before = folios.map { VMAKit.counters(rig, $0) }
        let oldEntries = (0..<8).map { VMAKit.pte(rig.mm, a + UInt64($0) * 4096) }

        // A blocker right above the VMA forces a move (before, after):
        //
        //   a=fixedBase            a+32K      a+36K
        //   [ VMA pgoff 0, 8 PTEs ][ blocker ]
        //   b                    b+32K                 b+64K
        //   [ VMA pgoff 0                             ]
        //    the 8 PTEs, moved    faults, pgoff 8-15
        // Cannot grow in place; without MAYMOVE that is -ENOMEM and nothing moves.
        #expect(VMAKit.errno { try rig.mm.mremap(a, oldLength: 32 << 10, newLength: 64 << 10, mayMove: false) } == ENOMEM)
        #expect(folios.map { VMAKit.counters(rig, $0) } == before)

        let b = try rig.mm.mremap(a, oldLength: 32 << 10, newLength: 64 << 10, mayMove: true)
        #expect(b != a)
        #expect(folios.map { VMAKit.counters(rig, $0) } == before)
        for i in 0..<8 {
            let e = VMAKit.pte(rig.mm, b + UInt64(i) * 4096)
            #expect(e == oldEntries[i] | PT.softDirty, "the entry moves unchanged but soft-dirty (move_soft_dirty_pte)")
            #expect(entryPfn(e) == rig.pgmap.ranges[0].startPfn + UInt64(i))
            #expect(VMAKit.pte(rig.mm, a + UInt64(i) * 4096) == 0)
        }
        #expect(VMAKit.read(rig.mm) { vmaLookup(rig.mm.ref, a) } == nil)
        let moved = try #require(VMAKit.read(rig.mm) { vmaLookup(rig.mm.ref, b) })
        #expect(moved.pointee.vm_end == b + (64 << 10) && moved.pointee.vm_pgoff == 0)
        rig.check()
        // The grown part faults from the right offset; munmap drops everything.
        #expect(rig.mm.handleFault(b + (40 << 10), write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.folio(pgoff: 10).refCount == 2)
        try rig.mm.munmap(b, 64 << 10)
        for f in folios { #expect(f.refCount == 1 && f.mapcount == 0) }
        #expect(rig.mm.rssFilePages == 0)
        rig.check()
    }

    @Test("mremap MREMAP_MAYMOVE of a PMD/PUD-mapped VMA moves the huge entry whole with its reference and entire mapcount",
          arguments: [9, 18])
    func mremapMoveHuge(order: Int) throws {
        let size = UInt64(4096) << UInt64(order)
        let (rig, a) = try vmaFixture(order: order, bytes: 2 * size, length: size, start: Self.fixedBase)
        let entry = { (x: UInt64) in order == pmdOrder ? VMAKit.pmd(rig.mm, x) : VMAKit.pud(rig.mm, x) }
        var blocker = MMapRequest(length: 4096)
        blocker.fixedAddress = a + size
        _ = try rig.mm.mmap(blocker)
        #expect(rig.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let e0 = entry(a)
        #expect(entryLeaf(e0))
        // The same with one huge entry (size 2M or 1G; before, after):
        //
        //   a=fixedBase                a+size     a+size+4K
        //   [ VMA pgoff 0: f, PMD/PUD ][ blocker ]
        //   b (size aligned)          b+size  b+2*size
        //   [ VMA pgoff 0                    ]
        //    f's entry, moved whole
        let b = try rig.mm.mremap(a, oldLength: size, newLength: 2 * size, mayMove: true)
        #expect(b % size == 0)
        // move_huge_pmd marks the moved PMD soft-dirty (move_soft_dirty_pmd);
        // move_huge_pud moves the PUD as it is.
        #expect(entry(b) == (order == 9 ? e0 | PT.softDirty : e0))
        #expect(entryLeaf(entry(b)) && entryPfn(entry(b)) == rig.pgmap.ranges[0].startPfn)
        #expect(!entryPresent(entry(a)))
        #expect(VMAKit.counters(rig, f) == before)
        #expect(f.entireMapcount == 1)
        rig.check()
        try rig.mm.munmap(b, 2 * size)
        #expect(f.refCount == 1 && f.mapcount == 0 && rig.mm.rssFilePages == 0)
        rig.check()
    }

    @Test("mremap argument errors: unaligned address -EINVAL; a range not inside one VMA -EFAULT; nothing changes")
    func mremapArgumentErrors() throws {
        let (rig, a) = try vmaFixture(length: 32 << 10, start: Self.fixedBase)
        _ = try rig.linkVMA(length: 32 << 10, start: a + (32 << 10), pgoff: 8)
        #expect(rig.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        // Two VMAs back to back: [a, a+64K) is not inside one VMA, and nothing
        // is mapped at fixedBase-1M.
        //
        //   a=fixedBase    a+32K          a+64K
        //   [ VMA pgoff 0 ][ VMA pgoff 8 ]
        #expect(VMAKit.errno { try rig.mm.mremap(a + 1, oldLength: 4096, newLength: 8192, mayMove: true) } == EINVAL)
        #expect(VMAKit.errno { try rig.mm.mremap(a, oldLength: 64 << 10, newLength: 128 << 10, mayMove: true) } == EFAULT)
        #expect(VMAKit.errno { try rig.mm.mremap(Self.fixedBase - (1 << 20), oldLength: 4096, newLength: 8192, mayMove: true) } == EFAULT)
        #expect(VMAKit.errno { try rig.mm.mremap(a, oldLength: 0, newLength: 8192, mayMove: true) } == EINVAL)
        #expect(rig.mm.vmaList().count == 2)
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    @Test("mprotect PROT_WRITE on a VMA without VM_MAYWRITE is -EACCES and changes nothing")
    func mprotectNeedsMayWrite() throws {
        let rig = try FaultRig(order: 0, bytes: 2 << 20)
        var req = rig.map.request(length: 32 << 10, prot: [.read])
        req.mmapHook = { vma in
            vma.pointee.vm_flags &= ~DAX_VM_MAYWRITE
            return 0
        }
        let a = try rig.mm.mmap(req)
        let flags = rig.mm.vmaList().first!.pointee.vm_flags
        #expect(VMAKit.errno { try rig.mm.mprotect(a, 32 << 10, [.read, .write]) } == 13)
        #expect(rig.mm.vmaList().first!.pointee.vm_flags == flags)
        try rig.mm.mprotect(a, 32 << 10, [.read])
        rig.check()
    }

    @Test("mremap cannot grow a VM_DONTEXPAND VMA (-EFAULT), in place or by moving; shrinking is allowed")
    func mremapDontExpand() throws {
        let (rig, a) = try vmaFixture(length: 32 << 10, start: Self.fixedBase, extraFlags: DAX_VM_DONTEXPAND)
        #expect(rig.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        // A VM_DONTEXPAND VMA may shrink but not grow (before, after):
        //
        //   a=fixedBase    a+16K            a+32K        a+64K
        //   [ VMA pgoff 0, VM_DONTEXPAND   ] no growth
        //   [ VMA pgoff 0 ] (unmapped)
        #expect(VMAKit.errno { try rig.mm.mremap(a, oldLength: 32 << 10, newLength: 64 << 10, mayMove: false) } == EFAULT)
        #expect(VMAKit.errno { try rig.mm.mremap(a, oldLength: 32 << 10, newLength: 64 << 10, mayMove: true) } == EFAULT)
        #expect(rig.mm.vmaList().first?.pointee.vm_end == a + (32 << 10))
        #expect(VMAKit.counters(rig, f) == before)
        #expect(try rig.mm.mremap(a, oldLength: 32 << 10, newLength: 16 << 10, mayMove: false) == a)
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }
}
