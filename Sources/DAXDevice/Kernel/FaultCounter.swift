// Page-fault counts from getrusage(2): ru_minflt and ru_majflt, which the
// kernel bumps per task in mm_account_fault (mm/memory.c) for every fault
// handled without VM_FAULT_RETRY/ERROR. A fault that installs a PMD or a PUD
// counts once, like a PTE fault; that is what makes fault counts a probe of
// the mapping size.

import CDaxSys

#if canImport(Glibc)
import Glibc
#endif

/// Minor and major fault counts (cumulative, or a difference of two readings).
public struct FaultCounts: Equatable, Sendable, CustomStringConvertible {
    public var minor: Int
    public var major: Int

    public init(minor: Int, major: Int) {
        self.minor = minor
        self.major = major
    }

    public var total: Int { minor + major }

    public static func - (a: FaultCounts, b: FaultCounts) -> FaultCounts {
        FaultCounts(minor: a.minor - b.minor, major: a.major - b.major)
    }

    public var description: String { "\(minor) minor, \(major) major" }
}

/// Whose faults to count.
public enum FaultScope: Sendable {
    /// The calling thread (RUSAGE_THREAD): not disturbed by other threads,
    /// such as tests running in parallel. The measured code must stay on the
    /// calling thread (no `await` in between).
    case thread
    /// The whole process (RUSAGE_SELF).
    case process
}

/// Reads fault counts.
///
/// The 1 GiB check (pagemap cannot make it, see `Pagemap`): map a 1 GiB
/// aligned range of a device with 1 GiB alignment, touch one byte of it,
/// then `touch(base, length: 1 << 30, stride: 2 << 20)`. A PUD mapping of the
/// whole range costs 0 further faults; PMD mappings cost 511 (one per 2 MiB
/// sub-range not yet mapped), 4 KiB mappings 512. Do not read pagemap or
/// smaps in between: their walk splits, that is unmaps, the PUD.
public enum FaultCounter {
    /// The counts so far of `scope`.
    public static func read(_ scope: FaultScope = .thread) -> FaultCounts {
        var ru = rusage()
        let who = scope == .thread ? dax_rusage_thread() : RUSAGE_SELF.rawValue
        // getrusage cannot fail for a valid `who` and a valid pointer.
        _ = getrusage(__rusage_who_t(who), &ru)
        return FaultCounts(minor: Int(ru.ru_minflt), major: Int(ru.ru_majflt))
    }

    /// Runs `body` and returns its result with the faults it cost `scope`.
    public static func measure<R, E: Error>(
        _ scope: FaultScope = .thread, _ body: () throws(E) -> R
    ) throws(E) -> (result: R, faults: FaultCounts) {
        let before = read(scope)
        let r = try body()
        return (r, read(scope) - before)
    }

    /// Touches one byte every `stride` bytes of `[base, base + length)` on the
    /// calling thread (a read, or a write that leaves the byte unchanged) and
    /// returns the faults that cost the thread. Precondition: the range is mapped with
    /// the access asked for, or the touch raises SIGSEGV/SIGBUS.
    public static func touch(_ base: UnsafeMutableRawPointer, length: Int, stride: Int,
                             write: Bool = false) -> FaultCounts {
        precondition(length >= 0 && stride > 0)
        return measure(.thread) { () -> Void in
            var offset = 0
            while offset < length {
                let p = base + offset
                if write { dax_touch_write(p) } else { _ = dax_touch_read(p) }
                offset += stride
            }
        }.faults
    }
}
