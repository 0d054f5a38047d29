// The per-thread slots that stand for per-CPU data (CDaxMM's dax_mm.h):
// percpu counters (mm->rss_stat, the node stats) summed exactly, the
// percpu rw semaphore behind mmap_lock (exclusion, and no lost wake-up of a
// writer waiting for readers to drain), and the per-slot dax_srcu
// (synchronize_srcu waits for a reader on the old side only).

import CDaxMM
import DAXBase
import Testing
@testable import MMCore

#if canImport(Glibc)
import Glibc
#endif

@Suite("per-slot counters and locks")
struct PerSlotTests {
    /// percpu_counter_add / percpu_counter_sum: after N threads x M updates
    /// the sum is exact, whichever slots (own or the shared overflow) the
    /// threads got.
    @Test func percpuCounterSumIsExactAfterThreadedAdds() {
        let c = UnsafeMutablePointer<dax_pcpu_counters>.allocate(capacity: 1)
        c.initialize(to: dax_pcpu_counters())
        defer { c.deallocate() }
        #expect(dax_pcpu_counter_sum(c, 0) == 0)
        let threads = Int(DAX_NR_SLOTS) + 4   // more threads than slots: the overflow slot is shared
        let updates = 20_000
        let p = SendablePtr(c)
        let ts = (0..<threads).map { t in
            TestThread {
                #expect(dax_this_slot() >= 0 && dax_this_slot() <= Int32(DAX_SLOT_OVERFLOW))
                for i in 0..<updates {
                    dax_pcpu_counter_add(p.p, 0, 1)
                    dax_pcpu_counter_add(p.p, 3, i & 1 == 0 ? 2 : -1)
                }
                _ = t
            }
        }
        for t in ts { t.join() }
        #expect(dax_pcpu_counter_sum(c, 0) == Int64(threads * updates))
        #expect(dax_pcpu_counter_sum(c, 3) == Int64(threads * updates / 2))
        #expect(dax_pcpu_counter_sum(c, 1) == 0)
        dax_pcpu_counter_set(c, 0, 7)
        #expect(dax_pcpu_counter_sum(c, 0) == 7)
    }

    /// add_mm_counter / get_mm_counter through the MM: updates from two
    /// threads, read back exactly.
    @Test func mmCounterSumsUpdatesOfTwoThreads() throws {
        let k = try Kernel(physBits: 36)
        let mm = try MM(kernel: k)
        let before = mm.withUnsafeRecord { getMMCounter($0, DAX_MM_FILEPAGES) }
        let ts = (0..<2).map { _ in
            TestThread {
                mm.withUnsafeRecord { r in for _ in 0..<10_000 { addMMCounter(r, DAX_MM_FILEPAGES, 3) } }
            }
        }
        for t in ts { t.join() }
        #expect(mm.withUnsafeRecord { getMMCounter($0, DAX_MM_FILEPAGES) } == before + 60_000)
        mm.withUnsafeRecord { addMMCounter($0, DAX_MM_FILEPAGES, -60_000) }
        #expect(mm.withUnsafeRecord { getMMCounter($0, DAX_MM_FILEPAGES) } == before)
    }

    /// percpu_down_write: a writer waiting for readers that keep coming and
    /// going gets the lock (readers back off while it is pending, and the
    /// last reader out wakes it), every time; readers and writers exclude
    /// each other (a 2-reader, 1-writer hammer).
    @Test func rwsemWriterWaitingForReadersFinishesAndExcludes() {
        let sem = UnsafeMutablePointer<dax_rwsem>.allocate(capacity: 1)
        sem.initialize(to: dax_rwsem())
        // words: 0 stop, 1 readers inside, 2 writer inside, 3 violations, 4 read sections,
        // 5 readers started
        let w = UnsafeMutablePointer<UInt32>.allocate(capacity: 8)
        w.initialize(repeating: 0, count: 8)
        defer { sem.deallocate(); w.deallocate() }
        let s = SendablePtr(sem), ws = SendablePtr(w)
        let readers = (0..<2).map { _ in
            TestThread {
                _ = dax_inc_u32(ws.p + 5)
                while dax_load_u32(ws.p) == 0 {
                    dax_down_read(s.p)
                    _ = dax_inc_u32(ws.p + 1)
                    if dax_load_u32(ws.p + 2) != 0 { _ = dax_inc_u32(ws.p + 3) }
                    for _ in 0..<50 { dax_cpu_relax() }
                    dax_dec_u32(ws.p + 1)
                    dax_up_read(s.p)
                    _ = dax_inc_u32(ws.p + 4)
                }
            }
        }
        // Both readers run before the first write (on a loaded machine a
        // thread may start only after 2000 uncontended writes are over).
        while dax_load_u32(w + 5) < 2 { sched_yield() }
        let start = monotonicNanos()
        var writes = 0
        while writes < 2000 {
            dax_down_write(sem)
            #expect(dax_rwsem_write_owner(sem) == dax_current_tid())
            dax_store_u32(w + 2, 1)
            if dax_load_u32(w + 1) != 0 { _ = dax_inc_u32(w + 3) }
            for _ in 0..<20 { dax_cpu_relax() }
            dax_store_u32(w + 2, 0)
            if writes % 2 == 0 {
                dax_up_write(sem)
            } else {
                // downgrade_write: a reader now; another writer still waits for it.
                dax_downgrade_write(sem)
                #expect(dax_rwsem_write_owner(sem) == 0)
                #expect(!dax_down_write_trylock(sem))
                dax_up_read(sem)
            }
            writes += 1
        }
        dax_store_u32(w, 1)
        for t in readers { t.join() }
        let seconds = Double(monotonicNanos() - start) / 1e9
        #expect(dax_load_u32(w + 3) == 0, "a reader and a writer were inside together")
        #expect(dax_load_u32(w + 4) > 0, "the readers ran")
        #expect(seconds < 20, "2000 write acquisitions among readers took \(seconds) s")
        // Quiescent: free for a writer and for readers.
        #expect(dax_down_write_trylock(sem))
        #expect(!dax_down_read_trylock(sem))
        dax_up_write(sem)
        #expect(dax_down_read_trylock(sem))
        #expect(!dax_down_write_trylock(sem))
        dax_up_read(sem)
    }

    /// A free semaphore and four zeroed control words for the starvation
    /// tests: 0 stop, 1 read sections, 2 threads started.
    private func newRwsem() -> (UnsafeMutablePointer<dax_rwsem>, UnsafeMutablePointer<UInt32>) {
        let sem = UnsafeMutablePointer<dax_rwsem>.allocate(capacity: 1)
        sem.initialize(to: dax_rwsem())
        let w = UnsafeMutablePointer<UInt32>.allocate(capacity: 4)
        w.initialize(repeating: 0, count: 4)
        return (sem, w)
    }

    /// A thread that marks itself started (w[2]) and counts read sections
    /// (w[1]) until w[0] is set.
    private func countingReader(_ sem: UnsafeMutablePointer<dax_rwsem>, _ w: UnsafeMutablePointer<UInt32>) -> TestThread {
        let s = SendablePtr(sem), ws = SendablePtr(w)
        return TestThread {
            _ = dax_inc_u32(ws.p + 2)
            while dax_load_u32(ws.p) == 0 {
                dax_down_read(s.p)
                _ = dax_inc_u32(ws.p + 1)
                dax_up_read(s.p)
            }
        }
    }

    /// A writer that takes the lock again as soon as it released it does
    /// not starve the readers waiting for it: the release hands the next
    /// turn to them (dax_up_write sets handoff when readers wait; the next
    /// down_write waits until one of them got in), as the kernel's rwsem
    /// queues waiting readers and hands off to them.
    @Test func rwsemWriterInALoopDoesNotStarveReaders() {
        let (sem, w) = newRwsem()
        defer { sem.deallocate(); w.deallocate() }
        dax_down_write(sem)
        let reader = countingReader(sem, w)
        while dax_load_u32(w + 2) == 0 { sched_yield() }   // the reader runs
        let writes = 400
        for _ in 0..<writes {
            // Hold the lock long enough for the reader to find it taken.
            for _ in 0..<2000 { dax_cpu_relax() }
            dax_up_write(sem)
            dax_down_write(sem)
        }
        dax_up_write(sem)
        dax_store_u32(w, 1)
        reader.join()
        // Each release found the reader waiting (it spins on the held
        // lock), so nearly every write cycle let it in at least once.
        #expect(Int(dax_load_u32(w + 1)) >= writes / 2,
                "the reader got in \(dax_load_u32(w + 1)) times across \(writes) write cycles")
        #expect(dax_load_u32(&sem.pointee.handoff) == 0 || dax_load_u32(&sem.pointee.readers_waiting) == 0)
    }

    /// Two writers taking turns do not starve a reader either (a liveness
    /// bound: the reader gets in at least once per two write cycles; a
    /// writer already waiting when the other released respects the
    /// handoff too, rwsem_writer_may_go before every attempt).
    @Test func rwsemTwoWritersDoNotStarveAReader() {
        let (sem, w) = newRwsem()
        defer { sem.deallocate(); w.deallocate() }
        let s = SendablePtr(sem), ws = SendablePtr(w)
        let cycles = 300
        let writers = (0..<2).map { _ in
            TestThread {
                _ = dax_inc_u32(ws.p + 2)
                while dax_load_u32(ws.p + 2) < 3 { dax_cpu_relax() }
                for _ in 0..<cycles {
                    dax_down_write(s.p)
                    for _ in 0..<2000 { dax_cpu_relax() }
                    dax_up_write(s.p)
                }
            }
        }
        let reader = countingReader(sem, w)
        for t in writers { t.join() }
        dax_store_u32(w, 1)
        reader.join()
        #expect(Int(dax_load_u32(w + 1)) >= cycles / 2,
                "the reader got in \(dax_load_u32(w + 1)) times across \(2 * cycles) write cycles of two writers")
    }

    /// A writer that sleeps (past the spin) while a reader holds the lock is
    /// woken by that reader's up_read, well before the 1 ms recheck would
    /// have let it in many times over; a reader that sleeps behind a writer
    /// is woken by up_write.
    @Test func rwsemSleepersAreWokenByTheRelease() {
        let sem = UnsafeMutablePointer<dax_rwsem>.allocate(capacity: 1)
        sem.initialize(to: dax_rwsem())
        let w = UnsafeMutablePointer<UInt32>.allocate(capacity: 4)
        w.initialize(repeating: 0, count: 4)
        defer { sem.deallocate(); w.deallocate() }
        let s = SendablePtr(sem), ws = SendablePtr(w)
        dax_down_read(sem)
        let writer = TestThread {
            dax_down_write(s.p)
            dax_store_u32(ws.p, 1)
            usleep(20_000)
            dax_up_write(s.p)
        }
        usleep(20_000)
        #expect(dax_load_u32(w) == 0, "the writer got in while a reader held the lock")
        #expect(!dax_down_read_trylock(sem), "a new reader got in while a writer was pending")
        dax_up_read(sem)
        while dax_load_u32(w) == 0 { usleep(100) }
        let t0 = monotonicNanos()
        dax_down_read(sem)   // sleeps behind the writer, woken by up_write
        let waited = monotonicNanos() - t0
        dax_up_read(sem)
        writer.join()
        #expect(waited > 1_000_000, "the reader did not wait for the writer")
        #expect(dax_load_u32(&sem.pointee.waiters) == 0)
    }

    /// synchronize_srcu (kill_dax's wait): after the flip, a reader that
    /// entered before it is counted on the old side until it leaves; a
    /// reader that enters after it is not.
    @Test func srcuSynchronizeWaitsForAReaderOnTheOldSide() {
        let srcu = UnsafeMutablePointer<dax_srcu>.allocate(capacity: 1)
        srcu.initialize(to: dax_srcu())
        let w = UnsafeMutablePointer<UInt32>.allocate(capacity: 4)
        w.initialize(repeating: 0, count: 4)
        defer { srcu.deallocate(); w.deallocate() }
        let s = SendablePtr(srcu), ws = SendablePtr(w)
        let reader = TestThread {
            let tok = dax_srcu_read_lock(s.p)
            dax_store_u32(ws.p, 1)
            while dax_load_u32(ws.p + 1) == 0 { usleep(100) }
            usleep(20_000)
            dax_srcu_read_unlock(s.p, tok)
        }
        while dax_load_u32(w) == 0 { usleep(100) }
        let side = dax_srcu_flip(srcu)
        #expect(dax_srcu_readers(srcu, side) == 1)
        // A reader after the flip counts on the other side.
        let late = dax_srcu_read_lock(srcu)
        #expect(late & 1 != side)
        #expect(dax_srcu_readers(srcu, side) == 1)
        #expect(dax_srcu_readers(srcu, side ^ 1) == 1)
        dax_store_u32(w + 1, 1)
        let t0 = monotonicNanos()
        while dax_srcu_readers(srcu, side) != 0 { usleep(20) }
        let waited = monotonicNanos() - t0
        #expect(waited > 10_000_000, "the old side drained before its reader left")
        reader.join()
        dax_srcu_read_unlock(srcu, late)
        #expect(dax_srcu_readers(srcu, 0) == 0 && dax_srcu_readers(srcu, 1) == 0)
    }
}
