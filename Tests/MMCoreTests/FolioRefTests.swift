// folio_get / folio_put (include/linux/mm.h) and free_zone_device_folio
// (mm/memremap.c) per memory type, plus the VM_BUG report folio_get records
// on a free folio (as the pre-series PMD insert hit at refcount 0).

import Testing
@testable import MMCore
import MMTestSupport
import CDaxMM
import DAXBase

@Suite("MMCore free_zone_device_folio (mm/memremap.c)")
struct FreeZoneDeviceFolioTests {

    @Test("GENERIC: get then put leaves 1 without freeing; the put to 0 resets to 1 and keeps mapping (free_zone_device_folio)",
          arguments: [0, pmdOrder])
    func generic(shift: Int) throws {
        let k = try makeKernel()
        let pg = try mapped(k, .generic, size: 2 * MiB, shift: shift)
        let f = pg.firstPage().folio
        f.mapping = 0xfeed000
        f.index = 42
        let refs = pg.refCount
        let seq = wakeSeq(k, f.raw)
        #expect(f.refCount == 1)
        #expect(folioGet(k.ref, f))
        #expect(f.refCount == 2)
        folioPut(k.ref, f)
        #expect(f.refCount == 1)
        folioPut(k.ref, f)   // 1 -> 0: free_zone_device_folio
        #expect(f.refCount == 1, "device-dax folios are reset to 1")
        #expect(f.mapping == 0xfeed000, "device DAX keeps its mapping")
        #expect(f.index == 42)
        #expect(pg.refCount == refs, "no pgmap reference moves")
        #expect(wakeSeq(k, f.raw) == seq, "GENERIC does not wake_up_var")
        #expect(k.drainReports().isEmpty)
    }

    @Test("GENERIC: folio_put_refs(n) to 0 also resets to 1")
    func genericPutRefs() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .generic, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        f.refAdd(511)
        folioPutRefs(k.ref, f, 512)
        #expect(f.refCount == 1)
        #expect(k.drainReports().isEmpty)
    }

    @Test("FS_DAX: the put to 0 stays 0, keeps mapping, calls no op and wakes the head page (free_zone_device_folio)", arguments: [0, pmdOrder])
    func fsdax(shift: Int) throws {
        let k = try makeKernel()
        let log = FreeLog()
        // FS_DAX has no page_free in 6.15; give it one anyway to prove it is not called.
        let pg = DevPagemap(kernel: k, type: .fsDax, ranges: [phys(base, 2 * MiB)], vmemmapShift: shift,
                            ops: recordingOps(migrateToRam: false), owner: log.owner)
        try pg.memremapPages()
        let f = pg.firstPage().folio
        let refs = pg.refCount
        f.mapping = 0xf11e000
        f.refInc()                 // fs/dax: folio_ref_inc 0 -> 1
        #expect(folioGet(k.ref, f))
        #expect(f.refCount == 2)
        let seq = wakeSeq(k, f.raw)
        folioPut(k.ref, f)
        #expect(wakeSeq(k, f.raw) == seq, "2 -> 1 frees nothing")
        folioPut(k.ref, f)
        #expect(f.refCount == 0, "FS DAX idles at 0")
        #expect(wakeSeq(k, f.raw) == seq &+ 1, "wake_up_var(head page) exactly once")
        #expect(f.mapping == 0xf11e000, "fs-dax clears mapping on disassociation, not on free")
        #expect(log.calls == 0)
        #expect(pg.refCount == refs)
        #expect(k.drainReports().isEmpty)
    }

    /// The waiter has no deadline (wait_var_event); the test puts only once
    /// it sleeps, so no sleep length decides the verdict.
    @Test("FS_DAX: a thread waiting for the folio to go idle returns true after the last put")
    func fsdaxWaiterWoken() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        f.refInc()
        let result = Shared<Bool?>(nil)
        let t = TestThread {
            let ok = waitVarEvent(k.ref, UnsafeRawPointer(f.raw), timeoutNanos: -1) { f.refCount == 0 }
            result.withLock { $0 = ok }
        }
        waitUntilAsleep(k.ref, on: UnsafeRawPointer(f.raw), orUntil: { result.value != nil })
        #expect(result.value == nil, "the waiter must still be blocked while the folio is busy")
        let seq = wakeSeq(k, f.raw)
        folioPut(k.ref, f)
        #expect(f.refCount == 0 && wakeSeq(k, f.raw) == seq &+ 1, "the last put woke the variable")
        if f.refCount != 0 { f.setCount(0); wakeUpVar(k.ref, f.raw) }   // after a failure: release the waiter
        t.join()
        #expect(result.value == true)
    }

    @Test("FS_DAX: with no put the waiter times out and returns false")
    func fsdaxWaiterTimesOut() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB)
        let f = pg.firstPage().folio
        f.refInc()
        let start = monotonicNanos()
        let ok = waitVarEvent(k.ref, UnsafeRawPointer(f.raw), timeoutNanos: 50_000_000) { f.refCount == 0 }
        let elapsed = monotonicNanos() - start
        #expect(!ok)
        #expect(elapsed >= 50_000_000, "it waited the timeout")
        #expect(f.refCount == 1)
    }

    @Test("PRIVATE/COHERENT: the put to 0 calls page_free with the owner, drops the pgmap ref and clears mapping (free_zone_device_folio)",
          arguments: [MemoryType.devicePrivate, .deviceCoherent])
    func privateCoherent(type: MemoryType) throws {
        let k = try makeKernel()
        let log = FreeLog()
        let pg = try mapped(k, type, size: 2 * MiB, log: log)
        let page = pg.firstPage().advanced(by: 7)
        let f = page.folio
        #expect(pg.refCount == 1)
        #expect(zoneDevicePageInit(k.ref, page))
        #expect(pg.refCount == 2)
        f.mapping = 0xa000
        #expect(folioGet(k.ref, f))
        folioPut(k.ref, f)
        #expect(log.calls == 0)
        #expect(pg.refCount == 2)
        folioPut(k.ref, f)
        #expect(log.calls == 1)
        #expect(log.lastPage == page.raw)
        #expect(log.lastOwner == log.owner, "page_free sees the pgmap owner")
        #expect(pg.refCount == 1, "the allocation's pgmap reference is dropped")
        #expect(f.refCount == 0)
        #expect(f.mapping == 0, "mapping is cleared for every type but FS_DAX and GENERIC")
        #expect(k.drainReports().isEmpty)
    }

    @Test("PRIVATE without page_free at free time WARNs, calls nothing and keeps the pgmap ref (free_zone_device_folio)")
    func privateMissingOpAtFree() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .devicePrivate, size: 2 * MiB)
        let page = pg.firstPage()
        #expect(zoneDevicePageInit(k.ref, page))
        pg.ref.pointee.page_free = nil
        folioPut(k.ref, page.folio)
        let reports = k.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.rule.contains("page_free") == true)
        #expect(reports.first?.function == "free_zone_device_folio")
        #expect(pg.refCount == 2, "the put_dev_pagemap is skipped with the op")
    }

    @Test("P2PDMA: set to 1 by the allocator, the put to 0 calls page_free and clears mapping (free_zone_device_folio; p2pmem_alloc_mmap)")
    func p2pdma() throws {
        let k = try makeKernel()
        let log = FreeLog()
        let pg = try mapped(k, .p2pdma, size: 2 * MiB, log: log)
        let page = pg.firstPage().advanced(by: 9)
        let f = page.folio
        let refs = pg.refCount
        #expect(f.refCount == 0)
        f.setCount(1)           // p2pmem_alloc_mmap
        f.mapping = 0xb000
        #expect(folioGet(k.ref, f))   // vm_insert_page
        folioPut(k.ref, f)            // the allocator's put
        #expect(log.calls == 0)
        folioPut(k.ref, f)            // zap
        #expect(log.calls == 1)
        #expect(log.lastPage == page.raw)
        #expect(log.lastOwner == log.owner)
        #expect(f.refCount == 0)
        #expect(f.mapping == 0)
        #expect(pg.refCount == refs, "the core drops no pgmap ref for P2PDMA; the op does")
        #expect(k.drainReports().isEmpty)
    }

    @Test("P2PDMA without page_free: the put to 0 WARNs and calls nothing")
    func p2pdmaNoOp() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .p2pdma, size: 2 * MiB)
        let f = pg.firstPage().folio
        f.setCount(1)
        folioPut(k.ref, f)
        #expect(f.refCount == 0)
        let reports = k.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.rule.contains("page_free") == true)
    }

    @Test("a put below zero reports and frees nothing")
    func putBelowZero() throws {
        let k = try makeKernel()
        let log = FreeLog()
        let pg = try mapped(k, .devicePrivate, size: 2 * MiB, log: log)
        let f = pg.firstPage().folio
        folioPut(k.ref, f)
        #expect(f.refCount == -1)
        #expect(log.calls == 0)
        #expect(pg.refCount == 1)
        let reports = k.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.rule.contains("< 0") == true)
        f.setCount(0)
    }
}

@Suite("MMCore folio_get on a free folio (include/linux/mm.h)")
struct FolioGetTests {

    @Test("folio_get at refcount 0 on an idle 2M FS_DAX folio refuses and dumps the page (folio_get's VM_BUG_ON_FOLIO, as in the pre-series PMD insert)")
    func idleFsdaxFolio() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        #expect(f.refCount == 0)
        #expect(!folioGet(k.ref, f))
        #expect(f.refCount == 0, "the count is left alone")
        let reports = k.drainReports()
        #expect(reports.count == 1)
        let d = try #require(reports.first)
        #expect(d.refcount == 0)
        #expect(d.mapcount == 0)
        #expect(d.rule.contains("folio_ref_count(folio) + 127u <= 127u"), "\(d.rule)")
        #expect(d.function == "folio_get")
        #expect(d.flags & (1 << UInt64(DAX_PG_reserved.rawValue)) != 0)
        #expect(d.flags & (1 << UInt64(DAX_PG_head.rawValue)) != 0)
        #expect(d.flagNames.split(separator: "|").contains("reserved"))
        #expect(d.flagNames.split(separator: "|").contains("head"))
        #expect(d.order == pmdOrder)
        #expect(d.pgmapType == MemoryType.fsDax.rawValue)
        #expect(d.pgmapTypeName == "MEMORY_DEVICE_FS_DAX")
        #expect(d.pfn == pfnOf(base) && d.headPfn == pfnOf(base))
        #expect(d.description.hasPrefix("page: refcount:0 mapcount:0 mapping:"), "\(d.description)")
        #expect(d.description.contains("page dumped because:"))
        #expect(d.description.contains("order:9"))
        #expect(d.description.contains("reserved"))
        #expect(k.drainReports().isEmpty, "drain empties the ring")
    }

    @Test("folio_get through a tail page reports the head folio")
    func throughTail() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB, shift: pmdOrder)
        let tail = pg.firstPage().advanced(by: 17)
        #expect(!folioGet(k.ref, tail.folio))
        let d = try #require(k.drainReports().first)
        #expect(d.headPfn == pfnOf(base))
        #expect(d.order == pmdOrder)
    }

    @Test("folio_get at refcount 0 on a small folio reports order 0 without head")
    func idleSmallFolio() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB)
        let f = pg.firstPage().advanced(by: 1).folio
        #expect(!folioGet(k.ref, f))
        let reports = k.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.order == 0)
        #expect((reports.first?.flags ?? 0) & (1 << UInt64(DAX_PG_head.rawValue)) == 0)
        #expect(reports.first?.flagNames.contains("head") == false)
        #expect(reports.first?.pfn == pfnOf(base) + 1)
    }

    @Test("folio_get near overflow (−127…−1) trips the same check", arguments: [Int32(-1), -5, -127])
    func nearOverflow(count: Int32) throws {
        let k = try makeKernel()
        let pg = try mapped(k, .generic, size: 2 * MiB)
        let f = pg.firstPage().folio
        f.setCount(count)
        #expect(!folioGet(k.ref, f))
        #expect(f.refCount == count)
        let reports = k.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.refcount == count)
        #expect(reports.first?.rule.contains("+ 127u <= 127u") == true)
        f.setCount(1)
    }

    @Test("folio_get at −128 is outside the checked window and increments")
    func belowWindow() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .generic, size: 2 * MiB)
        let f = pg.firstPage().folio
        f.setCount(-128)
        #expect(folioGet(k.ref, f))
        #expect(f.refCount == -127)
        #expect(k.drainReports().isEmpty)
        f.setCount(1)
    }

    @Test("folio_get at 1 succeeds with no report", arguments: [MemoryType.generic, .fsDax])
    func atOne(type: MemoryType) throws {
        let k = try makeKernel()
        let pg = try mapped(k, type, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        f.setCount(1)
        #expect(folioGet(k.ref, f))
        #expect(f.refCount == 2)
        #expect(k.drainReports().isEmpty)
    }

    @Test("the report ring keeps the newest 64 reports and drains oldest first")
    func reportRing() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB)
        for i in 0..<70 { _ = folioGet(k.ref, pg.firstPage().advanced(by: i).folio) }
        let reports = k.drainReports()
        #expect(reports.count == Int(DAX_REPORT_RING))
        #expect(reports.first?.pfn == pfnOf(base) + 6)
        #expect(reports.last?.pfn == pfnOf(base) + 69)
        #expect(reports.map(\.pfn) == reports.map(\.pfn).sorted())
        #expect(k.ref.pointee.report_lost == 6)
    }
}
