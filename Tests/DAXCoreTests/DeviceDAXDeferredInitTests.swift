// device-dax over terabytes (drivers/dax/device.c: dev_dax_probe,
// dev_dax_huge_fault) with deferred struct-page init (mm/mm_init.c:
// memmap_init_zone_device, deferred_grow_zone): binding initialises no struct
// page, a fault initialises the sections of the folio it maps and leaves the
// counters eager init leaves; and kill_dax's synchronize_srcu(&dax_srcu)
// (drivers/dax/super.c) against faults racing with removal.

import CDaxMM
import DAXBase
import Dispatch
import Foundation
import Synchronization
import Testing
@testable import DAXCore
@testable import MMCore
import MMTestChecks
import MMTestSupport

#if canImport(Glibc)
import Glibc
#endif

private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30
private let TiB: UInt64 = 1 << 40
private let pps = UInt64(pagesPerSection)

/// What a fault leaves behind, as eager init would leave it.
private struct FaultCounters: Equatable {
    var ret: UInt32
    var refCount: Int32
    var mapcount: Int32
    var entireMapcount: Int32
    var order: Int
    var mappingIsFile: Bool
    var rss: Int64
    var fileMapped: Int64
    var filePmdMapped: Int64
}

/// Probes a device over `range` with `align`, maps `align` bytes at device
/// offset `offset` and faults it at the alignment's order.
private func faultOnce(_ k: Kernel, range: PhysicalRange, align: UInt64, offset: UInt64)
    throws -> (dev: DevDax, mm: MM, addr: UInt64, counters: FaultCounters) {
    let dev = try DevDax(kernel: k, ranges: [range], align: align)
    try dev.probe()
    let mm = try MM(kernel: k)
    let addr = try mm.mmap(dev.mmapRequest(length: align, pgoff: offset >> 12))
    let order = (align >> 12).trailingZeroBitCount
    let ret = callFault(mm, addr, order: order, write: true)
    let folio = pfnToPage(k.ref, (range.start + offset) >> 12).folio
    let c = FaultCounters(ret: ret, refCount: folio.refCount, mapcount: folio.mapcount,
                          entireMapcount: folio.entireMapcount, order: folio.order,
                          mappingIsFile: folio.mapping == dev.file.mapping, rss: mm.rssFilePages,
                          fileMapped: k.stat(DAX_NR_FILE_MAPPED), filePmdMapped: k.stat(DAX_NR_FILE_PMDMAPPED))
    return (dev, mm, addr, c)
}

/// A thread running `body`; `join()` waits for it.
private struct Worker {
    private let group = DispatchGroup()
    init(_ body: @escaping @Sendable () -> Void) {
        let g = group
        g.enter()
        Thread { body(); g.leave() }.start()
    }
    func join() { group.wait() }
}

/// Whether the thread sanitizer's runtime is in the process: it shadows
/// only part of the address space, and a 64 TiB vmemmap reservation (a
/// 52-bit kernel) lands outside it.
private let underThreadSanitizer = dlsym(nil, "__tsan_init") != nil

/// A counter two test threads share.
private final class Counter: Sendable {
    let value = Atomic<Int>(0)
}

// Serialized: the tests measure this process's resident memory around a
// bind, which the other cases of the suite would disturb.
@Suite("device-dax with deferred struct pages; kill_dax waits for faults", .serialized)
struct DeviceDAXDeferredInitTests {

    /// dev_dax_probe of 1 TiB (memremap_pages of a GENERIC pgmap with
    /// vmemmap_shift 0, 9 or 18), then one fault at 512 GiB: before it no
    /// section is initialised and under 32 MiB became resident; the fault
    /// initialises the folio's sections only (1, or 8 for a 1 GiB folio) and
    /// leaves exactly the counters of the same fault on an eager kernel;
    /// remove() gives everything back.
    @Test("dev_dax_probe of 1 TiB initialises no struct page; a PTE/PMD/PUD fault initialises its folio's sections with eager init's counters",
          arguments: [UInt64(4096), 2 * MiB, GiB])
    func terabyteDevice(align: UInt64) throws {
        let k = try Kernel()
        let range = PhysicalRange(start: 0x40_0000_0000, size: TiB)
        let s0 = k.initialisedSections
        let rss0 = try #require(residentBytes())
        let offset = 512 * GiB
        let dev = try DevDax(kernel: k, ranges: [range], align: align)
        try dev.probe()
        let rss1 = try #require(residentBytes())
        #expect(rss1 - rss0 < 32 << 20, "binding 1 TiB made \((rss1 - rss0) >> 20) MiB resident")
        #expect(k.initialisedSections == s0 && k.deferredSections == 8192)
        #expect(k.residentVmemmapPages(startPfn: range.startPfn, endPfn: range.endPfn) == 0)

        let mm = try MM(kernel: k)
        let addr = try mm.mmap(dev.mmapRequest(length: align, pgoff: offset >> 12))
        let order = (align >> 12).trailingZeroBitCount
        let pfn = (range.start + offset) >> 12
        #expect(k.sectionState(pfn: pfn) == .deferred)
        let ret = callFault(mm, addr, order: order, write: true)
        let sections = align == GiB ? 8 : 1
        #expect(k.initialisedSections == s0 + sections && k.deferredSections == 8192 - sections)
        #expect(k.sectionState(pfn: pfn) == .present)
        #expect(k.sectionState(pfn: pfn + UInt64(sections) * pps - 1) == .present)
        #expect(k.sectionState(pfn: pfn - 1) == .deferred)
        #expect(k.sectionState(pfn: pfn + UInt64(sections) * pps) == .deferred)
        let folio = pfnToPage(k.ref, pfn).folio
        let lazy = FaultCounters(ret: ret, refCount: folio.refCount, mapcount: folio.mapcount,
                                 entireMapcount: folio.entireMapcount, order: folio.order,
                                 mappingIsFile: folio.mapping == dev.file.mapping, rss: mm.rssFilePages,
                                 fileMapped: k.stat(DAX_NR_FILE_MAPPED), filePmdMapped: k.stat(DAX_NR_FILE_PMDMAPPED))
        #expect(lazy.ret == DAX_VM_FAULT_NOPAGE && lazy.refCount == 2 && lazy.mapcount == 1 && lazy.order == order)
        #expect(folio.index == offset >> 12)

        do {
            let eagerKernel = try Kernel(deferStructPageInit: false)
            let eager = try faultOnce(eagerKernel, range: PhysicalRange(start: range.start, size: max(align, 2 * MiB)),
                                      align: align, offset: 0)
            #expect(lazy == eager.counters)
            try eager.mm.munmap(eager.addr, align)
            try eager.dev.remove()
        }

        // The checker walks the mapped folio and skips the deferred sections.
        expectInvariants(k, mms: [mm], pgmaps: [dev.pgmap!])
        #expect(k.initialisedSections == s0 + sections)

        try mm.munmap(addr, align)
        try dev.remove()
        #expect(k.initialisedSections == s0 && k.deferredSections == 0)
        #expect(k.residentVmemmapPages(startPfn: range.startPfn, endPfn: range.endPfn) == 0,
                "remove() leaves no initialised record resident")
        #expect(k.drainReports().isEmpty)
    }

    /// A 1 TiB device ending at 2^52 (the emulated device's highest base;
    /// MAX_PHYSMEM_BITS with 5-level paging), 1 GiB aligned: bound and
    /// faulted at its last PUD. The only 52-bit kernel of the test run: its
    /// vmemmap reserves 64 TiB of the 128 TiB user address space, so two
    /// could not exist at once.
    @Test("a 1 TiB device at the top of a 52-bit physical space binds, faults its last PUD and goes",
          .disabled(if: underThreadSanitizer, "the thread sanitizer cannot shadow a 64 TiB vmemmap"))
    func topOf52Bits() throws {
        let rss0 = try #require(residentBytes())
        let k = try Kernel(physBits: maxPhysBits)
        let top = UInt64(1) << 52
        let range = PhysicalRange(start: top - TiB, size: TiB)
        let dev = try DevDax(kernel: k, ranges: [range], align: GiB)
        try dev.probe()
        let rss1 = try #require(residentBytes())
        #expect(rss1 - rss0 < 32 << 20)
        #expect(k.initialisedSections == 1 && k.deferredSections == 8192)
        #expect(k.pfnValid(k.maxPfn - 1) && !k.pfnValid(k.maxPfn))

        let mm = try MM(kernel: k)
        let addr = try mm.mmap(dev.mmapRequest(length: GiB, pgoff: (TiB - GiB) >> 12))
        #expect(callFault(mm, addr, order: pudOrder, write: false) == DAX_VM_FAULT_NOPAGE)
        let last = k.maxPfn - 1
        let folio = pfnToPage(k.ref, last).folio
        #expect(pageToPfn(k.ref, folio.head) == (top - GiB) >> 12)
        #expect(folio.order == pudOrder && folio.refCount == 2 && folio.entireMapcount == 1)
        #expect(mm.rssFilePages == Int64(hpagePudNr))
        #expect(k.initialisedSections == 1 + 8 && k.sectionState(pfn: last) == .present)
        expectInvariants(k, mms: [mm], pgmaps: [dev.pgmap!])

        try mm.munmap(addr, GiB)
        try dev.remove()
        #expect(k.initialisedSections == 1 && k.deferredSections == 0)
        #expect(k.residentVmemmapPages(startPfn: range.startPfn, endPfn: range.endPfn) == 0)
    }

    /// Two threads (two MMs) fault pages of one deferred section at once,
    /// 64 each, interleaved: one initialises the section, the other waits
    /// for it; no page is initialised twice (a second init would reset the
    /// refcount and mapcount the other thread's faults took). Distinct pages:
    /// two faults of one page race on dax_set_mapping's plain store, as in
    /// the kernel, which is not what this checks.
    @Test("two threads faulting the same deferred section: initialised once, every fault's counters kept")
    func concurrentFirstFault() throws {
        let k = try Kernel()
        let range = PhysicalRange(start: 0x40_0000_0000, size: GiB)
        for _ in 0..<30 {
            let dev = try DevDax(kernel: k, ranges: [range], align: 4096)
            try dev.probe()
            let s0 = k.initialisedSections
            let mms = [try MM(kernel: k), try MM(kernel: k)]
            let addrs = try mms.map { try $0.mmap(dev.mmapRequest(length: 2 * MiB)) }
            let ready = Counter()
            let threads = (0..<2).map { t in
                let mm = mms[t], addr = addrs[t]
                return Worker {
                    ready.value.add(1, ordering: .sequentiallyConsistent)
                    while ready.value.load(ordering: .sequentiallyConsistent) < 2 {}
                    for i in 0..<64 { _ = callFault(mm, addr + UInt64(2 * i + t) * 4096, order: 0, write: true) }
                }
            }
            threads.forEach { $0.join() }
            #expect(k.initialisedSections == s0 + 1)
            for i in 0..<128 {
                let f = pfnToPage(k.ref, range.startPfn + UInt64(i)).folio
                #expect(f.refCount == 2 && f.mapcount == 1)
            }
            #expect(mms.allSatisfy { $0.rssFilePages == 64 })
            expectInvariants(k, mms: mms, pgmaps: [dev.pgmap!])
            for (mm, addr) in zip(mms, addrs) { try mm.munmap(addr, 2 * MiB) }
            try dev.remove()
        }
    }

    /// kill_dax (drivers/dax/super.c): dax_alive false, then synchronize_srcu
    /// over the fault handlers' dax_read_lock sections, so remove()'s
    /// unmap_mapping_range runs after every fault that saw the device alive.
    /// A thread faults one page per section (each first fault of a section
    /// initialises it, a long window between check_vma and the insert) while
    /// the test removes the device. After remove() returns no entry is left,
    /// rss and NR_FILE_MAPPED are 0 (no folio holds a mapping reference: all
    /// went back to idle before memunmap_pages); later faults SIGBUS.
    @Test("kill_dax waits for faults in flight: after remove() racing a fault loop the MM maps nothing (200 rounds)")
    func removeRacingFaults() throws {
        let k = try Kernel()
        let sections = 64
        let range = PhysicalRange(start: 0x40_0000_0000, size: UInt64(sections) * pps << 12)
        for round in 0..<200 {
            let dev = try DevDax(kernel: k, ranges: [range], align: 4096)
            try dev.probe()
            let mm = try MM(kernel: k)
            let addr = try mm.mmap(dev.mmapRequest(length: range.size))
            let faults = Counter()
            let page = UInt64(round % 7) * 4096
            let faulter = Worker {
                for i in 0..<sections {
                    let ret = callFault(mm, addr + UInt64(i) * (pps << 12) + page, order: 0, write: i % 2 == 0)
                    faults.value.add(1, ordering: .sequentiallyConsistent)
                    if ret & DAX_VM_FAULT_SIGBUS != 0 { break }
                }
            }
            while faults.value.load(ordering: .sequentiallyConsistent) < 1 + round % 3 { usleep(10) }
            try dev.remove()
            var mapped = 0
            mm.lockRead()
            for i in 0..<sections {
                if let pte = walk(mm.ref, addr + UInt64(i) * (pps << 12) + page).pte, entryPresent(dax_load_u64(pte)) {
                    mapped += 1
                }
            }
            mm.unlockRead()
            #expect(mapped == 0, "round \(round): \(mapped) entries survived remove()")
            #expect(mm.rssFilePages == 0 && k.stat(DAX_NR_FILE_MAPPED) == 0, "round \(round)")
            faulter.join()
            #expect(callFault(mm, addr + page, order: 0) == DAX_VM_FAULT_SIGBUS)
            #expect(mm.rssFilePages == 0 && k.initialisedSections == 1 && k.deferredSections == 0)
            try mm.munmap(addr, range.size)
            if mapped != 0 { break }
        }
        #expect(k.drainReports().isEmpty)
    }
}
