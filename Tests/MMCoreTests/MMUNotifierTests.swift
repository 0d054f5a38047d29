// mmu notifiers (include/linux/mmu_notifier.h, mm/mmu_notifier.c): the
// exact sequence of invalidate_range_start/end calls, with event, range and
// owner, that each core mm operation raises, and the subscription's life
// (release at exit_mmap and at unregister, no calls after unregister, the
// wait for callbacks in flight).

import Testing
@testable import MMCore
import CDaxMM
import DAXBase
import MMTestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("mmu notifiers: events, ranges and owners raised by the core", .serialized)
struct MMUNotifierTests {
    typealias Call = NotifierLog.Call

    static func start(_ e: MMUNotifierEvent, _ s: UInt64, _ t: UInt64, owner: UnsafeMutableRawPointer? = nil) -> Call {
        Call(kind: .start, event: e, start: s, end: t, owner: UInt(bitPattern: owner), blockable: true)
    }
    static func end(_ e: MMUNotifierEvent, _ s: UInt64, _ t: UInt64, owner: UnsafeMutableRawPointer? = nil) -> Call {
        Call(kind: .end, event: e, start: s, end: t, owner: UInt(bitPattern: owner), blockable: true)
    }
    static func pair(_ e: MMUNotifierEvent, _ s: UInt64, _ t: UInt64, owner: UnsafeMutableRawPointer? = nil) -> [Call] {
        [start(e, s, t, owner: owner), end(e, s, t, owner: owner)]
    }

    @Test("munmap: one MMU_NOTIFY_UNMAP over the unmapped range (unmap_region -> unmap_vmas), blockable, no owner")
    func munmapUnmap() throws {
        let k = try makeKernel()
        let (mm, a) = try NonPresentEntryTests.anon(k, written: [0, 3])
        let log = NotifierLog()
        let h = try mm.registerMMUNotifier(log.ops, context: log.context)
        try mm.munmap(a + 8192, 8192)
        #expect(log.calls == Self.pair(.unmap, a + 8192, a + 16384))
        log.clear()
        try mm.munmap(a, 64 * KiB)
        #expect(log.calls == Self.pair(.unmap, a, a + 64 * KiB))
        mm.unregisterMMUNotifier(h)
    }

    @Test("madvise(MADV_DONTNEED) and unmap_mapping_range: MMU_NOTIFY_CLEAR (zap_page_range_single) over the range, per VMA for the file")
    func clearEvents() throws {
        let k = try makeKernel()
        let (mm, a) = try NonPresentEntryTests.anon(k, written: [0, 1])
        let log = NotifierLog()
        let h = try mm.registerMMUNotifier(log.ops, context: log.context)
        try mm.madvise(a + 4096, 12288, .dontNeed)
        #expect(log.calls == Self.pair(.clear, a + 4096, a + 16384))
        mm.unregisterMMUNotifier(h)
        #expect(mm.rssAnonPages == 1)

        // A device-dax file mapped twice: one CLEAR per VMA.
        let rig = try FaultRig(type: .generic, order: 0, bytes: 2 * MiB)
        let flog = NotifierLog()
        let fh = try rig.mm.registerMMUNotifier(flog.ops, context: flog.context)
        let b1 = try rig.mm.mmap(rig.map.request(length: 64 * KiB))
        let b2 = try rig.mm.mmap(rig.map.request(length: 64 * KiB, pgoff: 4))
        #expect(rig.mm.handleFault(b1 + 4 * 4096, write: true) & DAX_VM_FAULT_ERROR == 0)
        unmapMappingRange(rig.map.file.ref, holebegin: 4 * 4096, holelen: 8192, evenCows: true)
        #expect(flog.calls == Self.pair(.clear, b1 + 4 * 4096, b1 + 6 * 4096) + Self.pair(.clear, b2, b2 + 8192))
        #expect(entryNone(EntryKit.pte(rig.mm, b1 + 4 * 4096)))
        rig.mm.unregisterMMUNotifier(fh)
    }

    @Test("mprotect: MMU_NOTIFY_PROTECTION_VMA over the changed range (change_pud_range); mremap: MMU_NOTIFY_UNMAP over the old range (move_page_tables)")
    func protectionAndMove() throws {
        let k = try makeKernel()
        let (mm, a) = try NonPresentEntryTests.anon(k, written: [0, 1])
        let log = NotifierLog()
        let h = try mm.registerMMUNotifier(log.ops, context: log.context)
        try mm.mprotect(a, 16384, [.read])
        #expect(log.calls == Self.pair(.protectionVMA, a, a + 16384))
        log.clear()
        // Growing into the rest of the VMA is impossible: the range moves.
        let b = try mm.mremap(a, oldLength: 16384, newLength: 32768, mayMove: true)
        #expect(b != a)
        #expect(log.calls == Self.pair(.unmap, a, a + 16384), "\(log.calls)")
        #expect(log.paired)
        mm.unregisterMMUNotifier(h)
    }

    @Test("munmap of part of a PMD-mapped THP: the VMA split's MMU_NOTIFY_CLEAR over the whole huge page (vma_adjust_trans_huge -> __split_huge_pmd), then MMU_NOTIFY_UNMAP over the part unmapped, each paired")
    func partialThpUnmap() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 4 * MiB, hugepage: true)
        #expect(mm.handleFault(a, write: true) == 0)
        #expect(entryLeaf(AnonFaultTests.pmd(mm, a)))
        let log = NotifierLog()
        let h = try mm.registerMMUNotifier(log.ops, context: log.context)
        try mm.munmap(a + 4096, 4096)
        let calls = log.calls
        #expect(log.paired, "\(calls.map(\.description))")
        // __split_vma -> vma_adjust_trans_huge splits the PMD at the new
        // VMA edge (CLEAR over the whole huge page) before unmap_region
        // raises UNMAP over the part that goes.
        #expect(calls == Self.pair(.clear, a, a + UInt64(pmdSize)) + Self.pair(.unmap, a + 4096, a + 8192),
                "\(calls.map(\.description))")
        #expect(mm.rssAnonPages == Int64(hpagePmdNr - 1))
        EntryKit.check(k, [mm])
        mm.unregisterMMUNotifier(h)
        try mm.munmap(a, 4 * MiB)
    }

    @Test("make_device_exclusive raises MMU_NOTIFY_EXCLUSIVE over the page with the caller's owner; the CPU fault that restores the PTE raises MMU_NOTIFY_CLEAR with no owner (remove_device_exclusive_entry)")
    func exclusiveAndRestore() throws {
        let k = try makeKernel()
        let (mm, a) = try NonPresentEntryTests.anon(k, written: [2])
        let log = NotifierLog()
        let h = try mm.registerMMUNotifier(log.ops, context: log.context)
        let owner = UnsafeMutableRawPointer(bitPattern: 0xd0_0d)
        let p = a + 2 * 4096
        mm.releaseDeviceExclusive(try mm.makeDeviceExclusive(p + 123, owner: owner))
        #expect(log.calls == Self.pair(.exclusive, p, p + 4096, owner: owner))
        log.clear()
        #expect(mm.handleFault(p, write: false) == 0)
        #expect(log.calls == Self.pair(.clear, p, p + 4096))
        mm.unregisterMMUNotifier(h)
        try mm.munmap(a, 64 * KiB)
    }

    @Test("owner filtering: a driver ignoring its own owner hears none of its make_device_exclusive ranges but every other invalidation; a second driver hears them all (the rule that keeps a driver from invalidating what it is acquiring, a livelock)")
    func ownerFiltering() throws {
        let k = try makeKernel()
        let (mm, a) = try NonPresentEntryTests.anon(k, written: [0, 1])
        let mine = UnsafeMutableRawPointer(bitPattern: 0xa11ce)!
        let driver = NotifierLog(ignoreOwner: mine)
        let other = NotifierLog()
        let h1 = try mm.registerMMUNotifier(driver.ops, context: driver.context)
        let h2 = try mm.registerMMUNotifier(other.ops, context: other.context)
        for i in 0..<2 {
            mm.releaseDeviceExclusive(try mm.makeDeviceExclusive(a + UInt64(i) * 4096, owner: mine))
        }
        #expect(driver.calls.isEmpty && driver.ignored == 2, "its own EXCLUSIVE ranges are filtered")
        #expect(other.starts == [Self.start(.exclusive, a, a + 4096, owner: mine), Self.start(.exclusive, a + 4096, a + 8192, owner: mine)])
        // Both devices lose their access on a CPU fault and on a zap.
        #expect(mm.handleFault(a, write: true) == 0)
        try mm.madvise(a + 4096, 4096, .dontNeed)
        let expected = Self.pair(.clear, a, a + 4096) + Self.pair(.clear, a + 4096, a + 8192)
        #expect(driver.calls == expected)
        #expect(Array(other.calls.suffix(4)) == expected)
        mm.unregisterMMUNotifier(h1)
        mm.unregisterMMUNotifier(h2)
        EntryKit.check(k, [mm])
        try mm.munmap(a, 64 * KiB)
    }

    @Test("exit_mmap: ->release (mmu_notifier_release), after which the subscriber is unhooked and hears nothing of the unmap (mn_hlist_release)")
    func exitMmap() throws {
        let k = try makeKernel()
        let log = NotifierLog()
        do {
            let (mm, _) = try NonPresentEntryTests.anon(k, written: [0])
            _ = try mm.registerMMUNotifier(log.ops, context: log.context)
        }
        // mn_hlist_release unhooks the subscriber after ->release: the
        // exit's unmap raises nothing it hears.
        #expect(log.calls.map(\.kind) == [.release])
        #expect(k.ramStats!.allocatedPages == 0)
    }

    @Test("unregister: ->release is called, no call follows, and unregister waits for a callback in flight (synchronize_srcu)")
    func unregisterWaits() throws {
        let k = try makeKernel()
        let (mm, a) = try NonPresentEntryTests.anon(k, written: [0])
        let log = NotifierLog()
        let h = try mm.registerMMUNotifier(log.ops, context: log.context)
        mm.unregisterMMUNotifier(h)
        #expect(log.calls.map(\.kind) == [.release])
        #expect(mm.mmuNotifierCount == 0)
        try mm.madvise(a, 4096, .dontNeed)
        #expect(log.calls.count == 1, "no call after unregister")

        // A zap that runs without mmap_lock (unmap_mapping_range) is inside
        // its start callback when unregister begins.
        let rig = try FaultRig(type: .generic, order: 0, bytes: 2 * MiB)
        let slow = NotifierLog(startDelayNanos: 300_000_000)
        let sh = try rig.mm.registerMMUNotifier(slow.ops, context: slow.context)
        let b = try rig.mm.mmap(rig.map.request(length: 64 * KiB))
        #expect(rig.mm.handleFault(b, write: true) & DAX_VM_FAULT_ERROR == 0)
        let file = SendablePtr(rig.map.file.ref)
        let t = TestThread { unmapMappingRange(file.p, holebegin: 0, holelen: 4096, evenCows: true) }
        usleep(50_000)
        rig.mm.unregisterMMUNotifier(sh)
        #expect(slow.starts == [Self.start(.clear, b, b + 4096)], "the start in flight finished before unregister returned")
        #expect(slow.calls.contains { $0.kind == .release })
        t.join()
        #expect(!slow.calls.contains { $0.kind == .end }, "its end came after the subscription was gone")
    }

    @Test("start/end pairing: over a mixed sequence every start has its end with the same event, range and owner, properly nested, all blockable")
    func pairing() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 4 * MiB, hugepage: true)
        let log = NotifierLog()
        let h = try mm.registerMMUNotifier(log.ops, context: log.context)
        #expect(mm.handleFault(a, write: true) == 0)
        mm.releaseDeviceExclusive(try mm.makeDeviceExclusive(a + 5 * 4096, owner: nil))
        #expect(mm.handleFault(a + 5 * 4096, write: true) == 0)
        try mm.mprotect(a, UInt64(pmdSize), [.read])
        try mm.madvise(a, 8192, .dontNeed)
        _ = try mm.mremap(a + UInt64(pmdSize) - 16384, oldLength: 16384, newLength: 32768, mayMove: true)
        #expect(log.paired, "\(log.calls.map(\.description))")
        #expect(log.calls.allSatisfy { $0.kind == .release || $0.blockable })
        let events = Set(log.starts.compactMap(\.event))
        #expect(events == [.clear, .exclusive, .protectionVMA, .unmap], "\(events)")
        // Nesting: MADV_DONTNEED of part of a PMD-mapped THP splits it
        // inside its own CLEAR (zap_pmd_range -> __split_huge_pmd).
        let t = a + UInt64(pmdSize)
        #expect(mm.handleFault(t, write: true) == 0 && entryLeaf(AnonFaultTests.pmd(mm, t)))
        log.clear()
        let rss0 = mm.rssAnonPages
        try mm.madvise(t, 8192, .dontNeed)
        #expect(log.calls == [Self.start(.clear, t, t + 8192), Self.start(.clear, t, t + UInt64(pmdSize)),
                              Self.end(.clear, t, t + UInt64(pmdSize)), Self.end(.clear, t, t + 8192)],
                "\(log.calls.map(\.description))")
        #expect(mm.rssAnonPages == rss0 - 2)
        EntryKit.check(k, [mm])
        try mm.munmap(a, 4 * MiB)
        #expect(log.paired && log.starts.last?.event == .unmap)
        mm.unregisterMMUNotifier(h)
    }
}
