// mm/gup.c: get_user_pages / pin_user_pages (slow and fast): argument checks,
// check_vma_flags, FOLL_LONGTERM, try_grab_folio accounting and release.

import CDaxMM
import DAXBase
import Testing
@testable import MMCore
import MMTestChecks
import MMTestSupport

private let gupNoopPageFree: @convention(c) (UnsafeMutablePointer<dax_page>?, UnsafeMutableRawPointer?) -> Void = { _, _ in }

@Suite("GUP (mm/gup.c)")
struct GupTests {
    typealias GupFn = @Sendable (MMRef, UInt64, Int, GupFlags, PageArray?) -> Int

    /// The four entry points. The fast ones take a non-optional array.
    static let entryPoints: [(String, GupFn)] = [
        ("get_user_pages", { getUserPages($0, $1, $2, $3, $4) }),
        ("pin_user_pages", { pinUserPages($0, $1, $2, $3, $4) }),
        ("get_user_pages_fast", { mm, a, n, f, p in p.map { getUserPagesFast(mm, a, n, f, $0) } ?? Int(-EINVAL) }),
        ("pin_user_pages_fast", { mm, a, n, f, p in p.map { pinUserPagesFast(mm, a, n, f, $0) } ?? Int(-EINVAL) }),
    ]

    static func ledger(_ rig: FaultRig, _ extra: [(Folio, Int64)]) -> RefLedger {
        var l: RefLedger = [:]
        for (f, n) in extra { l[pageToPfn(rig.kernel.ref, f.head), default: 0] += n }
        return l
    }

    // MARK: is_valid_gup_args (mm/gup.c)

    @Test("is_valid_gup_args: internal flags, PIN+GET, LONGTERM without PIN, no pages array, LONGTERM+PCI_P2PDMA are -EINVAL")
    func isValidGupArgsMatrix() throws {
        let pages = VMAKit.pages(1)
        defer { pages.deallocate() }
        let invalid: [(PageArray?, GupFlags, GupFlags)] = [
            (pages, [.get], .get), (pages, [.pin], .pin), (pages, [.fastOnly], .pin), (pages, [.pin], .get),
            (pages, [.get], .pin), (pages, [.longterm], .get), (nil, [], .get), (nil, [], .pin),
            (pages, [.longterm, .pciP2PDMA], .pin),
        ]
        for (p, f, s) in invalid {
            #expect(isValidGupArgs(p, f, toSet: s) == -EINVAL, "\(f.rawValue) + \(s.rawValue)")
        }
        let valid: [(PageArray?, GupFlags, GupFlags)] = [
            (pages, [], .get), (pages, [.longterm, .write], .pin), (pages, [.pciP2PDMA], .pin),
            (pages, [.write, .force], .get), (nil, [], []),
        ]
        for (p, f, s) in valid {
            #expect(isValidGupArgs(p, f, toSet: s) == 0, "\(f.rawValue) + \(s.rawValue)")
        }
    }

    @Test("invalid GUP arguments are -EINVAL through every entry point, with no fault and no counter change")
    func invalidArgsThroughEntryPoints() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10)
        #expect(rig.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let pages = VMAKit.pages(2)
        defer { pages.deallocate() }
        let badFlags: [GupFlags] = [[.get], [.pin], [.fastOnly], [.longterm, .pciP2PDMA]]
        for (name, fn) in Self.entryPoints {
            for flags in badFlags {
                #expect(fn(rig.mm.ref, a, 2, flags, pages) == Int(-EINVAL), "\(name) \(flags.rawValue)")
            }
        }
        // LONGTERM without PIN: only the GET entry points.
        #expect(getUserPages(rig.mm.ref, a, 1, [.longterm], pages) == Int(-EINVAL))
        #expect(getUserPagesFast(rig.mm.ref, a, 1, [.longterm], pages) == Int(-EINVAL))
        // No pages array with GET or PIN.
        #expect(getUserPages(rig.mm.ref, a, 1, [], nil) == Int(-EINVAL))
        #expect(pinUserPages(rig.mm.ref, a, 1, [], nil) == Int(-EINVAL))
        #expect(pages[0] == nil && pages[1] == nil)
        #expect(VMAKit.counters(rig, f) == before)
        #expect(rig.mm.rssFilePages == 1, "the unfaulted page was not faulted in")
        rig.check()
    }

    // MARK: check_vma_flags (mm/gup.c)

    @Test("check_vma_flags: VM_IO or VM_PFNMAP is -EFAULT for every entry point", arguments: [DAX_VM_IO, DAX_VM_PFNMAP])
    func ioAndPfnmapRefused(flag: UInt64) throws {
        let (rig, a) = try vmaFixture(length: 64 << 10, extraFlags: flag)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let pages = VMAKit.pages(1)
        defer { pages.deallocate() }
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(a)!
            #expect(checkVmaFlags(vma, [.get]) == -EFAULT)
            #expect(checkVmaFlags(vma, [.pin, .write]) == -EFAULT)
        }
        for (name, fn) in Self.entryPoints {
            #expect(fn(rig.mm.ref, a, 1, [], pages) == Int(-EFAULT), "\(name)")
            #expect(fn(rig.mm.ref, a, 1, [.write], pages) == Int(-EFAULT), "\(name)")
        }
        #expect(VMAKit.counters(rig, f) == before)
        #expect(rig.mm.rssFilePages == 0)
        rig.check()
    }

    @Test("check_vma_flags: write without VM_WRITE is -EFAULT; FOLL_FORCE helps only on a COW mapping; FOLL_ANON on a file VMA is -EFAULT")
    func writeAccessChecks() throws {
        let (rig, ro) = try vmaFixture(length: 64 << 10, prot: [.read])
        let cow = try rig.linkVMA(length: 64 << 10, prot: [.read], shared: false)
        let rw = try rig.linkVMA(length: 64 << 10)
        VMAKit.read(rig.mm) {
            let vro = rig.mm.findVMA(ro)!, vcow = rig.mm.findVMA(cow)!, vrw = rig.mm.findVMA(rw)!
            #expect(checkVmaFlags(vro, [.pin, .write]) == -EFAULT)
            #expect(checkVmaFlags(vro, [.pin, .write, .force]) == -EFAULT, "FORCE on a shared mapping")
            #expect(checkVmaFlags(vro, [.pin]) == 0)
            #expect(checkVmaFlags(vcow, [.pin, .write]) == -EFAULT)
            #expect(checkVmaFlags(vcow, [.pin, .write, .force]) == 0, "FORCE on a COW mapping")
            #expect(checkVmaFlags(vrw, [.pin, .write]) == 0)
            #expect(checkVmaFlags(vrw, [.get, .anon]) == -EFAULT)
        }
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let pages = VMAKit.pages(1)
        defer { pages.deallocate() }
        for (name, fn) in Self.entryPoints {
            #expect(fn(rig.mm.ref, ro, 1, [.write], pages) == Int(-EFAULT), "\(name)")
            #expect(fn(rig.mm.ref, ro, 1, [.write, .force], pages) == Int(-EFAULT), "\(name)")
        }
        #expect(VMAKit.counters(rig, f) == before)
        // A read pin of the same read-only VMA works.
        #expect(pinUserPages(rig.mm.ref, ro, 1, [], pages) == 1)
        #expect(f.refCount == 1 + 1 + 1024)
        unpinUserPages(rig.kernel.ref, pages, 1)
        #expect(f.refCount == 2)
        rig.check()
    }

    @Test("check_vma_flags: a read without VM_READ (mprotect PROT_WRITE only) is -EFAULT on the slow path unless FOLL_FORCE with VM_MAYREAD; GUP-fast, which checks the PTE only, takes it (PROT_WRITE maps readable on x86)")
    func readWithoutVmRead() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10)
        #expect(rig.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
        try rig.mm.mprotect(a, 64 << 10, [.write])
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let pages = VMAKit.pages(1)
        defer { pages.deallocate() }
        VMAKit.read(rig.mm) {
            #expect(rig.mm.findVMA(a)!.pointee.vm_flags & DAX_VM_READ == 0)
        }
        for (name, fn) in Self.entryPoints where name == "get_user_pages" || name == "pin_user_pages" {
            #expect(fn(rig.mm.ref, a, 1, [], pages) == Int(-EFAULT), "\(name)")
        }
        #expect(VMAKit.counters(rig, f) == before)
        // GUP-fast looks at the PTE only (pte_access_permitted), and x86's
        // protection_map makes PROT_WRITE readable: the entry keeps
        // _PAGE_USER, so the fast walk takes the page.
        #expect(getUserPagesFast(rig.mm.ref, a, 1, [], pages) == 1)
        putUserPages(rig.kernel.ref, pages, 1)
        #expect(VMAKit.counters(rig, f) == before)
        #expect(getUserPages(rig.mm.ref, a, 1, [.force], pages) == 1)
        #expect(f.refCount == before.ref + 1, "the PROT_NONE-style entry stays mapped: got (+1), no refault")
        putUserPages(rig.kernel.ref, pages, 1)
        VMAKit.write(rig.mm) { rig.mm.findVMA(a)!.pointee.vm_flags &= ~DAX_VM_MAYREAD }
        #expect(getUserPages(rig.mm.ref, a, 1, [.force], pages) == Int(-EFAULT))
        rig.check()
    }

    @Test("writable long-term pin of a shared file mapping that needs dirty tracking (pfn_mkwrite) is -EFAULT; without LONGTERM it works")
    func longtermWritableNeedsNoDirtyTracking() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10, ops: .writenotify)
        let f = rig.folio(pgoff: 0)
        let pages = VMAKit.pages(1)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a, 1, [.write, .longterm], pages) == Int(-EFAULT))
        #expect(f.refCount == 1 && rig.mm.rssFilePages == 0)
        #expect(pinUserPages(rig.mm.ref, a, 1, [.longterm], pages) == 1, "read-only long-term pins are fine")
        unpinUserPages(rig.kernel.ref, pages, 1)
        #expect(pinUserPages(rig.mm.ref, a, 1, [.write], pages) == 1)
        unpinUserPages(rig.kernel.ref, pages, 1)
        #expect(f.refCount == 2)
        rig.check()
    }

    // MARK: FOLL_LONGTERM (folio_is_longterm_pinnable, __gup_longterm_locked)

    @Test("FOLL_LONGTERM on an unfaulted fs-dax VMA is -EOPNOTSUPP before any fault, slow and fast; a short-term pin of the same page works")
    func longtermFsdaxRefusedBeforeFault() throws {
        let (rig, a) = try vmaFixture(type: .fsDax, length: 64 << 10)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let pages = VMAKit.pages(2)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a, 2, [.longterm], pages) == Int(-EOPNOTSUPP))
        #expect(pinUserPages(rig.mm.ref, a, 2, [.write, .longterm], pages) == Int(-EOPNOTSUPP))
        #expect(pinUserPagesFast(rig.mm.ref, a, 2, [.longterm], pages) == Int(-EOPNOTSUPP))
        #expect(VMAKit.counters(rig, f) == before)
        #expect(rig.mm.rssFilePages == 0 && f.refCount == 0)
        // The short-term pin: fs-dax folios are zero-based, +1 PTE +1024 pin.
        #expect(pinUserPages(rig.mm.ref, a, 1, [.write], pages) == 1)
        #expect(f.refCount == 1 + 1024 && f.maybeDmaPinned)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED) == before.pinAcquired + 1)
        rig.check(Self.ledger(rig, [(f, 1024)]))
        // The fast path grabs speculatively, sees an unpinnable folio, undoes
        // the grab and falls back to the slow path's refusal.
        let mid = VMAKit.counters(rig, f)
        #expect(pinUserPagesFast(rig.mm.ref, a, 1, [.longterm], pages + 1) == Int(-EOPNOTSUPP))
        #expect(VMAKit.counters(rig, f) == mid)
        unpinUserPages(rig.kernel.ref, pages, 1)
        #expect(f.refCount == 1 && !f.maybeDmaPinned)
        rig.check(Self.ledger(rig, []))
    }

    @Test("FOLL_LONGTERM on device-dax succeeds, slow and fast, and the folio is maybe_dma_pinned", arguments: [0, 9])
    func longtermDevdax(order: Int) throws {
        let (rig, a) = try vmaFixture(order: order, bytes: 4 << 20, length: 4 << 20)
        let f = rig.folio(pgoff: 0)
        let pages = VMAKit.pages(4)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a, 2, [.write, .longterm], pages) == 2)
        #expect(pinUserPagesFast(rig.mm.ref, a + 2 * 4096, 2, [.longterm], pages + 2) == 2)
        #expect(f.maybeDmaPinned)
        if order == 0 {
            #expect(f.refCount == 1 + 1 + 1024)
            #expect(rig.folio(pgoff: 3).refCount == 1 + 1 + 1024)
        } else {
            #expect(f.pincount == 4 && f.refCount == 1 + 1 + 4)
        }
        unpinUserPages(rig.kernel.ref, pages, 4)
        #expect(!f.maybeDmaPinned && f.refCount == 2)
        rig.check(Self.ledger(rig, []))
    }

    // MARK: FOLL_GET

    @Test("get_user_pages (FOLL_GET): +1 ref per page, no pin, no NR_FOLL_PIN change; put_user_pages undoes it", arguments: [0, 9])
    func followGetRefs(order: Int) throws {
        let (rig, a) = try vmaFixture(order: order, bytes: 4 << 20, length: 4 << 20)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let pages = VMAKit.pages(8)
        defer { pages.deallocate() }
        #expect(getUserPages(rig.mm.ref, a, 4, [], pages) == 4)
        #expect(getUserPagesFast(rig.mm.ref, a, 4, [.write], pages + 4) == 4)
        for i in 0..<8 { #expect(pages[i] == pfnToPage(rig.kernel.ref, rig.pgmap.ranges[0].startPfn + UInt64(i % 4)).raw) }
        let mapped = order == 0 ? Int32(1) : Int32(1)
        if order == 0 {
            for i in 0..<4 {
                let g = rig.folio(pgoff: UInt64(i))
                #expect(g.refCount == 1 + mapped + 2)
                #expect(!g.maybeDmaPinned)
            }
            #expect(rig.mm.rssFilePages == 4)
        } else {
            #expect(f.refCount == 1 + 1 + 8)
            #expect(f.pincount == 0 && !f.maybeDmaPinned)
            #expect(rig.mm.rssFilePages == 512)
        }
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED) == before.pinAcquired)
        rig.check(Self.ledger(rig, (0..<8).map { (Page(pages[$0]!).folio, 1) }))
        putUserPages(rig.kernel.ref, pages, 8)
        #expect(f.refCount == before.ref + 1)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_RELEASED) == before.pinReleased)
        rig.check(Self.ledger(rig, []))
    }

    // MARK: FOLL_PIN

    @Test("pin_user_pages on an unfaulted range faults the pages in, then pins: small folio +1024 per pin, NR_FOLL_PIN_ACQUIRED += n; unpin restores it all")
    func pinSmallFolios() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10)
        let folios = (0..<4).map { rig.folio(pgoff: UInt64($0)) }
        let acq = rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED), rel = rig.kernel.stat(DAX_NR_FOLL_PIN_RELEASED)
        let fm = rig.kernel.stat(DAX_NR_FILE_MAPPED)
        #expect(rig.mm.rssFilePages == 0)
        let pages = VMAKit.pages(4)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a, 4, [.write], pages) == 4)
        #expect(rig.mm.rssFilePages == 4)
        #expect(rig.kernel.stat(DAX_NR_FILE_MAPPED) == fm + 4)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED) == acq + 4)
        for f in folios {
            #expect(f.refCount == 1 + 1 + 1024 && f.mapcount == 1 && f.maybeDmaPinned)
        }
        rig.check(Self.ledger(rig, folios.map { ($0, 1024) }))
        unpinUserPages(rig.kernel.ref, pages, 4)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_RELEASED) == rel + 4)
        for f in folios { #expect(f.refCount == 2 && !f.maybeDmaPinned) }
        rig.check(Self.ledger(rig, []))
    }

    @Test("pins on a 2M folio: 4 pins give pincount 4 and refcount +4; unpin batches the run and restores pincount and refcount")
    func pinLargeFolio() throws {
        let (rig, a) = try vmaFixture(order: pmdOrder, bytes: 4 << 20, length: 4 << 20)
        let f = rig.folio(pgoff: 0), g = rig.folio(pgoff: 512)
        let acq = rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED), rel = rig.kernel.stat(DAX_NR_FOLL_PIN_RELEASED)
        let pages = VMAKit.pages(6)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a + 4096, 4, [], pages) == 4)
        #expect(f.pincount == 4 && f.refCount == 1 + 1 + 4)
        #expect(f.entireMapcount == 1 && rig.mm.rssFilePages == 512)
        // Across the folio boundary: one pin on each.
        #expect(pinUserPagesFast(rig.mm.ref, a + (2 << 20) - 4096, 2, [.write], pages + 4) == 2)
        #expect(f.pincount == 5 && g.pincount == 1)
        #expect(f.refCount == 1 + 1 + 5 && g.refCount == 1 + 1 + 1)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED) == acq + 6)
        rig.check(Self.ledger(rig, [(f, 5), (g, 1)]))
        unpinUserPages(rig.kernel.ref, pages, 6)
        #expect(f.pincount == 0 && g.pincount == 0)
        #expect(f.refCount == 2 && g.refCount == 2)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_RELEASED) == rel + 6)
        rig.check(Self.ledger(rig, []))
    }

    @Test("gup_fast_pte_range: pin_user_pages_fast over PTEs crossing a PTE table pins each page once, stops at an empty PTE and the slow path pins the rest")
    func pinFastAcrossPteTables() throws {
        let (rig, a) = try vmaFixture(order: 0, bytes: 4 << 20, length: 4 << 20)
        let pages = VMAKit.pages(800)
        defer { pages.deallocate() }
        // Entries for pages [0, 700) and [701, 800); page 700 stays empty.
        #expect(pinUserPages(rig.mm.ref, a, 700, [], pages) == 700)
        #expect(pinUserPages(rig.mm.ref, a + 701 * 4096, 99, [], pages + 700) == 99)
        unpinUserPages(rig.kernel.ref, pages, 799)
        #expect(rig.folio(pgoff: 700).refCount == 1)   // never faulted: idle
        let acq = rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED)
        // Fast: pages 200..<700 (tables of pages 0-511 and 512-1023), then the
        // slow path faults page 700 and pins 700..<800.
        #expect(pinUserPagesFast(rig.mm.ref, a + 200 * 4096, 600, [.write], pages) == 600)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED) == acq + 600)
        var pinned: [(Folio, Int64)] = []
        for i in 0..<600 {
            let pgoff = UInt64(200 + i)
            #expect(pages[i] == pfnToPage(rig.kernel.ref, rig.pgmap.ranges[0].startPfn + pgoff).raw)
            #expect(rig.folio(pgoff: pgoff).refCount == 1 + 1 + 1024, "page \(pgoff)")
            pinned.append((rig.folio(pgoff: pgoff), 1024))
        }
        #expect(rig.folio(pgoff: 199).refCount == 2 && rig.folio(pgoff: 800).refCount == 1)
        rig.check(Self.ledger(rig, pinned))
        unpinUserPages(rig.kernel.ref, pages, 600)
        rig.check(Self.ledger(rig, []))
    }

    @Test("unpin_user_pages skips nil entries and handles runs of different folios")
    func unpinSkipsNil() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10)
        let pages = VMAKit.pages(3)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a, 3, [], pages) == 3)
        let rel = rig.kernel.stat(DAX_NR_FOLL_PIN_RELEASED)
        let held = pages[1]
        pages[1] = nil
        unpinUserPages(rig.kernel.ref, pages, 3)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_RELEASED) == rel + 2)
        #expect(rig.folio(pgoff: 0).refCount == 2 && rig.folio(pgoff: 2).refCount == 2)
        #expect(rig.folio(pgoff: 1).refCount == 2 + 1024)
        unpinUserPage(rig.kernel.ref, Page(held!))
        #expect(rig.folio(pgoff: 1).refCount == 2)
        #expect(rig.kernel.drainReports().isEmpty)
        rig.check(Self.ledger(rig, []))
    }

    @Test("unpin_user_pages_dirty_lock(make_dirty) marks the folio dirty; without make_dirty it does not", arguments: [true, false])
    func unpinDirtyLock(makeDirty: Bool) throws {
        let (rig, a) = try vmaFixture(order: pmdOrder, bytes: 4 << 20, length: 4 << 20)
        let f = rig.folio(pgoff: 0)
        let pages = VMAKit.pages(2)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a, 2, [], pages) == 2)
        #expect(!f.isDirty)
        unpinUserPagesDirtyLock(rig.kernel.ref, pages, 2, makeDirty: makeDirty)
        #expect(f.isDirty == makeDirty)
        #expect(!f.head.test(DAX_PG_locked), "the folio lock is released")
        #expect(f.pincount == 0 && f.refCount == 2)
        rig.check(Self.ledger(rig, []))
    }

    @Test("GUP past the end of a VMA returns the number pinned so far; an address with no VMA is -EFAULT")
    func pinPastVmaEnd() throws {
        let (rig, a) = try vmaFixture(length: 4 * 4096, start: 0x5000_0000_0000)
        let pages = VMAKit.pages(8)
        defer { pages.deallocate() }
        let acq = rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED)
        #expect(pinUserPages(rig.mm.ref, a, 8, [], pages) == 4)
        #expect((4..<8).allSatisfy { pages[$0] == nil })
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED) == acq + 4)
        // Fast: all four via the lockless walk, then the slow path for the
        // rest fails, and the count so far is returned.
        #expect(pinUserPagesFast(rig.mm.ref, a, 8, [], pages + 4) == 4)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED) == acq + 8)
        for i in 0..<4 { #expect(rig.folio(pgoff: UInt64(i)).refCount == 2 + 2048) }
        unpinUserPages(rig.kernel.ref, pages, 8)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        for (name, fn) in Self.entryPoints {
            #expect(fn(rig.mm.ref, a + 4 * 4096, 1, [], pages) == Int(-EFAULT), "\(name)")
            #expect(fn(rig.mm.ref, 0x6000_0000_0000, 2, [], pages) == Int(-EFAULT), "\(name)")
        }
        #expect(VMAKit.counters(rig, f) == before)
        rig.check(Self.ledger(rig, []))
    }

    // MARK: try_grab_folio (mm/gup.c: try_grab_folio, try_grab_folio_fast)

    @Test("try_grab_folio on a refcount-0 folio: -ENOMEM and a WARN, nothing taken; the fast grab just fails")
    func tryGrabIdleFolio() throws {
        let rig = try FaultRig(type: .fsDax, order: 0, bytes: 2 << 20)
        let f = rig.folio(pgoff: 0)
        #expect(f.refCount == 0)
        let before = VMAKit.counters(rig, f)
        for flags: GupFlags in [.get, .pin] {
            #expect(tryGrabFolio(rig.kernel.ref, f, 1, flags) == -ENOMEM)
            let reports = rig.kernel.drainReports()
            #expect(reports.count == 1 && reports.first?.function == "try_grab_folio")
            #expect(tryGrabFolioFast(rig.kernel.ref, f.head, 1, flags) == nil)
            #expect(rig.kernel.drainReports().isEmpty)
        }
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    @Test("try_grab_folio accounting: GET adds refs; PIN adds refs x 1024 (small) or refs + pincount (large); neither flag is a no-op",
          arguments: [0, 9])
    func tryGrabAccounting(order: Int) throws {
        let rig = try FaultRig(order: order, bytes: 4 << 20)
        let f = rig.folio(pgoff: 0)
        let r0 = f.refCount
        let acq = rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED)
        #expect(tryGrabFolio(rig.kernel.ref, f, 3, []) == 0)
        #expect(f.refCount == r0)
        #expect(tryGrabFolio(rig.kernel.ref, f, 3, .get) == 0)
        #expect(f.refCount == r0 + 3 && f.pincount == 0)
        #expect(tryGrabFolio(rig.kernel.ref, f, 3, .pin) == 0)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED) == acq + 3)
        if order == 0 {
            #expect(f.refCount == r0 + 3 + 3 * 1024)
        } else {
            #expect(f.refCount == r0 + 6 && f.pincount == 3)
        }
        gupPutFolio(rig.kernel.ref, f, 3, .pin)
        gupPutFolio(rig.kernel.ref, f, 3, .get)
        #expect(f.refCount == r0 && f.pincount == 0)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_RELEASED) == 3)
        rig.check()
    }

    @Test("P2PDMA: GUP without FOLL_PCI_P2PDMA is -EREMOTEIO (slow, and fast falls back to it); with it the pin succeeds")
    func p2pdmaNeedsFlag() throws {
        let kernel = try Kernel(physBits: 40)
        let pgmap = DevPagemap(kernel: kernel, type: .p2pdma, ranges: [PhysicalRange(start: 0x1_0000_0000, size: 2 << 20)],
                               ops: DevPagemapOps(pageFree: gupNoopPageFree))
        try pgmap.memremapPages()
        let map = LinearMapping(pgmap: pgmap, characterDevice: true)
        let mm = try MM(kernel: kernel)
        let a = try mm.mmap(map.request(length: 64 << 10))
        #expect(mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
        let f = pfnToPage(kernel.ref, pgmap.ranges[0].startPfn).folio
        let before = VMAKit.counters(kernel, mm, f)
        #expect(before.ref == 1, "zero-based type: one PTE reference")
        let pages = VMAKit.pages(1)
        defer { pages.deallocate() }
        #expect(pinUserPages(mm.ref, a, 1, [], pages) == Int(-EREMOTEIO))
        #expect(getUserPages(mm.ref, a, 1, [], pages) == Int(-EREMOTEIO))
        #expect(pinUserPagesFast(mm.ref, a, 1, [], pages) == Int(-EREMOTEIO))
        #expect(pinUserPages(mm.ref, a, 1, [.longterm, .pciP2PDMA], pages) == Int(-EINVAL))
        #expect(VMAKit.counters(kernel, mm, f) == before)
        #expect(pages[0] == nil)
        #expect(pinUserPages(mm.ref, a, 1, [.pciP2PDMA], pages) == 1)
        #expect(f.refCount == 1 + 1024)
        unpinUserPages(kernel.ref, pages, 1)
        #expect(pinUserPagesFast(mm.ref, a, 1, [.pciP2PDMA], pages) == 1)
        unpinUserPages(kernel.ref, pages, 1)
        #expect(f.refCount == 1)
        expectInvariants(kernel, mms: [mm], pgmaps: [pgmap], ledger: [:])
    }

    @Test("FOLL_WRITE pin on a write-protected entry takes a write fault (mkwrite path) and then pins; mapping counters unchanged",
          arguments: [0, 9, 18])
    func writePinBreaksWriteProtect(order: Int) throws {
        let len: UInt64 = order == 0 ? 64 << 10 : UInt64(4096) << UInt64(order)
        // A mapping with write notification (pfn_mkwrite): a read fault maps
        // read-only, and mprotect back to read-write leaves a clean entry
        // read-only (can_change_pte_writable wants it dirty).
        let (rig, a) = try vmaFixture(order: order, bytes: max(len, 4 << 20), length: len, ops: .writenotify)
        #expect(rig.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0)
        try rig.mm.mprotect(a, len, [.read])
        try rig.mm.mprotect(a, len, [.read, .write])
        let entry = { order == 0 ? VMAKit.pte(rig.mm, a) : order == pmdOrder ? VMAKit.pmd(rig.mm, a) : VMAKit.pud(rig.mm, a) }
        #expect(entryPresent(entry()) && !entryWrite(entry()))
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let faults = rig.map.state.pointee.faults
        let pages = VMAKit.pages(2)
        defer { pages.deallocate() }
        // GUP-fast cannot take a write pin on a read-only entry; it falls back.
        #expect(pinUserPagesFast(rig.mm.ref, a, 1, [.write], pages) == 1)
        #expect(entryWrite(entry()) && entryDirty(entry()))
        if order > 0 { #expect(rig.map.state.pointee.faults == faults + 1) }
        var after = before
        after.pinAcquired += 1
        if order == 0 { after.ref += 1024 } else { after.ref += 1; after.pincount += 1 }
        #expect(VMAKit.counters(rig, f) == after)
        unpinUserPages(rig.kernel.ref, pages, 1)
        // The same through the slow path. The entry is dirty now: mprotect
        // back to read-write makes it writable at once
        // (MM_CP_TRY_CHANGE_WRITABLE, can_change_pte_writable on a dirty
        // shared entry), so the pin needs no fault.
        try rig.mm.mprotect(a, len, [.read])
        #expect(!entryWrite(entry()))
        try rig.mm.mprotect(a, len, [.read, .write])
        // change_huge_pud has no MM_CP_TRY_CHANGE_WRITABLE: a PUD stays read-only.
        #expect(entryWrite(entry()) == (order != pudOrder))
        #expect(pinUserPages(rig.mm.ref, a, 1, [.write], pages + 1) == 1)
        #expect(entryWrite(entry()))
        unpinUserPages(rig.kernel.ref, pages + 1, 1)
        #expect(f.refCount == before.ref && f.mapcount == before.mapcount && rig.mm.rssFilePages == before.rss)
        rig.check(Self.ledger(rig, []))
    }

    @Test("pinning the shared zero page takes no reference and counts no pin")
    func pinZeroPage() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10, shared: false)
        let zero = pfnToPage(rig.kernel.ref, 0)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(a)!
            #expect(insertPage(vma, a, zero, vma.pointee.vm_page_prot, mkwrite: false) == 0)
        }
        let before = VMAKit.counters(rig, zero.folio)
        let pages = VMAKit.pages(1)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a, 1, [], pages) == 1)
        #expect(pages[0] == zero.raw)
        #expect(VMAKit.counters(rig, zero.folio) == before)
        unpinUserPages(rig.kernel.ref, pages, 1)
        #expect(VMAKit.counters(rig, zero.folio) == before)
        rig.check()
    }
}

@Suite("GUP (mm/gup.c) fast-path rules and pin helpers")
struct GupFastRuleTests {
    @Test("GUP-fast refuses a writable long-term pin of a file mapping that needs dirty tracking and falls back to the slow path's -EFAULT")
    func fastWritableLongtermFileFallsBack() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10, ops: .writenotify)
        // A present, writable PTE: nothing else stops GUP-fast.
        #expect(rig.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(entryWrite(VMAKit.pte(rig.mm, a)))
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let pages = VMAKit.pages(1)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a, 1, [.write, .longterm], pages) == Int(-EFAULT))
        #expect(VMAKit.counters(rig, f) == before)
        let n = pinUserPagesFast(rig.mm.ref, a, 1, [.write, .longterm], pages)
        #expect(n == Int(-EFAULT))
        // gup_fast_pte_range grabs the folio (try_grab_folio_fast) before
        // gup_fast_folio_allowed refuses a file folio and puts it back: the
        // pin counters see one acquisition and one release.
        var after = before
        after.pinAcquired += 1
        after.pinReleased += 1
        #expect(VMAKit.counters(rig, f) == after)
        if n > 0 { unpinUserPages(rig.kernel.ref, pages, n) }
        #expect(f.refCount == before.ref)
        rig.check()
    }

    @Test("FOLL_NOFAULT: an unfaulted address is -EFAULT without faulting; a mapped one is returned")
    func noFault() throws {
        let (rig, a) = try vmaFixture(length: 64 << 10)
        let pages = VMAKit.pages(2)
        defer { pages.deallocate() }
        #expect(getUserPages(rig.mm.ref, a, 1, [.nofault], pages) == Int(-EFAULT))
        #expect(rig.mm.rssFilePages == 0)
        #expect(rig.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(getUserPages(rig.mm.ref, a, 2, [.nofault], pages) == 1, "stops at the first unmapped page")
        putUserPages(rig.kernel.ref, pages, 1)
        #expect(rig.folio(pgoff: 0).refCount == 2 && rig.mm.rssFilePages == 1)
        rig.check()
    }

    @Test("folio_add_pin adds one pin with the same arithmetic; on an unpinned folio it WARNs", arguments: [0, 9])
    func folioAddPinRules(order: Int) throws {
        let (rig, a) = try vmaFixture(order: order, bytes: 4 << 20, length: 4 << 20)
        let f = rig.folio(pgoff: 0)
        let pages = VMAKit.pages(1)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a, 1, [], pages) == 1)
        let r = f.refCount
        folioAddPin(rig.kernel.ref, f)
        if order == 0 {
            #expect(f.refCount == r + 1024)
        } else {
            #expect(f.refCount == r + 1 && f.pincount == 2)
        }
        #expect(rig.kernel.drainReports().isEmpty)
        unpinUserPage(rig.kernel.ref, f.head)
        unpinUserPage(rig.kernel.ref, f.head)
        #expect(f.refCount == 2 && !f.maybeDmaPinned)
        rig.check()
        // No pin before: a WARN (the pin is still added, as in the kernel).
        folioAddPin(rig.kernel.ref, f)
        #expect(rig.kernel.drainReports().map(\.function) == ["folio_add_pin"])
        unpinUserPage(rig.kernel.ref, f.head)
        #expect(f.refCount == 2)
        rig.check()
    }
}
