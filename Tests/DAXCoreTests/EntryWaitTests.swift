import CDaxMM
import DAXBase
import Dispatch
import Foundation
import Testing
@testable import DAXCore
@testable import MMCore
import MMTestSupport

@Suite("fs/dax.c entry lock waiters (get_unlocked_entry, dax_unlock_entry, dax_wake_entry)")
struct EntryWaitTests {
    @Test("dax_unlock_entry wakes only when a task sleeps on the entry (dax_wake_entry's waitqueue_active); a sleeper is counted and woken")
    func unlockWakesOnlySleepers() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "a", maxSize: 4 << 20)
        try f.allocate(pgoff: 0, pages: 16)
        let m = f.mapping
        let k = rig.kernel.ref

        // Nobody waits: the unlock leaves the wait word alone.
        let (e0, s0, c0) = grabMappingEntry(m, 3, order: 0)
        #expect(c0 == 0)
        let slot = try #require(s0)
        #expect(DaxEntry.isLocked(dax_load_u64(slot)))
        let word = waitWord(k, UnsafeRawPointer(slot))
        let seq0 = dax_load_u32(word)
        daxUnlockEntry(m, slot, e0)
        #expect(!DaxEntry.isLocked(dax_load_u64(slot)))
        #expect(dax_load_u32(word) == seq0, "no waiter: no wake-up")
        #expect(m.pointee.entryWaiters == 0)

        // A second task finds the entry locked and sleeps on it.
        let (e1, s1, _) = grabMappingEntry(m, 3, order: 0)
        #expect(s1 == slot)
        let done = Locked(false)
        let finished = DispatchSemaphore(value: 0)
        let mref = UncheckedBox(m)
        let worker = Thread {
            let (e, s, c) = grabMappingEntry(mref.value, 3, order: 0)
            if c == 0, let s { daxUnlockEntry(mref.value, s, e) }
            done.withLock { $0 = true }
            finished.signal()
        }
        worker.start()
        waitUntilAsleep(k, on: UnsafeRawPointer(slot), orUntil: { done.withLock { $0 } })
        #expect(done.withLock { $0 } == false, "blocked while the entry is locked")
        #expect(m.pointee.entryWaiters == 1, "the sleeper counted itself under the i_pages lock")
        let seq1 = dax_load_u32(word)
        daxUnlockEntry(m, slot, e1)
        #expect(dax_load_u32(word) != seq1, "a sleeper: the unlock wakes it")
        finished.wait()
        #expect(done.withLock { $0 })
        #expect(m.pointee.entryWaiters == 0)
        #expect(!DaxEntry.isLocked(dax_load_u64(slot)))
    }
}

/// A raw pointer handed to a worker thread that the test outlives.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}
