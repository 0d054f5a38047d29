// mm/memremap.c and mm/mm_init.c through the port: memremap_pages and
// memunmap_pages with the pgmap's percpu_ref counts, the struct pages
// memmap_init_zone_device leaves, and deferred struct-page init of a 1 TiB
// device bound from the emulated device.

import CDaxMM
import DAXBase
import DAXCore
import DAXDevice
import DAXRuntime
import MMCore
import MMTestSupport

/// The life of a pgmap, for MEMORY_DEVICE_GENERIC at vmemmap_shift 9 (a 2M
/// device-dax) and MEMORY_DEVICE_FS_DAX at 0 (pmem), 4 MiB each:
///  - memremap_pages: the percpu_ref holds its initial reference plus one
///    per folio (percpu_ref_get_many over the range's folios);
///  - __init_zone_device_page / memmap_init_compound: every page is
///    ZONE_DEVICE and PG_reserved and points at the pgmap; a head's refcount
///    is 1 for GENERIC and 0 for FS_DAX (zero-based after the series), tails
///    0 and naming their head, order = vmemmap_shift, mapcount 0;
///  - get_dev_pagemap takes a reference (none for a pfn outside), and while
///    it is held memunmap_pages waits (the port: EBUSY after the wait,
///    naming the lookup); the dying pgmap refuses new lookups
///    (percpu_ref_tryget_live);
///  - put_dev_pagemap lets memunmap_pages finish: no reference, the sections
///    gone (pfn_valid false), the kernel's section counts back.
func memremapLifecycleScenario(_ t: TestContext, rules: KernelRules = .kernel) throws {
    let k = try t.must("a port kernel") { try Kernel(physBits: 40) }
    let sections0 = (k.initialisedSections, k.deferredSections)
    for (type, shift, base) in [(MemoryType.generic, pmdOrder, UInt64(0x1_0000_0000)), (.fsDax, 0, UInt64(0x2_0000_0000))] {
        let name = "\(type) vmemmap_shift \(shift)"
        let size: UInt64 = 4 << 20
        let pg = DevPagemap(kernel: k, type: type, ranges: [PhysicalRange(start: base, size: size)], vmemmapShift: shift)
        t.expectEqual(pg.refCount, 0, "\(name): percpu_ref before memremap_pages")
        try t.must("memremap_pages (\(name))") { _ = try pg.memremapPages() }
        let folios = Int64(size >> UInt64(pageShift + shift))
        t.expectEqual(pg.refCount, 1 + folios, "\(name): percpu_ref after memremap_pages (initial + one per folio)")
        t.expect(pg.isLive, "\(name): live")
        let idle = type == .generic ? rules.devdaxIdleRefcount : rules.fsdaxIdleRefcount
        let startPfn = base >> UInt64(pageShift)
        var bad: [String] = []
        for pfn in stride(from: startPfn, to: startPfn + (size >> UInt64(pageShift)), by: 1 << shift) {
            let head = pfnToPage(k.ref, pfn)
            let folio = head.folio
            if !(head.isZoneDevice && head.isReserved && head.pgmap == pg.ref) { bad.append("pfn \(hex(pfn)): flags \(hex(head.flags)) or pgmap wrong") }
            if folio.raw != head.raw { bad.append("pfn \(hex(pfn)) is not a folio head") }
            if folio.refCount != idle { bad.append("pfn \(hex(pfn)) refcount \(folio.refCount)") }
            if folio.order != shift || folio.mapcount != 0 || folio.pincount != 0 { bad.append("pfn \(hex(pfn)) order \(folio.order) mapcount \(folio.mapcount)") }
            for i in 1..<(1 << shift) {
                let tail = head.advanced(by: i)
                if !(tail.isTail && tail.compoundHead == head && tail.refcountRaw == 0 && tail.isZoneDevice && tail.isReserved) {
                    bad.append("tail \(hex(pfn + UInt64(i))): refcount \(tail.refcountRaw), head \(tail.compoundHead == head)")
                    break
                }
            }
            if bad.count > 4 { break }
        }
        t.expect(bad.isEmpty, "\(name): struct pages as __init_zone_device_page/memmap_init_compound leave them (refcount \(idle)): \(bad.joined(separator: "; "))")

        let hold = try t.require(getDevPagemap(k, pfn: startPfn + 3), "\(name): get_dev_pagemap inside the range found nothing")
        t.expect(hold == pg.ref, "\(name): get_dev_pagemap returns the covering pgmap")
        t.expectEqual(pg.refCount, 2 + folios, "\(name): percpu_ref with a get_dev_pagemap reference")
        t.expect(getDevPagemap(k, pfn: startPfn + (size >> UInt64(pageShift))) == nil, "\(name): get_dev_pagemap past the range")
        t.expectEqual(pg.refCount, 2 + folios, "\(name): a miss takes no reference")
        do {
            try pg.memunmapPages(timeoutNanos: 20_000_000)
            t.expect(false, "\(name): memunmap_pages finished with a get_dev_pagemap reference held")
        } catch {
            t.expect(error.code == EBUSY && error.description.contains("get_dev_pagemap lookup"),
                     "\(name): memunmap_pages waits for the lookup (wait_for_completion): \(error)")
        }
        t.expect(!pg.isLive && getDevPagemap(k, pfn: startPfn) == nil, "\(name): a dying pgmap refuses lookups (percpu_ref_tryget_live)")
        t.expectEqual(pg.refCount, 1, "\(name): only the lookup's reference is left after percpu_ref_kill and the creation puts")
        t.expect(k.pfnValid(startPfn), "\(name): the struct pages stay while memunmap_pages waits")
        putDevPagemap(hold)
        try t.must("memunmap_pages (\(name)) after put_dev_pagemap") { try pg.memunmapPages(timeoutNanos: 1_000_000_000) }
        t.expectEqual(pg.refCount, 0, "\(name): percpu_ref after memunmap_pages")
        t.expect(!k.pfnValid(startPfn) && !k.pfnValid(startPfn + (size >> UInt64(pageShift)) - 1), "\(name): the sections are gone")
    }
    t.expect(k.initialisedSections == sections0.0 && k.deferredSections == sections0.1,
             "section counts back to \(sections0): \(k.initialisedSections), \(k.deferredSections)")
    let r = k.drainReports()
    t.expect(r.isEmpty, "debug reports: \(r.map(\.description))")
}

/// Deferred struct-page init (memmap_init_zone_device deferred to the first
/// pfn_to_page of a section, as DEFERRED_STRUCT_PAGE_INIT does for RAM): a
/// 1 TiB emulated device (a sparse memfd), 2M aligned, bound through
/// DAXRuntime in device-dax mode (dev_dax_probe -> memremap_pages):
///  - the bind initialises no section of the device (8192 deferred) and
///    no page of its vmemmap is resident (eager init would write 16 GiB of
///    struct pages);
///  - a CPU write through a window at 512 GiB is served by the port's
///    handle_mm_fault: one PMD, and exactly one more section initialised
///    (the folio's), with the folio's counters (refcount 2, mapcount 1);
///  - the binding's invariants hold (the checker skips deferred sections);
///  - kill_dev_dax gives everything back: no deferred or initialised
///    section of the device left.
func memremapDeferredTerabyteScenario(_ t: TestContext, rules: KernelRules = .kernel) throws {
    let tib: UInt64 = 1 << 40
    try t.must("install the fault guards") { try installFaultGuards() }
    let rss0 = residentBytes() ?? 0
    let dev = try t.must("an emulated device of 1 TiB, align 2M") { try EmulatedDevice(size: tib, align: .pmd) }
    let b = try t.must("bind it in device-dax mode (dev_dax_probe)") { try Binding(device: dev, mode: .devdax) }
    t.track(b)
    let k = b.kernel
    let rss1 = residentBytes() ?? 0
    let s0 = k.initialisedSections
    t.expectEqual(k.deferredSections, Int(tib >> 27), "sections deferred by the bind (1 TiB / 128 MiB)")
    t.expect(s0 <= 1, "no section of the device initialised by the bind (\(s0) initialised: the zero page's)")
    // The process's resident set (other threads of an in-process run may
    // allocate meanwhile: a loose bound); the vmemmap's own pages (mincore)
    // are the exact measure.
    t.expect(rss1 - rss0 < 64 << 20, "binding 1 TiB made \((rss1 - rss0) >> 20) MiB resident")
    let range = dev.ranges[0].range
    t.expectEqual(k.residentVmemmapPages(startPfn: range.startPfn, endPfn: range.endPfn), 0, "resident vmemmap pages of the device")

    let offset: UInt64 = 512 << 30
    let w = try t.must("a 2 MiB window at 512 GiB") { try b.openWindow(length: 2 << 20, offset: offset) }
    t.atCleanup("close the window") { w.closeWindow() }
    let pfn = (range.start + offset) >> UInt64(pageShift)
    t.expect(k.sectionState(pfn: pfn) == .deferred, "the window's section is deferred before the access")
    let r = guardedAccess(w.address(0x1000), write: true, value: 0xdaa5_0001)
    t.expect(r.ok, "a CPU write through the window: \(r)")
    t.expectEqual(w.translation(0x1000)?.level, .pmd, "the port mapped one PMD")
    t.expectEqual(k.initialisedSections, s0 + 1, "sections initialised by the fault (the folio's only)")
    t.expectEqual(k.deferredSections, Int(tib >> 27) - 1, "sections still deferred")
    t.expect(k.sectionState(pfn: pfn) == .present && k.sectionState(pfn: pfn - 1) == .deferred
             && k.sectionState(pfn: pfn + UInt64(pagesPerSection)) == .deferred, "only the faulted section is initialised")
    let folio = try t.require(b.folio(physical: range.start + offset), "no folio at 512 GiB")
    t.expect(folio.refCount == rules.devdaxIdleRefcount + rules.refsPerEntry && folio.mapcount == rules.mapcountPerEntry
             && folio.order == pmdOrder, "the faulted folio: refcount \(folio.refCount), mapcount \(folio.mapcount), order \(folio.order)")
    t.expectEqual(b.mm.rssFilePages, Int64(hpagePmdNr), "MM_FILEPAGES")
    let r2 = guardedAccess(w.address(0x1000), write: false)
    t.expect(r2.ok && r2.value == 0xdaa5_0001, "the word reads back: \(r2), \(hex(r2.value))")
    let broken = b.checkInvariants()
    t.expect(broken.isEmpty, "the binding's invariants: \(broken.joined(separator: "\n"))")
    w.closeWindow()
    t.expect(folio.refCount == rules.devdaxIdleRefcount && folio.mapcount == 0 && b.mm.rssFilePages == 0, "closing the window unmapped the PMD")
    try t.must("kill_dev_dax and memunmap_pages") { try b.deviceGone() }
    t.expect(k.deferredSections == 0 && k.initialisedSections == s0, "the device's sections are gone: \(k.deferredSections) deferred, \(k.initialisedSections) initialised")
}
