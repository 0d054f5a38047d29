// mm/memremap.c: get_dev_pagemap / put_dev_pagemap / zone_device_page_init
// and memunmap_pages: who holds the pgmap, and unmap waiting for them.

import Testing
@testable import MMCore
import MMTestSupport
import CDaxMM
import DAXBase

@Suite("MMCore get_dev_pagemap / put_dev_pagemap (mm/memremap.c)")
struct GetDevPagemapTests {

    @Test("a covering pfn returns the pgmap with one more reference; put drops it", arguments: [MemoryType.fsDax, .devicePrivate])
    func coveringPfn(type: MemoryType) throws {
        let k = try makeKernel()
        let pg = try mapped(k, type, size: 4 * MiB)
        let before = pg.refCount
        for pfn in [pfnOf(base), pfnOf(base) + 777, pfnOf(base + 4 * MiB) - 1] {
            let p = try #require(getDevPagemap(k, pfn: pfn))
            #expect(p == pg.ref)
            #expect(pg.refCount == before + 1)
            putDevPagemap(p)
            #expect(pg.refCount == before)
        }
    }

    @Test("a pfn in the second range of a pgmap returns it")
    func secondRange() throws {
        let k = try makeKernel()
        let pg = makePgmap(k, .generic, ranges: [phys(base, 2 * MiB), phys(base + 1 * GiB, 2 * MiB)])
        try pg.memremapPages()
        let p = try #require(getDevPagemap(k, pfn: pfnOf(base + 1 * GiB) + 5))
        #expect(p == pg.ref)
        putDevPagemap(p)
    }

    @Test("a pfn outside every pgmap returns nil and takes no reference", arguments: [
        base - 4 * KiB, base + 2 * MiB, base + 1 * GiB + 2 * MiB, UInt64(0), (UInt64(1) << 40) - 4 * KiB,
    ])
    func outside(addr: UInt64) throws {
        let k = try makeKernel()
        let pg = makePgmap(k, .fsDax, ranges: [phys(base, 2 * MiB), phys(base + 1 * GiB, 2 * MiB)])
        try pg.memremapPages()
        let before = pg.refCount
        #expect(getDevPagemap(k, pfn: pfnOf(addr)) == nil)
        #expect(pg.refCount == before)
    }

    @Test("a cached pgmap that covers the pfn is returned with no new reference")
    func cachedCovering() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 4 * MiB)
        let p = try #require(getDevPagemap(k, pfn: pfnOf(base)))
        let held = pg.refCount
        let again = getDevPagemap(k, pfn: pfnOf(base) + 1000, cached: p)
        #expect(again == p)
        #expect(pg.refCount == held, "the cached hit takes no reference")
        putDevPagemap(again)
        #expect(pg.refCount == held - 1)
    }

    @Test("a cached pgmap that does not cover the pfn is put, and the covering one is returned with a ref")
    func cachedNotCovering() throws {
        let k = try makeKernel()
        let a = try mapped(k, .fsDax, start: base, size: 2 * MiB)
        let b = try mapped(k, .generic, start: base + 512 * MiB, size: 2 * MiB)
        let aBase = a.refCount, bBase = b.refCount
        let pa = try #require(getDevPagemap(k, pfn: pfnOf(base)))
        #expect(a.refCount == aBase + 1)
        let pb = getDevPagemap(k, pfn: pfnOf(base + 512 * MiB), cached: pa)
        #expect(pb == b.ref)
        #expect(a.refCount == aBase, "the stale cached pgmap was put")
        #expect(b.refCount == bBase + 1)
        // And when nothing covers the pfn, the cached one is still put.
        let none = getDevPagemap(k, pfn: pfnOf(base + 900 * MiB), cached: pb)
        #expect(none == nil)
        #expect(b.refCount == bBase)
    }

    @Test("a cached pgmap does not cover a pfn in the hole between its ranges (get_dev_pagemap: only covering pfns hit the cache)")
    func cachedHoleBetweenRanges() throws {
        let k = try makeKernel()
        let a = makePgmap(k, .fsDax, ranges: [phys(base, 2 * MiB), phys(base + 1 * GiB, 2 * MiB)])
        try a.memremapPages()
        let inHole = try mapped(k, .generic, start: base + 512 * MiB, size: 2 * MiB)
        let aBase = a.refCount, hBase = inHole.refCount
        let pa = try #require(getDevPagemap(k, pfn: pfnOf(base)))
        let got = getDevPagemap(k, pfn: pfnOf(base + 512 * MiB), cached: pa)
        #expect(got == inHole.ref, "the pfn belongs to the pgmap in the hole, not to the cached one")
        #expect(a.refCount == aBase, "the non-covering cached pgmap must be put")
        putDevPagemap(got == inHole.ref ? got : nil)
        #expect(inHole.refCount == hBase)
    }

    @Test("put_dev_pagemap(nil) is a no-op")
    func putNil() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax)
        let before = pg.refCount
        putDevPagemap(nil)
        #expect(pg.refCount == before)
    }

    @Test("after memunmap has started (dying) lookups return nil and take no ref (get_dev_pagemap: percpu_ref_tryget_live)")
    func dyingReturnsNil() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB)
        let hold = try #require(getDevPagemap(k, pfn: pfnOf(base)))
        expectMMError(.busy) { try pg.memunmapPages(timeoutNanos: 50_000_000) }
        #expect(!pg.isLive)
        let refs = pg.refCount
        #expect(refs == 1, "only the lookup's reference is left")
        #expect(getDevPagemap(k, pfn: pfnOf(base)) == nil)
        #expect(getDevPagemap(k, pfn: pfnOf(base) + 3) == nil)
        #expect(pg.refCount == refs)
        // The holder's cached pointer still works for covering pfns.
        #expect(getDevPagemap(k, pfn: pfnOf(base) + 9, cached: hold) == hold)
        putDevPagemap(hold)
        try pg.memunmapPages(timeoutNanos: 1_000_000_000)
    }

    @Test("zone_device_page_init takes a pgmap ref, sets refcount 1 and locks the page (mm/memremap.c)", arguments: [MemoryType.devicePrivate, .deviceCoherent])
    func zoneDevicePageInitRefs(type: MemoryType) throws {
        let k = try makeKernel()
        let pg = try mapped(k, type)
        let page = pg.firstPage().advanced(by: 3)
        #expect(pg.refCount == 1)
        #expect(zoneDevicePageInit(k.ref, page))
        #expect(page.folio.refCount == 1)
        #expect(page.test(DAX_PG_locked))
        #expect(pg.refCount == 2)
        #expect(k.drainReports().isEmpty)
    }

    @Test("zone_device_page_init on a dying pgmap WARNs (percpu_ref_tryget_live fails) and goes on: refcount 1, page locked, no pgmap reference taken")
    func zoneDevicePageInitDying() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .devicePrivate)
        let allocated = pg.firstPage()
        #expect(zoneDevicePageInit(k.ref, allocated))
        expectMMError(.busy) { try pg.memunmapPages(timeoutNanos: 50_000_000) }
        let other = pg.firstPage().advanced(by: 1)
        let refs = pg.refCount
        #expect(!zoneDevicePageInit(k.ref, other))
        #expect(other.folio.refCount == 1)
        #expect(other.test(DAX_PG_locked))
        #expect(pg.refCount == refs, "no pgmap reference behind the page")
        let reports = k.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.rule.contains("percpu_ref_tryget_live") == true)
        #expect(reports.first?.function == "zone_device_page_init")
        folioPut(k.ref, allocated.folio)
        try pg.memunmapPages(timeoutNanos: 1_000_000_000)
    }
}

@Suite("MMCore memunmap_pages (mm/memremap.c)")
struct MemunmapTests {

    @Test("with no holders memunmap completes, sections go invalid and the records are gone", arguments: allTypes)
    func completes(type: MemoryType) throws {
        let k = try makeKernel()
        let pg = makePgmap(k, type, ranges: [phys(base, 4 * MiB), phys(base + 1 * GiB, 2 * MiB)], shift: pmdOrder)
        try pg.memremapPages()
        #expect(k.pfnValid(pfnOf(base)) && k.pfnValid(pfnOf(base + 1 * GiB)))
        // Nothing to wait for: a zero timeout still completes.
        try pg.memunmapPages(timeoutNanos: 0)
        #expect(!pg.isLive)
        #expect(pg.refCount == 0)
        for a in [base, base + 4 * MiB - 4 * KiB, base + 1 * GiB, base + 1 * GiB + 2 * MiB - 4 * KiB] {
            #expect(!k.pfnValid(pfnOf(a)))
            #expect(getDevPagemap(k, pfn: pfnOf(a)) == nil)
        }
        // A second unmap has nothing to unmap.
        expectMMError(.invalid) { try pg.memunmapPages(timeoutNanos: 50_000_000) }
        // The range is free for a new pgmap.
        let again = try mapped(k, .fsDax, size: 4 * MiB)
        #expect(again.firstPage().pgmap == again.ref)
    }

    @Test("memunmap of a pgmap that was never mapped is -EINVAL")
    func neverMapped() throws {
        let k = try makeKernel()
        let pg = makePgmap(k, .fsDax, ranges: [phys(base, 2 * MiB)])
        expectMMError(.invalid) { try pg.memunmapPages(timeoutNanos: 50_000_000) }
    }

    @Test("memunmap keeps a section shared with a live neighbour pgmap")
    func sharedSection() throws {
        let k = try makeKernel()
        let a = try mapped(k, .fsDax, start: base, size: 2 * MiB)
        let b = try mapped(k, .generic, start: base + 2 * MiB, size: 2 * MiB)
        b.firstPage().folio.mapping = 0x5000
        try a.memunmapPages(timeoutNanos: 1_000_000_000)
        #expect(k.pfnValid(pfnOf(base + 2 * MiB)))
        #expect(b.firstPage().pgmap == b.ref)
        #expect(b.firstPage().folio.refCount == 1)
        #expect(b.firstPage().folio.mapping == 0x5000)
        #expect(getDevPagemap(k, pfn: pfnOf(base)) == nil)
        let p = try #require(getDevPagemap(k, pfn: pfnOf(base + 2 * MiB)))
        #expect(p == b.ref)
        putDevPagemap(p)
    }

    @Test("an outstanding get_dev_pagemap makes memunmap -EBUSY within the timeout, naming the lookup (memunmap_pages: wait_for_completion)")
    func busyWithLookup() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .generic, size: 2 * MiB)
        let hold = try #require(getDevPagemap(k, pfn: pfnOf(base) + 1))
        let start = monotonicNanos()
        let e = expectMMError(.busy) { try pg.memunmapPages(timeoutNanos: 50_000_000) }
        let elapsed = monotonicNanos() - start
        #expect(elapsed >= 50_000_000, "it waited the timeout")
        let text = e.map(message) ?? ""
        #expect(text.contains("get_dev_pagemap"), "\(text)")
        #expect(text.contains("1 get_dev_pagemap lookup"), "\(text)")
        // Still dying, records still there for the holder.
        #expect(k.pfnValid(pfnOf(base)))
        #expect(pg.firstPage().pgmap == pg.ref)
        putDevPagemap(hold)
        try pg.memunmapPages(timeoutNanos: 1_000_000_000)
        #expect(!k.pfnValid(pfnOf(base)))
        #expect(pg.refCount == 0)
    }

    /// memunmap_pages waits without a deadline (the kernel's
    /// wait_for_completion); the other thread puts only once it sleeps.
    @Test("memunmap completes once another thread puts the last lookup")
    func completesAfterConcurrentPut() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB)
        let hold = SendablePtr(try #require(getDevPagemap(k, pfn: pfnOf(base))))
        let unmapped = Shared(false)
        let t = TestThread {
            waitUntilAsleep(k.ref, on: UnsafeRawPointer(pg.ref), orUntil: { unmapped.value })
            #expect(!unmapped.value, "memunmap returned with a lookup outstanding")
            putDevPagemap(hold.p)
        }
        try pg.memunmapPages(timeoutNanos: -1)
        unmapped.withLock { $0 = true }
        t.join()
        #expect(!pg.isLive && pg.refCount == 0)
        #expect(!k.pfnValid(pfnOf(base)))
    }

    @Test("an allocated PRIVATE folio blocks memunmap (-EBUSY naming the pfn) until folio_put frees it (memunmap_pages; invariant 13)")
    func privateFolioBlocks() throws {
        let k = try makeKernel()
        let log = FreeLog()
        let pg = try mapped(k, .devicePrivate, size: 2 * MiB, log: log)
        let pfn = pfnOf(base) + 0x2a
        let page = pfnToPage(k.ref, pfn)
        #expect(zoneDevicePageInit(k.ref, page))
        let e = expectMMError(.busy) { try pg.memunmapPages(timeoutNanos: 50_000_000) }
        let text = e.map(message) ?? ""
        #expect(text.contains("pfn " + hex(pfn)), "\(text)")
        #expect(!text.contains("get_dev_pagemap lookup"), "no lookup is outstanding: \(text)")
        #expect(log.calls == 0)
        #expect(pg.refCount == 1, "only the allocation's reference is left")
        folioPut(k.ref, page.folio)
        #expect(log.calls == 1)
        #expect(log.lastPage == page.raw)
        #expect(log.lastOwner == log.owner)
        #expect(pg.refCount == 0)
        try pg.memunmapPages(timeoutNanos: 1_000_000_000)
        #expect(!k.pfnValid(pfn))
    }

    @Test("a COHERENT folio blocks memunmap the same way")
    func coherentFolioBlocks() throws {
        let k = try makeKernel()
        let log = FreeLog()
        let pg = try mapped(k, .deviceCoherent, size: 2 * MiB, log: log)
        let page = pg.firstPage().advanced(by: 100)
        #expect(zoneDevicePageInit(k.ref, page))
        #expect(folioGet(k.ref, page.folio))
        expectMMError(.busy) { try pg.memunmapPages(timeoutNanos: 50_000_000) }
        folioPut(k.ref, page.folio)
        expectMMError(.busy) { try pg.memunmapPages(timeoutNanos: 50_000_000) }
        #expect(log.calls == 0)
        folioPut(k.ref, page.folio)
        #expect(log.calls == 1)
        try pg.memunmapPages(timeoutNanos: 1_000_000_000)
    }

    @Test("FS_DAX folios with references do not hold the pgmap: memunmap does not wait for them (memunmap_pages)")
    func fsdaxFolioRefsDoNotBlock() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB)
        pg.firstPage().folio.refInc()
        try pg.memunmapPages(timeoutNanos: 1_000_000_000)
        #expect(!pg.isLive)
    }

    /// Two threads race memunmap_pages on one live pgmap while a lookup is
    /// held, so neither may tear down (a racing teardown would fault on the
    /// depopulated vmemmap). percpu_ref_kill and the creation-ref drop must
    /// happen once: afterwards exactly the lookup's reference is left.
    @Test("concurrent memunmap calls kill the ref and drop the creation references once (memunmap_pages)")
    func concurrentUnmap() throws {
        var rounds = 0
        for _ in 0..<300 {
            rounds += 1
            let k = try makeKernel()
            let pg = try mapped(k, .fsDax, size: 2 * MiB)
            let hold = try #require(getDevPagemap(k, pfn: pfnOf(base)))
            let kinds = Shared<[String]>([])
            let ready = Shared(0)
            let threads = (0..<2).map { _ in
                TestThread {
                    ready.withLock { $0 += 1 }
                    while ready.value < 2 {}
                    do {
                        try pg.memunmapPages(timeoutNanos: 5_000_000)
                        kinds.withLock { $0.append("ok") }
                    } catch let e as MMError {
                        kinds.withLock { $0.append(kind(e).rawValue) }
                    } catch {}
                }
            }
            threads.forEach { $0.join() }
            let refs = pg.refCount
            #expect(refs == 1, "after \(rounds) round(s): creation refs dropped more than once, ref = \(refs)")
            #expect(kinds.value == ["busy", "busy"])
            if refs != 1 { break }   // the pgmap can never complete; deinit tears it down
            putDevPagemap(hold)
            try pg.memunmapPages(timeoutNanos: 1_000_000_000)
        }
    }
}
