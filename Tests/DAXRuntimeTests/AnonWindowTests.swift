// Anonymous and private windows: CPU faults on anonymous memory served by
// the port's do_anonymous_page / do_huge_pmd_anonymous_page, with the
// pages coming from the port's page allocator and mapped on the host from
// its memfd; the zero pages map the zero file.

import CDaxMM
import DAXBase
import DAXCore
import DAXDevice
import DAXRuntime
import MMCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Anonymous windows")
struct AnonWindowTests {
    @Test("an anonymous window: a read maps the zero page, a write a new anon page of the port's memory (MM_ANONPAGES 1); the data stays in the page; munmap frees it")
    func anonymousPtes() throws {
        let dev = try EmulatedDevice(size: 8 << 20, align: .pte)
        let b = try Binding(device: dev, mode: .devdax)
        let w = try b.openAnonymousWindow(length: 1 << 20)
        let r = guardedAccess(w.address(0x2000), write: false)
        #expect(r.ok && r.value == 0, "\(r)")
        #expect(b.mirrorStats.zeroMaps == [1, 0, 0])
        #expect(b.mm.rssAnonPages == 0)
        #expect(guardedAccess(w.address(0x3008), write: true, value: 0x5eed).ok)
        #expect(b.mirrorStats.ramMaps == [1, 0, 0])
        #expect(b.mm.rssAnonPages == 1 && b.kernel.ramStats!.allocatedPages == 1)
        #expect(w.pointer.load(fromByteOffset: 0x3008, as: UInt64.self) == 0x5eed)
        let t = try #require(w.translation(0x3000))
        let pfn = t.pfn
        let bytes = try #require(pfnAddress(b.kernel.withUnsafeRecord { $0 }, pfn))
        #expect(bytes.load(fromByteOffset: 8, as: UInt64.self) == 0x5eed, "the port's page holds the bytes the CPU wrote")
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
        w.closeWindow()
        #expect(b.mm.rssAnonPages == 0 && b.kernel.ramStats!.allocatedPages == 0)
        #expect(w.takeReports().isEmpty)
    }

    @Test("an anonymous window with MADV_HUGEPAGE: a read maps the huge zero folio, a write a PMD THP from the port's memory")
    func anonymousThp() throws {
        let dev = try EmulatedDevice(size: 8 << 20, align: .pte)
        let b = try Binding(device: dev, mode: .devdax)
        let w = try b.openAnonymousWindow(length: 8 << 20, hugepage: true)
        #expect(guardedAccess(w.address(0x10), write: false).ok)
        #expect(b.mirrorStats.zeroMaps == [0, 1, 0])
        #expect(guardedAccess(w.address(UInt64(pmdSize) + 0x10), write: true, value: 7).ok)
        #expect(b.mirrorStats.ramMaps == [0, 1, 0])
        #expect(b.mm.rssAnonPages == Int64(hpagePmdNr))
        #expect(w.pointer.load(fromByteOffset: pmdSize + 0x10, as: UInt64.self) == 7)
        #expect(b.kernel.stat(DAX_NR_ANON_THPS) == Int64(hpagePmdNr))
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
        w.closeWindow()
        #expect(b.kernel.ramStats!.allocatedPages == 0)
    }
}

@Suite("Private fs-dax windows")
struct PrivateWindowTests {
    @Test("MAP_PRIVATE of an fs-dax file: a read maps the file's block read-only from the device; the write copies it into a page of the port's memory (do_wp_page -> wp_page_copy: MM_FILEPAGES -1, MM_ANONPAGES +1) with the file's bytes, the file keeps its data; a write to a hole copies zeroes (dax_fault_cow_page)")
    func privateCopyOnWrite() throws {
        let dev = try EmulatedDevice(size: 32 << 20, align: .pte)
        let b = try Binding(device: dev, mode: .fsdax, fileSize: 4 << 20)
        let file = try #require(b.file)
        let shared = try b.openWindow(length: 4 << 20)
        #expect(guardedAccess(shared.address(4096 * 3 + 8), write: true, value: 0xf11e).ok)
        let block = try #require(file.block(at: 3))
        let priv = try b.openPrivateWindow(length: 4 << 20)
        let r = guardedAccess(priv.address(4096 * 3 + 8), write: false)
        #expect(r.ok && r.value == 0xf11e, "\(r)")
        let t0 = try #require(priv.translation(4096 * 3))
        #expect(t0.pfn == (dev.ranges[0].range.start >> 12) + block && !t0.writable, "the file's block, read-only")
        let file0 = b.mm.rssFilePages, anon0 = b.mm.rssAnonPages
        #expect(guardedAccess(priv.address(4096 * 3 + 16), write: true, value: 0xc0ffee).ok)
        let t1 = try #require(priv.translation(4096 * 3))
        let ram = try #require(b.kernel.ramRange)
        #expect(t1.pfn >= ram.startPfn && t1.pfn < ram.endPfn && t1.writable, "a page of the port's memory now")
        // A private read of a PMD-aligned extent maps a PMD (dax_iomap_pmd_fault
        // falls back only for writes); the write splits it (wp_huge_pmd in a
        // private mapping: __split_huge_pmd, for DAX an unmap) and copies
        // the one page.
        let filePages: Int64 = t0.level == .pmd ? Int64(hpagePmdNr) : 1
        #expect(b.mm.rssFilePages == file0 - filePages && b.mm.rssAnonPages == anon0 + 1,
                "MM_FILEPAGES \(file0) -> \(b.mm.rssFilePages), MM_ANONPAGES \(anon0) -> \(b.mm.rssAnonPages)")
        #expect(priv.pointer.load(fromByteOffset: 4096 * 3 + 8, as: UInt64.self) == 0xf11e, "the copy has the file's bytes")
        #expect(priv.pointer.load(fromByteOffset: 4096 * 3 + 16, as: UInt64.self) == 0xc0ffee)
        #expect(try deviceWord(dev, offset: block * 4096 + 16) == 0, "the file's block is untouched")
        #expect(shared.pointer.load(fromByteOffset: 4096 * 3 + 16, as: UInt64.self) == 0)
        #expect(b.mirrorStats.ramMaps[0] >= 1)
        // A hole: do_cow_fault -> dax_fault_cow_page clears the copy.
        #expect(file.block(at: 700) == nil, "page 700 is a hole")
        #expect(guardedAccess(priv.address(4096 * 700), write: true, value: 7).ok)
        #expect(file.block(at: 700) == nil, "no block allocated for a private write")
        #expect(priv.pointer.load(fromByteOffset: 4096 * 700 + 8, as: UInt64.self) == 0)
        #expect(priv.pointer.load(fromByteOffset: 4096 * 700, as: UInt64.self) == 7)
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
        priv.closeWindow()
        shared.closeWindow()
        #expect(b.kernel.ramStats!.allocatedPages == 0 && b.mm.rssAnonPages == 0)
    }

    @Test("device-dax refuses a private window as check_vma refuses MAP_PRIVATE (-EINVAL)")
    func devdaxPrivateRefused() throws {
        let dev = try EmulatedDevice(size: 8 << 20, align: .pte)
        let b = try Binding(device: dev, mode: .devdax)
        #expect(throws: RuntimeError.self) { try b.openPrivateWindow(length: 1 << 20) }
        #expect(b.mm.vmaList().isEmpty)
    }
}
