// A value behind a pthread mutex, for state off the hot paths (registries,
// life-cycle states). pthread rather than Synchronization.Mutex so the
// thread sanitizer sees the lock and checks what it guards.

#if canImport(Glibc)
import Glibc
#endif

public final class Locked<State>: @unchecked Sendable {
    // @unchecked: `value` is only touched with `mutex` held.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: State

    public init(_ value: State) {
        self.value = value
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func withLock<R>(_ body: (inout State) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
