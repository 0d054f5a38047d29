import CDaxMM
import DAXBase
import Dispatch
import Foundation
import Testing
@testable import DAXCore
@testable import MMCore
import MMTestChecks
import MMTestSupport

/// One kernel, an ExtentFS of `size` bytes of fs-dax memory at `start`, and
/// an empty MM.
struct FSRig: InvariantRig {
    let kernel: Kernel
    let fs: DaxFS
    let mm: MM

    init(size: UInt64 = 16 << 20, start: UInt64 = 0x8000_0000) throws {
        kernel = try Kernel(physBits: 40)
        fs = try DaxFS(kernel: kernel, start: start, size: size)
        mm = try MM(kernel: kernel)
    }

    var pgmaps: [DevPagemap] { [fs.pgmap] }
}

@Suite("fs-dax (fs/dax.c and the fs-dax folio life cycle)")
struct FSDaxTests {
    /// Free -> Assoc(0) -> Mapped -> unmapped (idle, still associated) ->
    /// layout broken (entry deleted, unassociated, Free).
    @Test("PTE fault on a hole: allocate, associate, map with net +1; unmap to 0; break layout to Free")
    func pteLifecycle() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "a", maxSize: 4 << 20)
        try f.extend(to: 4 << 20)
        // 64 KiB: smaller than a PMD, so the fault walk falls back to PTEs.
        let addr = try rig.mm.mmap(f.mmapRequest(length: 64 << 10))
        #expect(f.nrpages == 0)
        let ret = rig.mm.handleFault(addr + 4096 * 5, write: true)
        #expect(ret & DAX_VM_FAULT_ERROR == 0)
        #expect(ret & DAX_VM_FAULT_MAJOR != 0, "a new block is a major fault")
        let folio = try #require(f.folio(at: 5))
        #expect(folio.refCount == 1, "0 -> 1 (temporary) -> 2 (insert) -> 1 (put)")
        #expect(folio.mapcount == 1)
        #expect(folio.mapping == f.file.mapping)
        #expect(folio.index == 5)
        #expect(f.nrpages == 1)
        #expect(DaxEntry.isReal(f.entry(at: 5)))
        #expect(DaxEntry.pfn(f.entry(at: 5)) == pageToPfn(rig.kernel.ref, folio.head))
        #expect(f.mapping.pointee.marks[5] & DaxMark.dirty != 0)
        rig.check()
        // Unmap: the entry holds no reference (invariant 4 in
        // MMCore/Invariants.swift), so the folio is idle.
        try rig.mm.munmap(addr, 64 << 10)
        #expect(folio.refCount == 0 && folio.mapcount == 0)
        #expect(folio.mapping == f.file.mapping, "still associated")
        #expect(f.nrpages == 1)
        #expect(daxBusyPage(rig.kernel.ref, f.entry(at: 5)) == nil)
        try f.breakLayout()
        #expect(f.nrpages == 0 && f.entry(at: 5) == 0)
        // dax_folio_put clears mapping; an order-0 folio keeps its index.
        #expect(folio.mapping == 0 && folio.index == 5 && folio.refCount == 0)
        rig.check()
    }

    @Test("PMD fault: the folio is built order 9 on association and split back on the last put")
    func pmdLifecycle() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "big", maxSize: 8 << 20)
        try f.allocate(pgoff: 0, pages: 1024)
        let addr = try rig.mm.mmap(f.mmapRequest(length: 8 << 20))
        let head = try #require(f.folio(at: 0))
        #expect(!head.isLarge)
        #expect(rig.mm.handleFault(addr + 12345, write: false) & DAX_VM_FAULT_ERROR == 0)
        let folio = head.head.folio
        #expect(folio.isLarge && folio.order == 9)
        #expect(folio.refCount == 1 && folio.mapcount == 1 && folio.entireMapcount == 1)
        #expect(DaxEntry.isPMD(f.entry(at: 100)))
        #expect(f.nrpages == 512)
        #expect(walk(rig.mm.ref, addr).pmd.map { entryLeaf($0.pointee) } == true)
        #expect(rig.mm.rssFilePages == 512)
        rig.check()
        try f.breakLayout()   // unmaps, waits for idle, deletes
        #expect(rig.mm.rssFilePages == 0)
        #expect(!head.isLarge && head.mapping == 0)
        for i in 0..<512 { #expect(head.head.advanced(by: i).refcountRaw == 0 && !head.head.advanced(by: i).isTail) }
        rig.check()
    }

    @Test("a PTE fault inside a real PMD entry maps a page of the PMD folio")
    func pteInsidePmd() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "mix", maxSize: 4 << 20)
        try f.allocate(pgoff: 0, pages: 512)
        let a1 = try rig.mm.mmap(f.mmapRequest(length: 2 << 20))
        #expect(rig.mm.handleFault(a1, write: true) & DAX_VM_FAULT_ERROR == 0)
        // A second, misaligned-colour mapping of the same pages faults at PTE level.
        let a2 = try rig.mm.mmap(f.mmapRequest(length: 4096, pgoff: 7))
        #expect(rig.mm.handleFault(a2, write: false) & DAX_VM_FAULT_ERROR == 0)
        let folio = try #require(f.folio(at: 0)).head.folio
        #expect(folio.order == 9)
        #expect(folio.mapcount == 2 && folio.entireMapcount == 1)
        #expect(folio.page(7).pageMapcount == 1)
        #expect(folio.refCount == 2)
        rig.check()
    }

    @Test("read of a hole maps the zero page; a write replaces the zero entry and unmaps it")
    func holeThenWrite() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "h", maxSize: 2 << 20)
        try f.extend(to: 2 << 20)
        let addr = try rig.mm.mmap(f.mmapRequest(length: 2 << 20))
        #expect(rig.mm.handleFault(addr, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(DaxEntry.isZero(f.entry(at: 0)))
        let pte = try #require(walk(rig.mm.ref, addr).pte).pointee
        #expect(entrySpecial(pte) && entryPfn(pte) == 0)
        #expect(f.block(at: 0) == nil)
        #expect(rig.mm.rssFilePages == 0)
        #expect(rig.mm.handleFault(addr, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(DaxEntry.isReal(f.entry(at: 0)))
        let folio = try #require(f.folio(at: 0))
        #expect(folio.refCount == 1 && folio.mapcount == 1)
        let pte2 = try #require(walk(rig.mm.ref, addr).pte).pointee
        #expect(!entrySpecial(pte2) && entryWrite(pte2))
        rig.check()
    }

    /// The pre-series PMD insert (dax_insert_pfn_pmd) took folio_get on an idle
    /// fs-dax folio at refcount 0.
    @Test("seed bug: pre-series PMD insert trips folio_get at refcount 0; the fixed path does not")
    func seedBugPmd() throws {
        for legacy in [true, false] {
            let rig = try FSRig()
            if legacy { rig.kernel.mode |= DAX_MODE_LEGACY_PRE_SERIES.rawValue }
            let f = try rig.fs.create(name: "image", maxSize: 32 << 20)
            try f.allocate(pgoff: 0x5800 % 4096, pages: 512)
            let pgoff = UInt64(0x5800 % 4096)
            let addr = try rig.mm.mmap(f.mmapRequest(length: 2 << 20, pgoff: pgoff))
            let ret = rig.mm.handleFault(addr, write: true)
            let reports = rig.kernel.drainReports()
            let folio = try #require(f.folio(at: pgoff)).head.folio
            if legacy {
                #expect(ret == DAX_VM_FAULT_SIGBUS)
                #expect(reports.count == 1)
                let d = try #require(reports.first)
                #expect(d.refcount == 0 && d.mapcount == 0)
                #expect(d.order == 9)
                #expect(d.mapping == f.file.mapping)
                #expect(d.index == pgoff)
                #expect(d.flagNames.contains("reserved") && d.flagNames.contains("head"))
                #expect(d.rule.contains("folio_ref_count(folio) + 127u <= 127u"))
                #expect(d.function == "folio_get")
                #expect(d.description.hasPrefix("page: refcount:0 mapcount:0 mapping:"))
                #expect(d.description.contains("order:9"))
                #expect(d.description.contains("page dumped because: VM_BUG_ON_FOLIO"))
                #expect(folio.refCount == 0 && folio.mapcount == 0, "nothing mapped, nothing leaked")
            } else {
                #expect(ret & DAX_VM_FAULT_ERROR == 0)
                #expect(reports.isEmpty)
                #expect(folio.refCount == 1 && folio.mapcount == 1)
            }
        }
    }

    @Test("seed bug, PTE: a refcount-0 folio is refused by validate_page_before_insert (-EINVAL -> SIGBUS)")
    func seedBugPte() throws {
        let rig = try FSRig()
        rig.kernel.mode |= DAX_MODE_LEGACY_PRE_SERIES.rawValue
        let f = try rig.fs.create(name: "p", maxSize: 2 << 20)
        try f.allocate(pgoff: 3, pages: 1)
        let addr = try rig.mm.mmap(f.mmapRequest(length: 2 << 20))
        #expect(rig.mm.handleFault(addr + 3 * 4096, write: false) == DAX_VM_FAULT_SIGBUS)
        #expect(rig.kernel.drainReports().isEmpty, "a PTE insert refuses quietly; no BUG")
        let folio = try #require(f.folio(at: 3))
        #expect(folio.refCount == 0 && folio.mapcount == 0)
        #expect(rig.mm.rssFilePages == 0)
    }

    @Test("FOLL_LONGTERM on fs-dax: -EOPNOTSUPP and no counter changed; a plain pin works and makes the page busy")
    func pins() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "pin", maxSize: 2 << 20)
        try f.allocate(pgoff: 0, pages: 4)
        let addr = try rig.mm.mmap(f.mmapRequest(length: 2 << 20))
        #expect(rig.mm.handleFault(addr, write: true) & DAX_VM_FAULT_ERROR == 0)
        let folio = try #require(f.folio(at: 0))
        let before = (folio.refCount, folio.mapcount, rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED))
        for fast in [false, true] {
            #expect(throws: MMError.errno(EOPNOTSUPP, "pin_user_pages\(fast ? "_fast" : "")(\(hex(addr)), 1) failed")) {
                try rig.mm.pinPages(addr, count: 1, flags: [.write, .longterm], fast: fast)
            }
        }
        #expect((folio.refCount, folio.mapcount, rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED)) == before)
        let pages = try rig.mm.pinPages(addr, count: 1, flags: [.write])
        #expect(folio.refCount == 1 + 1024)
        #expect(daxLayoutBusyPageRange(f.mapping, 0, 3) == folio.head)
        #expect(folio.mapcount == 0, "the busy scan unmapped it first")
        rig.mm.unpin(pages)
        #expect(folio.refCount == 0)
        rig.check()
    }

    /// dax_break_layout with free_zone_device_folio's wake-up: a pinned page
    /// blocks the break until another thread unpins; with a timeout it reports
    /// pfn, refcount and pincount.
    /// Without one it waits like the kernel, until free_zone_device_folio
    /// wakes it: the test checks the waiter is asleep before it unpins, and
    /// that the page is idle before it joins, so no sleep length decides.
    @Test("dax_break_layout waits for a pinned page; times out naming it; completes after unpin")
    func breakLayoutWaits() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "w", maxSize: 4 << 20)
        try f.allocate(pgoff: 0, pages: 512)
        let addr = try rig.mm.mmap(f.mmapRequest(length: 2 << 20))
        let pages = try rig.mm.pinPages(addr, count: 2, flags: [.write])
        let folio = pages[0].folio
        #expect(folio.order == 9 && folio.pincount == 2 && folio.refCount == 1 + 2)
        do {
            try f.breakLayout(timeoutNanos: 50_000_000)
            Issue.record("break_layout returned with a pinned page")
        } catch {
            #expect(error == .busy(file: "w", pfn: pageToPfn(rig.kernel.ref, folio.head), refcount: 2, pincount: 2))
            #expect(error.description.contains("refcount 2, pincount 2"))
        }
        #expect(f.nrpages == 512, "entries stay when the break fails")
        let done = Locked(false)
        let finished = DispatchSemaphore(value: 0)
        let worker = Thread {
            // No deadline: dax_break_layout sleeps until the page is idle.
            do { try f.breakLayout(timeoutNanos: -1) } catch { Issue.record("\(error)") }
            done.withLock { $0 = true }
            finished.signal()
        }
        worker.start()
        waitUntilAsleep(rig.kernel.ref, on: UnsafeRawPointer(folio.raw), orUntil: { done.withLock { $0 } })
        #expect(done.withLock { $0 } == false, "blocked while pinned")
        rig.mm.unpin(pages)
        // The last pin's put idles the folio and wakes the waiter; only then
        // is joining it sure to end.
        #expect(folio.refCount == 0, "the unpin left the folio idle")
        if folio.refCount != 0 { folio.setCount(0); wakeUpVar(rig.kernel.ref, folio.raw) }   // after a failure: release the waiter
        finished.wait()
        #expect(done.withLock { $0 })
        #expect(f.nrpages == 0 && folio.refCount == 0 && !folio.isLarge)
        rig.check()
    }

    @Test("truncate breaks layouts first; a file system that does not gets the truncate WARN")
    func truncateRules() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "t", maxSize: 4 << 20)
        try f.allocate(pgoff: 0, pages: 16)
        let free0 = rig.fs.freeBlocks
        let addr = try rig.mm.mmap(f.mmapRequest(length: 2 << 20))
        for i in 0..<16 { #expect(rig.mm.handleFault(addr + UInt64(i) * 4096, write: true) & DAX_VM_FAULT_ERROR == 0) }
        #expect(f.nrpages == 16 && rig.mm.rssFilePages == 16)
        try f.truncate(to: 8 * 4096)
        // ext4/XFS break the whole inode's layout (dax_break_layout_inode):
        // every mapping of the file is zapped and every entry deleted.
        #expect(f.nrpages == 0 && rig.mm.rssFilePages == 0)
        #expect(rig.fs.freeBlocks == free0 + 8)
        #expect(rig.mm.handleFault(addr + 9 * 4096, write: false) == DAX_VM_FAULT_SIGBUS, "beyond EOF")
        rig.check()
        for i in 0..<8 { #expect(rig.mm.handleFault(addr + UInt64(i) * 4096, write: true) & DAX_VM_FAULT_ERROR == 0) }
        #expect(f.nrpages == 8 && rig.mm.rssFilePages == 8)
        f.truncateWithoutBreakingLayouts(to: 4 * 4096)
        let r = rig.kernel.drainReports()
        #expect(r.count == 4)
        #expect(r.allSatisfy { $0.function == "truncate_folio_batch_exceptionals" }, "\(r.map(\.description))")
        #expect(f.nrpages == 4)
        rig.check()
    }

    @Test("reflink: shared association counts share; CoW write replaces the entry")
    func reflinkShare() throws {
        let rig = try FSRig()
        let a = try rig.fs.create(name: "a", maxSize: 2 << 20)
        let b = try rig.fs.create(name: "b", maxSize: 2 << 20)
        try a.allocate(pgoff: 0, pages: 4)
        let ma = try rig.mm.mmap(a.mmapRequest(length: 2 << 20))
        #expect(rig.mm.handleFault(ma, write: false) & DAX_VM_FAULT_ERROR == 0)
        let folio = try #require(a.folio(at: 0))
        #expect(folio.mapping == a.file.mapping)
        try b.reflink(from: a, srcPgoff: 0, dstPgoff: 0, pages: 4)
        #expect(a.nrpages == 0, "reflink broke a's layout")
        #expect(folio.mapping == 0 && folio.share == 0 && folio.refCount == 0)
        let mb = try rig.mm.mmap(b.mmapRequest(length: 2 << 20))
        #expect(rig.mm.handleFault(ma, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(folio.mapping == a.file.mapping, "first association is a plain one")
        #expect(rig.mm.handleFault(mb, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(folio.mapping == 0 && folio.share == 2, "made shared: mapping NULL, share 2")
        #expect(folio.refCount == 2 && folio.mapcount == 2)
        rig.check()
        // CoW write in b: a new block, b's old association dropped (share 1).
        #expect(rig.mm.handleFault(mb, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(b.block(at: 0) != a.block(at: 0))
        #expect(folio.share == 1 && folio.refCount == 1 && folio.mapcount == 1)
        let nf = try #require(b.folio(at: 0))
        #expect(nf.mapping == b.file.mapping && nf.refCount == 1)
        try a.breakLayout()
        #expect(folio.share == 0 && folio.mapping == 0 && folio.refCount == 0)
        rig.check()
    }

    @Test("MAP_SYNC: a write fault needing a metadata sync returns NEEDDSYNC to the fs, which syncs then maps")
    func mapSync() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "s", maxSize: 2 << 20)
        try f.extend(to: 2 << 20)
        let addr = try rig.mm.mmap(f.mmapRequest(length: 2 << 20, sync: true))
        let syncs = rig.fs.syncs
        // Call the inner handler directly to see VM_FAULT_NEEDDSYNC.
        rig.mm.lockRead()
        let vma = vmaLookup(rig.mm.ref, addr)!
        var vmf = dax_vm_fault()
        vmf.vma = vma
        vmf.address = addr
        vmf.pgoff = linearPageIndex(vma, addr)
        vmf.flags = DAX_FAULT_FLAG_WRITE
        let inner = withUnsafeMutablePointer(to: &vmf) { daxIomapPteFault($0) }
        rig.mm.unlockRead()
        #expect(inner & DAX_VM_FAULT_NEEDDSYNC != 0)
        #expect(walk(rig.mm.ref, addr).pte.map { entryPresent($0.pointee) } != true, "nothing mapped before the sync")
        // Through the fault path the fs syncs and finishes the fault.
        #expect(rig.mm.handleFault(addr, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.fs.syncs == syncs + 1)
        let pte = try #require(walk(rig.mm.ref, addr).pte).pointee
        #expect(entryPresent(pte) && entryWrite(pte) && entryDirty(pte))
        #expect(f.mapping.pointee.marks[0] & DaxMark.dirty != 0)
        #expect(try #require(f.folio(at: 0)).refCount == 1)
        rig.check()
    }

    @Test("unmount waits for every page to go idle")
    func unmountWaits() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "u", maxSize: 2 << 20)
        try f.allocate(pgoff: 0, pages: 2)
        let addr = try rig.mm.mmap(f.mmapRequest(length: 2 << 20))
        let pages = try rig.mm.getPages(addr + 4096, count: 1, flags: [])
        #expect(throws: FSError.self) { try rig.fs.unmount(timeoutNanos: 20_000_000) }
        #expect(rig.fs.mounted)
        rig.mm.put(pages)
        try rig.fs.unmount()
        #expect(!rig.fs.mounted && f.nrpages == 0)
        #expect(throws: FSError.errno(EIO, "file system is unmounted")) { try rig.fs.create(name: "x", maxSize: 4096) }
        rig.check()
    }
}

import Synchronization
