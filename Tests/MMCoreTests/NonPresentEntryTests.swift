// Non-present PTEs that name a pfn (include/linux/swapops.h, 6.15 types):
// device-exclusive, device-private and migration entries, hwpoison and PTE
// markers. What zap (zap_nonpresent_ptes), mremap (move_ptes), mprotect
// (change_pte_range), GUP (follow_page_pte, gup_fast_pte_range) and
// do_swap_page do with each, and the x86-64 encoding
// (arch/x86/include/asm/pgtable_64.h: __swp_entry, _PAGE_SWP_*).

import Testing
@testable import MMCore
import CDaxMM
import DAXBase

#if canImport(Glibc)
import Glibc
#endif

@Suite("non-present entries: device-exclusive, device-private, migration, hwpoison, markers")
struct NonPresentEntryTests {
    /// An anon VMA of 64 KiB with a written page at each of `written`
    /// offsets (pages), all in one PTE table.
    static func anon(_ k: Kernel, written: [Int]) throws -> (MM, UInt64) {
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        for i in written { #expect(mm.handleFault(a + UInt64(i) * 4096, write: true) == 0) }
        return (mm, a)
    }

    /// An anon mapping with a device-exclusive entry at `a`, a writable
    /// device-private entry (of a device-private pgmap's first page) at
    /// a + 4K and a migration entry at a + 8K (its folio, locked and held by
    /// the caller as the migration would, returned).
    static func threeEntries(_ k: Kernel) throws -> (DevPagemap, MM, UInt64, Folio) {
        let (pg, _) = try EntryKit.devicePrivatePgmap(k)
        let (mm, a) = try Self.anon(k, written: [0, 2])
        mm.releaseDeviceExclusive(try mm.makeDeviceExclusive(a, owner: nil))
        try Self.nonePTE(mm, a + 4096)
        EntryKit.installDevicePrivate(mm, a + 4096, page: pg.firstPage(), writable: true)
        return (pg, mm, a, EntryKit.installMigration(mm, a + 8192))
    }

    /// A none PTE in an existing table at `a` (a read fault's zero page,
    /// zapped).
    static func nonePTE(_ mm: MM, _ a: UInt64) throws {
        #expect(mm.handleFault(a, write: false) == 0)
        try mm.madvise(a, 4096, .dontNeed)
        #expect(entryNone(EntryKit.pte(mm, a)))
    }

    // MARK: encoding

    @Test("__swp_entry / swp_entry_to_pte (x86-64): type in bits 59-63, the offset inverted in bits 9-58, soft-dirty bit 1, uffd-wp bit 2, exclusive bit 3, never present or PROT_NONE; pte_to_swp_entry undoes it with the flag bits set")
    func encoding() {
        #expect(PT.swpSoftDirty == 1 << 1 && PT.swpUffdWp == 1 << 2 && PT.swpExclusive == 1 << 3)
        let pfn: UInt64 = 0x1_2345
        let entries: [SwapEntry] = [
            makeDeviceExclusiveEntry(pfn), makeReadableDevicePrivateEntry(pfn), makeWritableDevicePrivateEntry(pfn),
            makeReadableMigrationEntry(pfn), makeReadableExclusiveMigrationEntry(pfn), makeWritableMigrationEntry(pfn),
            makeMigrationEntryDirty(makeMigrationEntryYoung(makeWritableMigrationEntry(pfn))), makeHwpoisonEntry(pfn),
        ]
        var types = Set<UInt32>()
        for e in entries {
            let pte = swpEntryToPte(e)
            #expect(pte & PT.present == 0 && pte & (1 << 8) == 0, "\(e): neither _PAGE_PRESENT nor _PAGE_PROTNONE")
            #expect(pte & 0x1ff == 0, "\(e): the low 9 bits carry only the software flags")
            #expect(UInt32(pte >> 59) == e.type, "\(e): type in bits 59-63")
            let field = (pte >> 9) & ((1 << 50) - 1)
            #expect(field == ~e.offset & ((1 << 50) - 1), "\(e): the offset is stored inverted (L1TF)")
            #expect(isSwapPte(pte) && !entryPresent(pte))
            #expect(pteToSwpEntry(pte) == e)
            let flagged = pteSwpMkexclusive(pteSwpMkuffdWp(pteSwpMksoftDirty(pte)))
            #expect(flagged == pte | 0b1110)
            #expect(pteSwpSoftDirty(flagged) && pteSwpUffdWp(flagged) && pteSwpExclusive(flagged))
            #expect(pteToSwpEntry(flagged) == e, "the flag bits are not part of the entry")
            #expect(isPfnSwapEntry(e) && swpOffsetPfn(e) == pfn)
            types.insert(e.type)
        }
        #expect(types.count == 7, "one type each, young/dirty migration bits live in the offset")
        #expect(isMigrationEntryYoung(entries[6]) && isMigrationEntryDirty(entries[6]) && !isMigrationEntryYoung(entries[5]))
        #expect(SwapType.maxSwapfiles == 24 && SwapType.hwpoison == 24 && SwapType.migrationWrite == 27
                && SwapType.deviceExclusive == 30 && SwapType.pteMarker == 31,
                "MAX_SWAPFILES 24 = 32 - 3 device - 3 migration - 1 hwpoison - 1 marker; the special types above it")
        #expect(swpEntryToPte(SwapEntry(type: 0, offset: 0)) >> 9 == (1 << 50) - 1, "offset 0 is all ones")
    }

    // MARK: zap

    @Test("zap_nonpresent_ptes: a device-exclusive entry drops its reference, mapcount, rss and NR_ANON_MAPPED; a device-private one the same and its page is freed to the driver (page_free); a migration entry only its rss")
    func zapDrops() throws {
        let k = try makeKernel()
        let (pg, log) = try EntryKit.devicePrivatePgmap(k)
        let (mm, a) = try Self.anon(k, written: [0, 2])
        // device-exclusive at a
        let dx = try mm.makeDeviceExclusive(a, owner: nil)
        mm.releaseDeviceExclusive(dx)
        // device-private at a + 4K
        try Self.nonePTE(mm, a + 4096)
        let dpage = pg.firstPage()
        EntryKit.installDevicePrivate(mm, a + 4096, page: dpage, writable: true)
        // migration at a + 8K (the test holds the migration's reference and lock)
        let mfolio = EntryKit.installMigration(mm, a + 8192)
        let ledger: RefLedger = [pageToPfn(k.ref, mfolio.head): 1]
        EntryKit.check(k, [mm], [pg], ledger: ledger)
        #expect(mm.rssAnonPages == 3 && k.stat(DAX_NR_ANON_MAPPED) == 2, "the migration entry counts in rss, not in NR_ANON_MAPPED")
        #expect(isDeviceExclusiveEntry(pteToSwpEntry(EntryKit.pte(mm, a))))
        #expect(isWritableDevicePrivateEntry(pteToSwpEntry(EntryKit.pte(mm, a + 4096))))
        #expect(isWritableMigrationEntry(pteToSwpEntry(EntryKit.pte(mm, a + 8192))))
        #expect(!mfolio.head.isAnonExclusive && mfolio.mapcount == 0 && mfolio.refCount == 1)

        let allocated0 = k.ramStats!.allocatedPages
        try mm.madvise(a, 4096, .dontNeed)
        #expect(dx.folio.refCount == 0 && k.ramStats!.allocatedPages == allocated0 - 1, "the entry's reference was the last")
        #expect(mm.rssAnonPages == 2 && k.stat(DAX_NR_ANON_MAPPED) == 1)
        EntryKit.check(k, [mm], [pg], ledger: ledger)

        let frees0 = log.calls
        try mm.madvise(a + 4096, 4096, .dontNeed)
        #expect(log.calls == frees0 + 1 && log.lastPage == dpage.raw, "free_zone_device_folio -> page_free")
        #expect(dpage.folio.refCount == 0 && dpage.folio.mapping == 0 && mm.rssAnonPages == 1 && k.stat(DAX_NR_ANON_MAPPED) == 0)
        EntryKit.check(k, [mm], [pg], ledger: ledger)

        try mm.madvise(a + 8192, 4096, .dontNeed)
        #expect(mm.rssAnonPages == 0)
        #expect(mfolio.refCount == 1 && mfolio.isLocked, "the migration's own reference and lock are untouched")
        EntryKit.check(k, [mm], [pg], ledger: ledger)
        folioUnlock(k.ref, mfolio)
        folioPut(k.ref, mfolio)
        #expect(k.ramStats!.allocatedPages == 0)
        EntryKit.check(k, [mm], [pg])
    }

    // MARK: mremap

    @Test("move_ptes: device-exclusive, device-private and migration entries move as they are, soft-dirty set, no counter moves; the rmap finds them at the new address (vma_address over the moved VMA)")
    func mremapMoves() throws {
        let k = try makeKernel()
        let (pg, mm, a, mfolio) = try Self.threeEntries(k)
        let ledger: RefLedger = [pageToPfn(k.ref, mfolio.head): 1]
        let before = (0..<3).map { EntryKit.pte(mm, a + UInt64($0) * 4096) }
        #expect(before.allSatisfy { !pteSwpSoftDirty($0) })
        let mapped0 = k.stat(DAX_NR_ANON_MAPPED)

        // Growing in place is impossible after a blocker: the VMA moves.
        var req = MMapRequest(length: 64 * KiB)
        req.shared = false
        req.fixedAddress = a + 64 * KiB
        _ = try mm.mmap(req)
        let b = try mm.mremap(a, oldLength: 64 * KiB, newLength: 128 * KiB, mayMove: true)
        #expect(b != a)
        for i in 0..<3 {
            let e = EntryKit.pte(mm, b + UInt64(i) * 4096)
            #expect(e == pteSwpMksoftDirty(before[i]), "entry \(i) moved as is, soft-dirty set (move_soft_dirty_pte)")
            #expect(entryNone(EntryKit.pte(mm, a + UInt64(i) * 4096)))
        }
        #expect(mm.rssAnonPages == 3 && k.stat(DAX_NR_ANON_MAPPED) == mapped0)
        EntryKit.check(k, [mm], [pg], ledger: ledger)

        // The moved entries still work: the CPU fault restores the
        // device-exclusive one, migrate_to_ram brings the device page back.
        #expect(mm.handleFault(b, write: true) == 0 && entryPresent(EntryKit.pte(mm, b)))
        #expect(mm.handleFault(b + 4096, write: false) == 0 && entryPresent(EntryKit.pte(mm, b + 4096)))
        EntryKit.removeMigration(mm, b + 8192)
        folioUnlock(k.ref, mfolio)
        folioPut(k.ref, mfolio)
        EntryKit.check(k, [mm], [pg])
        try mm.munmap(b, 128 * KiB)
        #expect(mm.rssAnonPages == 0 && k.ramStats!.allocatedPages == 0)
        EntryKit.check(k, [mm], [pg])
    }

    // MARK: mprotect

    @Test("change_pte_range on non-present entries: a writable migration entry of an anon folio becomes readable-exclusive, a writable device-private entry readable, a device-exclusive entry is unchanged; nothing is counted")
    func mprotectRewrites() throws {
        let k = try makeKernel()
        let (pg, mm, a, mfolio) = try Self.threeEntries(k)
        let ledger: RefLedger = [pageToPfn(k.ref, mfolio.head): 1]
        let dx0 = EntryKit.pte(mm, a)
        let m0 = pteToSwpEntry(EntryKit.pte(mm, a + 8192))

        try mm.mprotect(a, 64 * KiB, [.read])
        #expect(EntryKit.pte(mm, a) == dx0, "device-exclusive: one entry type, writability recomputed at restore")
        let dp = pteToSwpEntry(EntryKit.pte(mm, a + 4096))
        #expect(isDevicePrivateEntry(dp) && !isWritableDevicePrivateEntry(dp))
        let m = pteToSwpEntry(EntryKit.pte(mm, a + 8192))
        #expect(isReadableExclusiveMigrationEntry(m) && swpOffsetPfn(m) == swpOffsetPfn(m0))
        #expect(mm.rssAnonPages == 3)
        EntryKit.check(k, [mm], [pg], ledger: ledger)

        // Back to writable: the entries stay as they are (no entry is made
        // writable by mprotect); the restore decides.
        try mm.mprotect(a, 64 * KiB, [.read, .write])
        #expect(isReadableExclusiveMigrationEntry(pteToSwpEntry(EntryKit.pte(mm, a + 8192))))
        #expect(!isWritableDevicePrivateEntry(pteToSwpEntry(EntryKit.pte(mm, a + 4096))))
        EntryKit.removeMigration(mm, a + 8192)
        let r = EntryKit.pte(mm, a + 8192)
        #expect(entryPresent(r) && !entryWrite(r) && pfnToPage(k.ref, entryPfn(r)).isAnonExclusive,
                "remove_migration_pte: read-only, PageAnonExclusive back from the entry")
        folioUnlock(k.ref, mfolio)
        folioPut(k.ref, mfolio)
        EntryKit.check(k, [mm], [pg])
        try mm.munmap(a, 64 * KiB)
        EntryKit.check(k, [mm], [pg])
    }

    // MARK: GUP

    @Test("GUP on a device-exclusive entry: follow_page_pte finds no page, faultin_page restores the PTE (MMU_NOTIFY_CLEAR) and the page is returned; GUP-fast bails out (its lockless walk gets nothing) and the fallback restores it the same way")
    func gupFaultsBack() throws {
        let k = try makeKernel()
        let (mm, a) = try Self.anon(k, written: [0, 1])
        let pages = PageArray.allocate(capacity: 2)
        defer { pages.deallocate() }
        let folio = EntryKit.folio(mm, a)
        mm.releaseDeviceExclusive(try mm.makeDeviceExclusive(a, owner: nil))
        #expect(folio.refCount == 1)

        #expect(getUserPages(mm.ref, a, 1, [], pages) == 1)
        #expect(pages[0] == folio.head.raw && folio.refCount == 2)
        let e = EntryKit.pte(mm, a)
        #expect(entryPresent(e) && entryWrite(e), "restored writable: the page is exclusive")
        EntryKit.check(k, [mm], ledger: [pageToPfn(k.ref, folio.head): 1])
        folioPut(k.ref, folio)

        let folio2 = EntryKit.folio(mm, a + 4096)
        mm.releaseDeviceExclusive(try mm.makeDeviceExclusive(a + 4096, owner: nil))
        #expect(gupFast(mm.ref, a + 4096, 1, [.get], pages) == 0, "gup_fast_pte_range: !pte_present, nothing taken")
        #expect(isDeviceExclusiveEntry(pteToSwpEntry(EntryKit.pte(mm, a + 4096))) && folio2.refCount == 1)
        #expect(pinUserPagesFast(mm.ref, a, 2, [.write], pages) == 2, "the slow path takes the rest")
        #expect(pages[1] == folio2.head.raw && entryPresent(EntryKit.pte(mm, a + 4096)))
        #expect(folio2.maybeDmaPinned && folio2.refCount == 1 + Int32(DAX_GUP_PIN_COUNTING_BIAS))
        unpinUserPages(k.ref, pages, 2)
        EntryKit.check(k, [mm])
        try mm.munmap(a, 64 * KiB)
        #expect(k.ramStats!.allocatedPages == 0)
    }

    // MARK: do_swap_page

    @Test("do_swap_page: a hwpoison entry is VM_FAULT_HWPOISON, a guard marker VM_FAULT_SIGSEGV, a poisoned marker VM_FAULT_HWPOISON; none of them counts or changes")
    func swapPageOutcomes() throws {
        let k = try makeKernel()
        let (mm, a) = try Self.anon(k, written: [])
        for i in 0..<3 { try Self.nonePTE(mm, a + UInt64(i) * 4096) }
        let hw = swpEntryToPte(makeHwpoisonEntry(ramStartPfn + 7))
        let guardMarker = swpEntryToPte(SwapEntry(type: SwapType.pteMarker, offset: PteMarker.guardRegion))
        let poisoned = swpEntryToPte(SwapEntry(type: SwapType.pteMarker, offset: PteMarker.poisoned))
        EntryKit.setPTE(mm, a, hw)
        EntryKit.setPTE(mm, a + 4096, guardMarker)
        EntryKit.setPTE(mm, a + 8192, poisoned)
        EntryKit.check(k, [mm])
        #expect(mm.handleFault(a, write: false) == DAX_VM_FAULT_HWPOISON)
        #expect(mm.handleFault(a + 4096, write: true) == DAX_VM_FAULT_SIGSEGV)
        #expect(mm.handleFault(a + 8192, write: false) == DAX_VM_FAULT_HWPOISON)
        #expect(EntryKit.pte(mm, a) == hw && EntryKit.pte(mm, a + 4096) == guardMarker && EntryKit.pte(mm, a + 8192) == poisoned)
        #expect(mm.rssAnonPages == 0 && k.ramStats!.allocatedPages == 0)
        try mm.munmap(a, 64 * KiB)
        EntryKit.check(k, [mm])
    }

    @Test("do_swap_page on a migration entry: migration_entry_wait sleeps on the folio lock; when the migration ends (remove_migration_pte, folio_unlock from another thread) the fault returns 0 and the retried access finds the page")
    func migrationWaits() throws {
        let k = try makeKernel()
        let (mm, a) = try Self.anon(k, written: [0])
        let folio = EntryKit.installMigration(mm, a)
        let done = Shared<UInt32?>(nil)
        let box = SendablePtr(mm)
        let t = TestThread {
            let ret = box.p.handleFault(a, write: true)
            done.withLock { $0 = ret }
        }
        usleep(100_000)
        #expect(done.value == nil, "the fault waits while the folio is locked")
        EntryKit.removeMigration(mm, a)
        folioUnlock(k.ref, folio)
        t.join()
        #expect(done.value == 0)
        #expect(entryPresent(EntryKit.pte(mm, a)) && EntryKit.folio(mm, a) == folio)
        folioPut(k.ref, folio)
        #expect(folio.refCount == 1 && folio.mapcount == 1 && mm.rssAnonPages == 1)
        EntryKit.check(k, [mm])
        try mm.munmap(a, 64 * KiB)
    }

    @Test("do_swap_page on a device-private entry: a reference under the PTE lock, then the pgmap's migrate_to_ram copies the page back to ordinary memory; the device page is freed to the driver, MM_ANONPAGES unchanged")
    func devicePrivateMigratesToRam() throws {
        let k = try makeKernel()
        let (pg, log) = try EntryKit.devicePrivatePgmap(k)
        let (mm, a) = try Self.anon(k, written: [])
        try Self.nonePTE(mm, a)
        let dpage = pg.firstPage()
        EntryKit.installDevicePrivate(mm, a, page: dpage, writable: false)
        #expect(dpage.folio.refCount == 1 && dpage.folio.mapcount == 1 && dpage.isAnonExclusive && mm.rssAnonPages == 1)
        EntryKit.check(k, [mm], [pg])
        let frees0 = log.calls
        #expect(mm.handleFault(a, write: false) == 0)
        let e = EntryKit.pte(mm, a)
        #expect(entryPresent(e) && !entryWrite(e) && pfnInRAM(k.ref, entryPfn(e)))
        #expect(log.calls == frees0 + 1 && dpage.folio.refCount == 0)
        #expect(mm.rssAnonPages == 1 && k.stat(DAX_NR_ANON_MAPPED) == 1)
        EntryKit.check(k, [mm], [pg])
        try mm.munmap(a, 64 * KiB)
        #expect(k.ramStats!.allocatedPages == 0)
        EntryKit.check(k, [mm], [pg])
    }
}
