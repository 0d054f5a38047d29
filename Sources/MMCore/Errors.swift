import CDaxMM
import DAXBase

// Errors of the port's safe API. Inside the port, kernel conventions stay
// visible (negative errno, VM_FAULT_* bits); these wrap them at the edge.
//
// One spelling per errno: every refusal is `.errno(E..., what)` with the
// positive errno the kernel function returns negated, whatever the function
// (memremap_pages' -EINVAL and mmap's -EINVAL are both `.errno(EINVAL, ...)`).
//
// The paths a signal handler may run (faults, GUP, zap) never build an
// MMError or any String: they return -errno or VM_FAULT_* bits, and a failed
// debug check writes a fixed-size record into the kernel's report ring
// (Debug.swift). The text is made only here, at the safe API, when a caller
// asks for it (`description`, `Kernel.drainReports()`).

public enum MMError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A kernel errno (positive: EINVAL, ENOMEM, ENXIO, EBUSY, ETIMEDOUT, ...)
    /// from a ported function, and what refused.
    case errno(Int32, String)
    /// A VM_BUG_ON/VM_WARN_ON check failed; the report names folio and rule.
    case bug(PageDump)

    /// The errno (positive); a failed check stands for EFAULT.
    public var code: Int32 {
        switch self {
        case .errno(let e, _): return e
        case .bug: return EFAULT
        }
    }

    public var description: String {
        switch self {
        case .errno(let e, let s): return "\(errnoName(e)): \(s)"
        case .bug(let d): return d.description
        }
    }
}

/// A kernel errno as a typed error for the raw-record API's Result returns
/// (an ERR_PTR): positive, no text, nothing allocated.
public struct MMErrno: Error, Equatable, Hashable, Sendable {
    public let code: Int32
    @inline(__always) public init(_ code: Int32) { self.code = code }
}
