import CDaxMM
import DAXBase
import Testing
@testable import DAXCore
@testable import MMCore

@Suite("fs/dax.c entry index: PMD-order conflicts (get_next_unlocked_entry, xas_find_conflict)")
struct EntryIndexTests {
    /// The order-0 entries of each 2 MiB window, counted slot by slot.
    static func scanned(_ m: DaxMappingRef) -> [UInt16] {
        let windows = Int((m.pointee.nslots + UInt64(hpagePmdNr) - 1) / UInt64(hpagePmdNr))
        var n = [UInt16](repeating: 0, count: windows)
        for i in 0..<Int(m.pointee.nslots) {
            let e = dax_load_u64(m.pointee.slots + i)
            if e != 0 && !DaxEntry.isPMD(e) { n[i / hpagePmdNr] += 1 }
        }
        return n
    }

    static func recorded(_ m: DaxMappingRef) -> [UInt16] {
        let windows = Int((m.pointee.nslots + UInt64(hpagePmdNr) - 1) / UInt64(hpagePmdNr))
        return (0..<windows).map { m.pointee.smallInWindow[$0] }
    }

    @Test("grab_mapping_entry at PMD order falls back iff the window holds an order-0 entry; the per-window count follows create, downgrade, fault, invalidate and delete")
    func pmdConflictFollowsSmallEntries() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "a", maxSize: 4 << 20)
        try f.allocate(pgoff: 0, pages: 1024)
        let m = f.mapping
        #expect(Self.recorded(m) == [0, 0])

        // An order-0 entry at index 5: window 0 now conflicts at PMD order.
        let (e5, s5, c5) = grabMappingEntry(m, 5, order: 0)
        #expect(c5 == 0)
        daxUnlockEntry(m, try #require(s5), e5)
        #expect(Self.recorded(m) == [1, 0] && Self.scanned(m) == [1, 0])
        let conflict = grabMappingEntry(m, 0, order: pmdOrder)
        #expect(conflict.fault == DAX_VM_FAULT_FALLBACK && conflict.slot == nil)
        // Window 1 is empty: a PMD empty entry is created there.
        let (p, ps, pc) = grabMappingEntry(m, 512, order: pmdOrder)
        #expect(pc == 0 && DaxEntry.isPMD(p) && DaxEntry.isEmpty(p))
        daxUnlockEntry(m, try #require(ps), p)
        #expect(Self.recorded(m) == [1, 0])

        // __dax_invalidate_entry removes index 5: window 0 takes a PMD again.
        #expect(daxInvalidateEntry(m, 5, trunc: true) == 1)
        #expect(Self.recorded(m) == [0, 0] && Self.scanned(m) == [0, 0])
        let (q, qs, qc) = grabMappingEntry(m, 0, order: pmdOrder)
        #expect(qc == 0 && DaxEntry.isPMD(q))
        daxUnlockEntry(m, try #require(qs), q)

        // An order-0 request inside window 1 downgrades its empty PMD entry
        // and creates a small one.
        let (d, ds, dc) = grabMappingEntry(m, 600, order: 0)
        #expect(dc == 0 && !DaxEntry.isPMD(d))
        daxUnlockEntry(m, try #require(ds), d)
        #expect(Self.recorded(m) == [0, 1] && Self.scanned(m) == [0, 1])

        // Real faults through the port: PTE faults in window 1 (a 64 KiB
        // mapping cannot take a PMD), then dax_delete_mapping_range.
        let addr = try rig.mm.mmap(f.mmapRequest(length: 64 << 10, pgoff: 512))
        for i in 0..<16 {
            let r = rig.mm.handleFault(addr + UInt64(i) * 4096, write: i % 2 == 0)
            #expect(r & DAX_VM_FAULT_ERROR == 0)
        }
        #expect(Self.recorded(m) == Self.scanned(m))
        #expect(Self.recorded(m)[1] == 17, "16 faulted pages and index 600")
        try rig.mm.munmap(addr, 64 << 10)
        try f.breakLayout()
        #expect(Self.recorded(m) == [0, 0] && Self.scanned(m) == [0, 0])
        #expect(f.nrpages == 0)
    }
}
