// Waiting in tests without a wall-clock verdict: a test that needs another
// thread to be blocked, or done, waits for that state itself, however long the
// machine takes to get there.

import MMCore

#if canImport(Glibc)
import Glibc
#endif

/// Returns once a thread sleeps in wait_var_event on `addr` (the bucket's
/// waitqueue is active) or `done()` holds. No deadline: the state the test
/// waits for decides, not the machine's load.
public func waitUntilAsleep(_ k: KernelRef, on addr: UnsafeRawPointer, orUntil done: () -> Bool) {
    while !varWaitqueueActive(k, addr) && !done() {
        usleep(100)
    }
}
