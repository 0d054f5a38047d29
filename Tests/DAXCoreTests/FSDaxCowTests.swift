// MAP_PRIVATE fs-dax: do_cow_fault with fs/dax.c's dax_fault_cow_page, the
// read-only file page a private read maps and its wp_page_copy, and
// unmap_mapping_range's even_cows rule for the anon copies.

import CDaxMM
import DAXBase
import Foundation
import Testing
@testable import DAXCore
@testable import MMCore
import MMTestChecks

@Suite("fs-dax MAP_PRIVATE: copy-on-write")
struct FSDaxCowTests {
    /// The rig with the device's bytes in the port's direct map.
    final class Bytes {
        let base: UnsafeMutableRawPointer
        let range: PhysicalRange
        let kernel: Kernel
        init(_ rig: FSRig, start: UInt64 = 0x8000_0000, size: UInt64 = 16 << 20) throws {
            base = UnsafeMutableRawPointer.allocate(byteCount: Int(size), alignment: pageSize)
            memset(base, 0, Int(size))
            range = PhysicalRange(start: start, size: size)
            kernel = rig.kernel
            try rig.kernel.registerDirectMap(range: range, bytes: base)
        }
        deinit {
            kernel.unregisterDirectMap(range: range)
            base.deallocate()
        }
        func at(_ pfn: UInt64) -> UnsafeMutablePointer<UInt8> {
            pfnAddress(kernel.ref, pfn)!.assumingMemoryBound(to: UInt8.self)
        }
    }

    static func pte(_ mm: MM, _ a: UInt64) -> PTEntry {
        mm.lockRead(); defer { mm.unlockRead() }
        return walk(mm.ref, a).pte.map { dax_load_u64($0) } ?? 0
    }

    @Test("do_cow_fault + dax_fault_cow_page: a private write to a written block copies it into a new exclusive anon page (VM_FAULT_DONE_COW, MM_ANONPAGES 1, MM_FILEPAGES 0, NR_ANON_MAPPED +1, no DAX entry, the file folio untouched); the file keeps its bytes")
    func cowFaultMapped() throws {
        let rig = try FSRig()
        let bytes = try Bytes(rig)
        let f = try rig.fs.create(name: "p", maxSize: 4 << 20)
        try f.allocate(pgoff: 0, pages: 16)
        let blockPfn = pageToPfn(rig.kernel.ref, try #require(f.folio(at: 3)).head)
        bytes.at(blockPfn)[5] = 0xab
        let addr = try rig.mm.mmap(f.mmapRequest(length: 64 << 10, shared: false))
        let anon0 = rig.kernel.stat(DAX_NR_ANON_MAPPED), file0 = rig.kernel.stat(DAX_NR_FILE_MAPPED)
        let alloc0 = rig.kernel.ramStats!.allocatedPages
        let ret = rig.mm.handleFault(addr + 3 * 4096, write: true)
        #expect(ret & DAX_VM_FAULT_ERROR == 0 && ret & DAX_VM_FAULT_DONE_COW != 0)
        let e = Self.pte(rig.mm, addr + 3 * 4096)
        #expect(entryWrite(e) && entryDirty(e) && entryPfn(e) != blockPfn)
        let page = pfnToPage(rig.kernel.ref, entryPfn(e))
        #expect(page.folio.isAnon && page.isAnonExclusive && page.folio.refCount == 1 && page.folio.mapcount == 1)
        #expect(bytes.at(entryPfn(e))[5] == 0xab)
        bytes.at(entryPfn(e))[5] = 0x11
        #expect(bytes.at(blockPfn)[5] == 0xab, "the file is not written")
        #expect(rig.mm.rssAnonPages == 1 && rig.mm.rssFilePages == 0)
        #expect(rig.kernel.stat(DAX_NR_ANON_MAPPED) == anon0 + 1 && rig.kernel.stat(DAX_NR_FILE_MAPPED) == file0)
        #expect(rig.kernel.ramStats!.allocatedPages == alloc0 + 1)
        #expect(!DaxEntry.isReal(f.entry(at: 3)), "no DAX entry is inserted for the copy (grab_mapping_entry's empty one stays)")
        let ff = try #require(f.folio(at: 3))
        #expect(ff.refCount == 0 && ff.mapcount == 0)
        try rig.mm.munmap(addr, 64 << 10)
        #expect(rig.kernel.ramStats!.allocatedPages == alloc0 && rig.mm.rssAnonPages == 0)
        #expect(rig.kernel.drainReports().isEmpty)
    }

    @Test("dax_fault_cow_page on a hole: the cow page is cleared, no block is allocated (no IOMAP_WRITE), MM_ANONPAGES 1")
    func cowFaultHole() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "h", maxSize: 4 << 20)
        try f.extend(to: 4 << 20)
        let free0 = rig.fs.freeBlocks
        let addr = try rig.mm.mmap(f.mmapRequest(length: 64 << 10, shared: false))
        let ret = rig.mm.handleFault(addr, write: true)
        #expect(ret & DAX_VM_FAULT_ERROR == 0 && ret & DAX_VM_FAULT_MAJOR == 0)
        let e = Self.pte(rig.mm, addr)
        let p = pfnAddress(rig.kernel.ref, entryPfn(e))!.assumingMemoryBound(to: UInt8.self)
        #expect((0..<pageSize).allSatisfy { p[$0] == 0 })
        #expect(rig.fs.freeBlocks == free0 && f.block(at: 0) == nil)
        #expect(rig.mm.rssAnonPages == 1 && rig.mm.rssFilePages == 0)
        #expect(rig.kernel.drainReports().isEmpty)
    }

    @Test("a private read maps the file page read-only (MM_FILEPAGES 1, refcount 1, mapcount 1); the write that follows goes do_wp_page -> wp_page_copy: MM_FILEPAGES -1, MM_ANONPAGES +1, NR_FILE_MAPPED -1, NR_ANON_MAPPED +1, the fs-dax folio idle again (refcount 0, mapcount 0), the copy has the block's bytes")
    func readThenWrite() throws {
        let rig = try FSRig()
        let bytes = try Bytes(rig)
        let f = try rig.fs.create(name: "r", maxSize: 4 << 20)
        try f.allocate(pgoff: 0, pages: 16)
        let addr = try rig.mm.mmap(f.mmapRequest(length: 64 << 10, shared: false))
        #expect(rig.mm.handleFault(addr + 4096, write: false) & DAX_VM_FAULT_ERROR == 0)
        let folio = try #require(f.folio(at: 1))
        let fpfn = pageToPfn(rig.kernel.ref, folio.head)
        bytes.at(fpfn)[0] = 0x42
        let r = Self.pte(rig.mm, addr + 4096)
        #expect(entryPfn(r) == fpfn && !entryWrite(r))
        #expect(folio.refCount == 1 && folio.mapcount == 1 && rig.mm.rssFilePages == 1)
        rig.check()
        let anon0 = rig.kernel.stat(DAX_NR_ANON_MAPPED), file0 = rig.kernel.stat(DAX_NR_FILE_MAPPED)
        #expect(rig.mm.handleFault(addr + 4096, write: true) & DAX_VM_FAULT_ERROR == 0)
        let w = Self.pte(rig.mm, addr + 4096)
        #expect(entryPfn(w) != fpfn && entryWrite(w) && bytes.at(entryPfn(w))[0] == 0x42)
        #expect(pfnToPage(rig.kernel.ref, entryPfn(w)).isAnonExclusive)
        #expect(rig.mm.rssFilePages == 0 && rig.mm.rssAnonPages == 1)
        #expect(rig.kernel.stat(DAX_NR_FILE_MAPPED) == file0 - 1 && rig.kernel.stat(DAX_NR_ANON_MAPPED) == anon0 + 1)
        #expect(folio.refCount == 0 && folio.mapcount == 0)
        #expect(rig.kernel.drainReports().isEmpty)
    }

    @Test("zap_details.even_cows: dax_break_layout's unmap (even_cows false) zaps the file pages of a private mapping and keeps its anon copies; unmap_mapping_range with even_cows true zaps both")
    func evenCows() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "e", maxSize: 4 << 20)
        try f.allocate(pgoff: 0, pages: 16)
        let addr = try rig.mm.mmap(f.mmapRequest(length: 64 << 10, shared: false))
        #expect(rig.mm.handleFault(addr, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.mm.handleFault(addr + 4096, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.mm.rssFilePages == 1 && rig.mm.rssAnonPages == 1)
        try f.breakLayout()
        #expect(Self.pte(rig.mm, addr) == 0, "the file page is unmapped")
        #expect(entryPresent(Self.pte(rig.mm, addr + 4096)), "the COW copy stays")
        #expect(rig.mm.rssFilePages == 0 && rig.mm.rssAnonPages == 1)
        rig.mm.lockRead()
        unmapMappingRange(f.file.ref, holebegin: 0, holelen: 0, evenCows: false)
        rig.mm.unlockRead()
        #expect(rig.mm.rssAnonPages == 1)
        rig.mm.lockRead()
        unmapMappingRange(f.file.ref, holebegin: 0, holelen: 0, evenCows: true)
        rig.mm.unlockRead()
        #expect(Self.pte(rig.mm, addr + 4096) == 0 && rig.mm.rssAnonPages == 0)
        #expect(rig.kernel.ramStats!.allocatedPages == 0)
        rig.check()
        #expect(rig.kernel.drainReports().isEmpty)
    }

    @Test("truncate_pagecache unmaps with even_cows: a truncate drops the private COW copies past the new end (MM_ANONPAGES back to 0, the page freed) and keeps those before it")
    func truncateDropsCows() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "t", maxSize: 4 << 20)
        try f.allocate(pgoff: 0, pages: 16)
        let addr = try rig.mm.mmap(f.mmapRequest(length: 64 << 10, shared: false))
        #expect(rig.mm.handleFault(addr, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.mm.handleFault(addr + 8 * 4096, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.mm.rssAnonPages == 2 && rig.kernel.ramStats!.allocatedPages == 2)
        try f.truncate(to: 4 * 4096)
        #expect(Self.pte(rig.mm, addr + 8 * 4096) == 0 && entryPresent(Self.pte(rig.mm, addr)))
        #expect(rig.mm.rssAnonPages == 1 && rig.kernel.ramStats!.allocatedPages == 1)
        #expect(rig.mm.handleFault(addr + 8 * 4096, write: false) == DAX_VM_FAULT_SIGBUS, "past the end")
        #expect(rig.kernel.drainReports().isEmpty)
    }

    @Test("fork of a private fs-dax mapping with a COW copy: the anon page is shared read-only (refcount 2), the file page gets a reference and a mapcount (MM_FILEPAGES 1 in the child); a child write copies again")
    func forkPrivateFsdax() throws {
        let rig = try FSRig()
        let bytes = try Bytes(rig)
        let f = try rig.fs.create(name: "k", maxSize: 4 << 20)
        try f.allocate(pgoff: 0, pages: 16)
        let addr = try rig.mm.mmap(f.mmapRequest(length: 64 << 10, shared: false))
        #expect(rig.mm.handleFault(addr, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.mm.handleFault(addr + 4096, write: true) & DAX_VM_FAULT_ERROR == 0)
        let ff = try #require(f.folio(at: 0))
        let anonPfn = entryPfn(Self.pte(rig.mm, addr + 4096))
        bytes.at(anonPfn)[3] = 0x3c
        let c = try rig.mm.fork()
        #expect(ff.refCount == 2 && ff.mapcount == 2 && c.rssFilePages == 1 && c.rssAnonPages == 1)
        let anon = pfnToPage(rig.kernel.ref, anonPfn).folio
        #expect(anon.refCount == 2 && anon.mapcount == 2 && !anon.head.isAnonExclusive)
        #expect(c.handleFault(addr + 4096, write: true) & DAX_VM_FAULT_ERROR == 0)
        let ce = Self.pte(c, addr + 4096)
        #expect(entryPfn(ce) != anonPfn && bytes.at(entryPfn(ce))[3] == 0x3c)
        #expect(anon.refCount == 1 && anon.mapcount == 1)
        try c.munmap(addr, 64 << 10)
        #expect(ff.refCount == 1 && ff.mapcount == 1)
        #expect(rig.kernel.drainReports().isEmpty)
    }
}
