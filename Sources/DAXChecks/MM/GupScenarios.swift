// mm/gup.c through the port: the reference and pin arithmetic of
// try_grab_folio on device-dax folios, small and large, slow and fast, with
// and without FOLL_LONGTERM, and FOLL_LONGTERM refused on fs-dax.

import CDaxMM
import DAXBase
import DAXCore
import MMCore
import MMTestSupport

/// GUP on device-dax at 4K (order-0 folios) and 2M (one order-9 folio),
/// four pages each time, from an unfaulted range (GUP faults them in):
///  - get_user_pages (FOLL_GET): +1 refcount per page, no pin, no
///    NR_FOLL_PIN_ACQUIRED; put_page undoes it;
///  - pin_user_pages (FOLL_PIN): a small folio +GUP_PIN_COUNTING_BIAS per
///    pin, a large one +1 refcount and +1 _pincount per pin
///    (folio_has_pincount), NR_FOLL_PIN_ACQUIRED += 4,
///    folio_maybe_dma_pinned; unpin_user_pages restores every counter and
///    adds NR_FOLL_PIN_RELEASED;
///  - FOLL_LONGTERM, slow and fast: the same (folio_is_longterm_pinnable:
///    device-dax is ZONE_DEVICE but not fs-dax or coherent).
/// The invariant checker runs with the held references as its ledger.
func gupDevdaxPinScenario(_ t: TestContext, rules: KernelRules = .kernel) throws {
    for align in [UInt64(4096), UInt64(pmdSize)] {
        let name = sizeName(align)
        let m = try t.must("dev_dax_probe of a \(name)-aligned device") { try DevDaxMachine(align: align, size: UInt64(pmdSize)) }
        let large = align > 4096
        let length = large ? align : 64 << 10
        let a = try t.must("dax_mmap \(sizeName(length))") { try m.map(length) }
        let n = 4
        let folio = m.folio(0)
        let idle = m.counters(folio)
        // The mapping GUP's faults leave: one entry on folio 0, and n pages
        // (4K) or the whole folio (2M) in MM_FILEPAGES.
        let mapped = idle.with {
            $0.refcount += rules.refsPerEntry
            $0.mapcount += rules.mapcountPerEntry
            if large { $0.entireMapcount += rules.mapcountPerEntry }
            $0.rss += large ? Int64(hpagePmdNr) : Int64(n)
            $0.fileMapped += large ? Int64(hpagePmdNr) : Int64(n)
            if large { $0.filePmdMapped += Int64(hpagePmdNr) }
        }
        // What n grabs of each kind add to folio 0 (4K: one page of it; 2M: all n).
        let perFolio = Int32(large ? n : 1)
        /// The references held outside the page tables: `each` per grabbed
        /// page, summed per folio.
        func ledger(_ each: Int64) -> RefLedger {
            m.ledger((0..<n).map { (m.folio(UInt64($0) * 4096), each) })
        }

        // FOLL_GET
        let got = try t.must("get_user_pages(\(n)) on \(name)") { try m.mm.getPages(a, count: n, flags: [.write]) }
        t.expectEqual(got.count, n, "\(name): get_user_pages count")
        t.expect(got.enumerated().allSatisfy { pageToPfn(m.kernel.ref, $0.element) == m.basePfn + UInt64($0.offset) },
                 "\(name): get_user_pages returns the pages of the range in order")
        t.expectCounters(m.counters(folio), mapped.with { $0.refcount += perFolio }, "\(name): after get_user_pages (try_grab_folio FOLL_GET: +1 per page)")
        t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, ledger: ledger(1), after: "\(name) get_user_pages")
        m.mm.put(got)
        t.expectCounters(m.counters(folio), mapped, "\(name): after put_page")

        // FOLL_PIN, FOLL_PIN|FOLL_LONGTERM, slow and fast.
        let pinWeight: Int64 = large ? 1 : Int64(rules.pinCountingBias)
        var acquired = mapped.pinAcquired, released = mapped.pinReleased
        for (label, flags, fast) in [("pin_user_pages", GupFlags.write, false),
                                     ("pin_user_pages(FOLL_LONGTERM)", [.write, .longterm], false),
                                     ("pin_user_pages_fast", [.write], true),
                                     ("pin_user_pages_fast(FOLL_LONGTERM)", [.longterm], true)] as [(String, GupFlags, Bool)] {
            let pins = try t.must("\(label)(\(n)) on \(name)") { try m.mm.pinPages(a, count: n, flags: flags, fast: fast) }
            t.expectEqual(pins.count, n, "\(name): \(label) count")
            acquired += Int64(n)
            let pinned = mapped.with {
                if large {
                    $0.refcount += perFolio
                    $0.pincount += perFolio
                } else {
                    $0.refcount += rules.pinCountingBias
                }
                $0.pinAcquired = acquired
                $0.pinReleased = released
            }
            t.expectCounters(m.counters(folio), pinned,
                             "\(name): after \(label) (try_grab_folio FOLL_PIN: \(large ? "+1 ref and +1 _pincount per pin" : "+GUP_PIN_COUNTING_BIAS"))")
            t.expect(folio.maybeDmaPinned, "\(name): folio_maybe_dma_pinned after \(label)")
            t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, ledger: ledger(pinWeight), after: "\(name) \(label)")
            m.mm.unpin(pins)
            released += Int64(n)
            t.expectCounters(m.counters(folio), mapped.with { $0.pinAcquired = acquired; $0.pinReleased = released },
                             "\(name): after unpin_user_pages following \(label)")
            t.expect(!folio.maybeDmaPinned, "\(name): not folio_maybe_dma_pinned after unpin")
        }
        try t.must("munmap") { try m.mm.munmap(a, length) }
        t.expectCounters(m.counters(folio), idle.with { $0.pinAcquired = acquired; $0.pinReleased = released },
                         "\(name): after munmap")
        t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "\(name) munmap")
    }
}

/// FOLL_LONGTERM on fs-dax (mm/gup.c check_vma_flags: vma_is_fsdax ->
/// -EOPNOTSUPP; folio_is_longterm_pinnable is false for fs-dax, so
/// GUP-fast undoes its speculative grab and the slow path refuses): on an
/// order-0 page and on a PMD-mapped order-9 folio, slow and fast, read and
/// write, and on an allocated page not yet faulted. Every call is refused
/// before anything is grabbed or faulted: refcount, mapcount, pincount,
/// NR_FOLL_PIN_*, rss and the file's entries do not move. A plain FOLL_PIN
/// of the same page works (+GUP_PIN_COUNTING_BIAS) and unpins to 1. The
/// device-dax VMA beside it takes the long-term pin.
func gupFsdaxLongtermScenario(_ t: TestContext, rules: KernelRules = .kernel) throws {
    let m = try t.must("an extent store on 16 MiB of fs-dax memory") { try FSDaxMachine() }
    let f = try t.must("create a file") { try m.fs.create(name: "pinned", maxSize: 4 << 20) }
    try t.must("fallocate a 2M extent and 8 pages") {
        try f.allocate(pgoff: 0, pages: UInt64(hpagePmdNr))
        try f.allocate(pgoff: UInt64(hpagePmdNr), pages: 8)
    }
    let a = try t.must("mmap the file") { try m.mm.mmap(f.mmapRequest(length: 4 << 20)) }
    let small = a + UInt64(pmdSize), unfaulted = small + 3 * 4096
    t.expect(m.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0, "PMD read fault on the 2M extent")
    t.expect(m.mm.handleFault(small, write: true) & DAX_VM_FAULT_ERROR == 0, "PTE write fault on page 512")
    let big = try t.require(f.folio(at: 0), "no block at page 0").head.folio
    let page = try t.require(f.folio(at: UInt64(hpagePmdNr)), "no block at page 512")
    let untouched = try t.require(f.folio(at: UInt64(hpagePmdNr) + 3), "no block at page 515")
    t.expect(big.order == pmdOrder && leaf(m.mm, a)?.level == .pmd, "the extent is one PMD-mapped order-9 folio")
    let before = (m.counters(big), m.counters(page), m.counters(untouched), f.nrpages)

    m.mm.lockRead()
    let vmaRc = m.mm.findVMA(a).map { (vmaIsFsdax($0), checkVmaFlags($0, [.pin, .longterm])) }
    m.mm.unlockRead()
    let (isFsdax, flagsRc) = try t.require(vmaRc, "no VMA at \(hex(a))")
    t.expect(isFsdax, "vma_is_fsdax on the file's VMA")
    t.expectEqual(flagsRc < 0 ? errnoName(-flagsRc) : "\(flagsRc)", errnoName(rules.longtermFsdaxErrno),
                  "check_vma_flags(FOLL_PIN|FOLL_LONGTERM) on fs-dax")
    for (addr, what) in [(small, "order-0 page"), (a + 5 * 4096, "page of the PMD folio"), (unfaulted, "allocated page not faulted")] {
        for fast in [false, true] {
            for flags in [[.write, .longterm], [.longterm]] as [GupFlags] {
                let label = "pin_user_pages\(fast ? "_fast" : "")(\(flags.contains(.write) ? "FOLL_WRITE|" : "")FOLL_LONGTERM) on the \(what)"
                t.expectErrno(label, rules.longtermFsdaxErrno) { _ = try m.mm.pinPages(addr, count: 1, flags: flags, fast: fast) }
            }
        }
    }
    t.expectCounters(m.counters(big), before.0, "the PMD folio after the refused pins")
    t.expectCounters(m.counters(page), before.1, "page 512 after the refused pins")
    t.expectCounters(m.counters(untouched), before.2, "page 515 after the refused pins")
    t.expectEqual(f.nrpages, before.3, "the file's entries after the refused pins")
    t.expect(leaf(m.mm, unfaulted) == nil, "the refused pin faulted nothing in")
    t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "the refused long-term pins")

    // A plain pin of the same page.
    let pins = try t.must("pin_user_pages(FOLL_WRITE) on page 512") { try m.mm.pinPages(small, count: 1, flags: [.write]) }
    t.expectCounters(m.counters(page), before.1.with { $0.refcount += rules.pinCountingBias; $0.pinAcquired += 1 },
                     "page 512 after a short-term pin")
    t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps,
                           ledger: [pageToPfn(m.kernel.ref, page.head): Int64(rules.pinCountingBias)], after: "the short-term pin")
    m.mm.unpin(pins)
    t.expectCounters(m.counters(page), before.1.with { $0.pinAcquired += 1; $0.pinReleased += 1 }, "page 512 after unpin")

    // Device-dax in the same mm takes the long-term pin.
    let dev = try t.must("a 4K device-dax device in the same kernel") {
        try DevDax(kernel: m.kernel, ranges: [PhysicalRange(start: 0x1_0000_0000, size: 2 << 20)], align: 4096)
    }
    try t.must("probe") { try dev.probe() }
    let d = try t.must("dax_mmap") { try m.mm.mmap(dev.mmapRequest(length: 64 << 10)) }
    let lt = try t.must("pin_user_pages(FOLL_LONGTERM) on device-dax") { try m.mm.pinPages(d, count: 1, flags: [.write, .longterm]) }
    t.expectEqual(lt.first?.folio.refCount, rules.devdaxIdleRefcount + rules.refsPerEntry + rules.pinCountingBias,
                  "device-dax folio after a long-term pin")
    m.mm.unpin(lt)
    try t.must("munmap") { try m.mm.munmap(d, 64 << 10); try m.mm.munmap(a, 4 << 20) }
    t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps + [dev.pgmap!], after: "munmap")
}
