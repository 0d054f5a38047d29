// Page-table pool and allocation walk: pud_alloc / pmd_alloc / pte_alloc
// populate each level once, the pool counts tables in use, freed tables are
// reused, and concurrent allocation never hands one table out twice.

import Testing
@testable import MMCore
import CDaxMM

/// A dax_mm with a pgd from the pool (no MM type exists in Sources yet).
final class TestMM: @unchecked Sendable {
    let kernel: Kernel
    let mm: MMRef
    init(_ k: Kernel) throws {
        kernel = k
        mm = .allocate(capacity: 1)
        mm.initialize(to: dax_mm())
        mm.pointee.kernel = k.ref
        mm.pointee.pgd = try #require(ptAllocTable(k.ref))
    }
    deinit { mm.deallocate() }
    var pgtablesBytes: Int64 { dax_atomic64_read(&mm.pointee.pgtables_bytes) }
}

@Suite("MMCore page-table pool and allocation")
struct PageTableTests {

    func isZeroed(_ t: EntryPtr) -> Bool { (0..<PT.entriesPerTable).allSatisfy { t[$0] == 0 } }

    @Test("a fresh kernel has no tables in use; the pgd is one")
    func pgdCounts() throws {
        let k = try makeKernel()
        #expect(k.pageTablesInUse == 0)
        #expect(stat(k, DAX_NR_PAGETABLE) == 0)
        let m = try TestMM(k)
        #expect(k.pageTablesInUse == 1)
        #expect(stat(k, DAX_NR_PAGETABLE) == 1)
        #expect(isZeroed(m.mm.pointee.pgd))
    }

    @Test("pud_alloc, pmd_alloc, pte_alloc populate one table per level, once")
    func populateOnce() throws {
        let k = try makeKernel()
        let m = try TestMM(k)
        let addr: UInt64 = 0x7f12_3456_7000
        let pud = try #require(pudAlloc(m.mm, addr))
        #expect(k.pageTablesInUse == 2)
        let pgde = m.mm.pointee.pgd[pgdIndex(addr)]
        #expect(pgde & PT.table == PT.table && !entryLeaf(pgde))
        #expect(pud == entryTable(pgde) + pudIndex(addr))
        let pmd = try #require(pmdAlloc(m.mm, pud, addr))
        #expect(k.pageTablesInUse == 3)
        let pte = try #require(pteAlloc(m.mm, pmd, addr))
        #expect(k.pageTablesInUse == 4)
        #expect(stat(k, DAX_NR_PAGETABLE) == 4)
        #expect(m.pgtablesBytes == 3 * Int64(pageSize), "pgtables_bytes counts tables below the pgd")
        #expect(pte == entryTable(pmd.pointee) + pteIndex(addr))
        #expect(isZeroed(entryTable(pmd.pointee)), "a new PTE table is empty")
        // Again for the same address: same entries, nothing allocated.
        #expect(pudAlloc(m.mm, addr) == pud)
        #expect(pmdAlloc(m.mm, pud, addr) == pmd)
        #expect(pteAlloc(m.mm, pmd, addr) == pte)
        #expect(k.pageTablesInUse == 4)
        #expect(m.pgtablesBytes == 3 * Int64(pageSize))
        // walk() finds the same entries.
        let w = walk(m.mm, addr)
        #expect(w.pud == pud && w.pmd == pmd && w.pte == pte)
    }

    @Test("neighbouring addresses share tables; crossing a level boundary allocates only below it")
    func sharing() throws {
        let k = try makeKernel()
        let m = try TestMM(k)
        func alloc(_ a: UInt64) throws -> EntryPtr {
            let pud = try #require(pudAlloc(m.mm, a))
            let pmd = try #require(pmdAlloc(m.mm, pud, a))
            return try #require(pteAlloc(m.mm, pmd, a))
        }
        let a: UInt64 = 0x4000_0000_0000
        let p0 = try alloc(a)
        #expect(k.pageTablesInUse == 4)
        let p1 = try alloc(a + 0x1000)
        #expect(p1 == p0 + 1)
        #expect(k.pageTablesInUse == 4)
        _ = try alloc(a + UInt64(pmdSize))           // next PMD entry: a new PTE table
        #expect(k.pageTablesInUse == 5)
        _ = try alloc(a + UInt64(pudSize))           // next PUD entry: PMD + PTE tables
        #expect(k.pageTablesInUse == 7)
        _ = try alloc(a + (1 << 39))                 // next PGD entry: PUD + PMD + PTE tables
        #expect(k.pageTablesInUse == 10)
        #expect(m.pgtablesBytes == 9 * Int64(pageSize))
        #expect(walk(m.mm, a + 2 * UInt64(pudSize)).pmd == nil, "nothing below an unpopulated PUD entry")
    }

    @Test("pmd_alloc under a huge PUD and pte_alloc under a huge PMD return nil and allocate nothing")
    func hugeEntries() throws {
        let k = try makeKernel()
        let m = try TestMM(k)
        let a: UInt64 = 0x40_0000_0000
        let pud = try #require(pudAlloc(m.mm, a))
        pud.pointee = entryMkhuge(pfnEntry(pfnOf(base), PT.present | PT.user))
        let inUse = k.pageTablesInUse
        #expect(pmdAlloc(m.mm, pud, a) == nil)
        #expect(k.pageTablesInUse == inUse)
        let b = a + UInt64(pudSize)
        let pud2 = try #require(pudAlloc(m.mm, b))
        let pmd = try #require(pmdAlloc(m.mm, pud2, b))
        pmd.pointee = entryMkhuge(pfnEntry(pfnOf(base), PT.present | PT.user))
        let inUse2 = k.pageTablesInUse
        #expect(pteAlloc(m.mm, pmd, b) == nil)
        #expect(k.pageTablesInUse == inUse2)
        let w = walk(m.mm, b)
        #expect(w.pmd == pmd && w.pte == nil)
    }

    @Test("ptFreeTable returns a table to the pool and the next allocation reuses it, zeroed")
    func freeAndReuse() throws {
        let k = try makeKernel()
        let t1 = try #require(ptAllocTable(k.ref))
        let t2 = try #require(ptAllocTable(k.ref))
        #expect(t1 != t2)
        #expect(k.pageTablesInUse == 2)
        for i in 0..<PT.entriesPerTable { t1[i] = 0xdead_b000 | PT.present }
        ptFreeTable(k.ref, t1)
        #expect(k.pageTablesInUse == 1)
        #expect(stat(k, DAX_NR_PAGETABLE) == 1)
        let t3 = try #require(ptAllocTable(k.ref))
        #expect(t3 == t1, "the free list is used before the bump allocator")
        #expect(isZeroed(t3))
        #expect(k.pageTablesInUse == 2)
        // LIFO over several frees.
        ptFreeTable(k.ref, t3)
        ptFreeTable(k.ref, t2)
        #expect(k.pageTablesInUse == 0)
        #expect(ptAllocTable(k.ref) == t2)
        #expect(ptAllocTable(k.ref) == t1)
        let fresh = try #require(ptAllocTable(k.ref))
        #expect(fresh != t1 && fresh != t2)
        #expect(k.pageTablesInUse == 3)
    }

    @Test("an exhausted pool fails the allocation (-ENOMEM) and leaves the entry empty; a freed table satisfies the next one")
    func exhaustion() throws {
        let k = try makeKernel(pageTablePages: 3)
        let m = try TestMM(k)
        let a: UInt64 = 0x1000_0000
        let pud = try #require(pudAlloc(m.mm, a))
        let pmd = try #require(pmdAlloc(m.mm, pud, a))
        #expect(k.pageTablesInUse == 3)
        #expect(pteAlloc(m.mm, pmd, a) == nil)
        #expect(entryNone(pmd.pointee))
        #expect(k.pageTablesInUse == 3)
        #expect(ptAllocTable(k.ref) == nil)
        #expect(k.pageTablesInUse == 3)
        // Free the PMD table's neighbour level: tear down the PMD table by hand.
        let pmdTable = entryTable(pud.pointee)
        pud.pointee = 0
        ptFreeTable(k.ref, pmdTable)
        #expect(k.pageTablesInUse == 2)
        let again = try #require(ptAllocTable(k.ref))
        #expect(again == pmdTable)
        #expect(ptAllocTable(k.ref) == nil)
    }

    @Test("split ptlocks: one lock per table page")
    func splitLocks() throws {
        let k = try makeKernel()
        let m = try TestMM(k)
        let a: UInt64 = 0x2000_0000_0000
        let pud = try #require(pudAlloc(m.mm, a))
        let pmd0 = try #require(pmdAlloc(m.mm, pud, a))
        let pmd1 = try #require(pmdAlloc(m.mm, pud, a + UInt64(pmdSize)))
        _ = try #require(pteAlloc(m.mm, pmd0, a))
        _ = try #require(pteAlloc(m.mm, pmd1, a + UInt64(pmdSize)))
        #expect(pmdLockptr(k.ref, pmd0) == pmdLockptr(k.ref, pmd1), "PMD entries of one table share its lock")
        #expect(pteLockptr(k.ref, pmd0.pointee) != pteLockptr(k.ref, pmd1.pointee), "two PTE tables, two locks")
        #expect(pteLockptr(k.ref, pmd0.pointee) != pmdLockptr(k.ref, pmd0))
        #expect(pudLockptr(m.mm) == withUnsafeMutablePointer(to: &m.mm.pointee.page_table_lock) { $0 })
    }

    // MARK: concurrency

    @Test("concurrent alloc/free from 2 threads keeps the count right and never hands a table out twice")
    func concurrentAllocFree() throws {
        let k = try makeKernel(pageTablePages: 64)
        let doubles = Shared(0)
        let failures = Shared(0)
        let ready = Shared(0)
        let iterations = 20_000
        let threads = (1...2).map { id in
            TestThread {
                ready.withLock { $0 += 1 }
                while ready.value < 2 {}
                var held: [EntryPtr] = []
                for i in 0..<iterations {
                    // Hold up to 3 tables at a time so the free list has depth.
                    if held.count < 3 || i % 2 == 0, let t = ptAllocTable(k.ref) {
                        var zero: UInt64 = 0
                        // Word 1 is an ownership tag; a zeroed table has 0 there.
                        if !dax_cmpxchg_u64(t + 1, &zero, UInt64(id)) {
                            doubles.withLock { $0 += 1 }
                        }
                        held.append(t)
                    } else if held.isEmpty {
                        failures.withLock { $0 += 1 }
                    }
                    if held.count > 3 || (i % 2 == 1 && !held.isEmpty) {
                        let t = held.removeFirst()
                        var mine = UInt64(id)
                        if !dax_cmpxchg_u64(t + 1, &mine, 0) { doubles.withLock { $0 += 1 } }
                        ptFreeTable(k.ref, t)
                    }
                }
                for t in held { ptFreeTable(k.ref, t) }
            }
        }
        threads.forEach { $0.join() }
        #expect(doubles.value == 0, "a table was handed to two owners")
        #expect(failures.value == 0, "the pool of 64 ran dry with at most 8 tables held")
        #expect(k.pageTablesInUse == 0)
        #expect(stat(k, DAX_NR_PAGETABLE) == 0)
        // Everything came back: the pool can hand out all 64 again, all distinct.
        var all = Set<UInt>()
        while let t = ptAllocTable(k.ref) { all.insert(UInt(bitPattern: t)) }
        #expect(all.count == 64)
    }

    @Test("two threads populating the same addresses agree on every entry and allocate each table once")
    func concurrentPopulate() throws {
        let k = try makeKernel()
        let m = try TestMM(k)
        let rounds = 256
        let results = (0..<2).map { _ in Shared<[UInt]>([]) }
        let ready = Shared(0)
        let threads = (0..<2).map { i in
            TestThread {
                ready.withLock { $0 += 1 }
                while ready.value < 2 {}
                var out: [UInt] = []
                for r in 0..<rounds {
                    let a = UInt64(r) << UInt64(pudShift)     // a new PUD entry per round
                    guard let pud = pudAlloc(m.mm, a), let pmd = pmdAlloc(m.mm, pud, a),
                          let pte = pteAlloc(m.mm, pmd, a) else { out.append(0); continue }
                    out.append(UInt(bitPattern: pte))
                }
                results[i].withLock { $0 = out }
            }
        }
        threads.forEach { $0.join() }
        #expect(!results[0].value.contains(0))
        #expect(results[0].value == results[1].value)
        // pgd + one PUD table + a PMD and a PTE table per round.
        #expect(k.pageTablesInUse == Int64(2 + 2 * rounds))
        #expect(stat(k, DAX_NR_PAGETABLE) == Int64(2 + 2 * rounds))
        #expect(m.pgtablesBytes == Int64((1 + 2 * rounds) * pageSize))
    }
}
