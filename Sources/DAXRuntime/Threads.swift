// Worker threads for window faults: plain pthreads, each with an alternate
// signal stack for the window handler (Dispatch's workers have none).

import MMCore

#if canImport(Glibc)
import Glibc
#endif

private final class ThreadStart: @unchecked Sendable {
    // @unchecked: written before pthread_create, read by the new thread only.
    let index: Int
    let body: @Sendable (Int) -> Void
    init(index: Int, body: @escaping @Sendable (Int) -> Void) { self.index = index; self.body = body }
}

/// Runs `body(i)` for i in 0..<count, each on its own pthread prepared for
/// window faults, and waits for all of them.
public func runOnThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    var tids: [pthread_t] = []
    for i in 0..<count {
        let start = Unmanaged.passRetained(ThreadStart(index: i, body: body)).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { p in
            let s = Unmanaged<ThreadStart>.fromOpaque(p!).takeRetainedValue()
            try? prepareThreadForWindows()
            s.body(s.index)
            return nil
        }, start)
        if rc != 0 {
            // No thread: run it here rather than lose the work.
            let s = Unmanaged<ThreadStart>.fromOpaque(start).takeRetainedValue()
            s.body(s.index)
        } else {
            tids.append(tid)
        }
    }
    for t in tids { pthread_join(t, nil) }
}
