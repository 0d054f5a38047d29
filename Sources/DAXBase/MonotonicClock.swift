// The monotonic clock: ktime_get_ns (CLOCK_MONOTONIC). clock_gettime is
// async-signal-safe, so hot-path waits may read it.

#if canImport(Glibc)
import Glibc
#endif

/// Nanoseconds on CLOCK_MONOTONIC (ktime_get_ns).
@inlinable
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}
