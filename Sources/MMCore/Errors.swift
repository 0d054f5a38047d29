import CDaxMM

// Errors of the port's safe API. Inside the port, kernel conventions stay
// visible (negative errno, VM_FAULT_* bits); these wrap them at the edge.

public enum MMError: Error, Equatable, Sendable, CustomStringConvertible {
    /// -EINVAL with the reason.
    case invalid(String)
    /// -ENOMEM with the reason.
    case noMemory(String)
    /// -ENXIO: a range conflicts with System RAM.
    case noDevice(String)
    /// -EBUSY: something still holds references (who, in the text).
    case busy(String)
    /// -ETIMEDOUT
    case timedOut(String)
    /// A kernel errno from a ported function.
    case errno(Int32, String)
    /// A VM_BUG_ON/VM_WARN_ON check failed; the report names folio and rule.
    case bug(PageDump)

    public var description: String {
        switch self {
        case .invalid(let s): return "EINVAL: \(s)"
        case .noMemory(let s): return "ENOMEM: \(s)"
        case .noDevice(let s): return "ENXIO: \(s)"
        case .busy(let s): return "EBUSY: \(s)"
        case .timedOut(let s): return "ETIMEDOUT: \(s)"
        case .errno(let e, let s): return "\(errnoName(e)): \(s)"
        case .bug(let d): return d.description
        }
    }
}

// Errno values come from <errno.h> through CDaxMM (EINVAL, EFAULT, EOPNOTSUPP, ...).

public func errnoName(_ e: Int32) -> String {
    switch abs(e) {
    case EPERM: return "EPERM"
    case ENOENT: return "ENOENT"
    case EINTR: return "EINTR"
    case ENXIO: return "ENXIO"
    case EAGAIN: return "EAGAIN"
    case ENOMEM: return "ENOMEM"
    case EFAULT: return "EFAULT"
    case EBUSY: return "EBUSY"
    case EEXIST: return "EEXIST"
    case EINVAL: return "EINVAL"
    case ENOSPC: return "ENOSPC"
    case EOPNOTSUPP: return "EOPNOTSUPP"
    case ETIMEDOUT: return "ETIMEDOUT"
    case EREMOTEIO: return "EREMOTEIO"
    default: return "errno \(abs(e))"
    }
}
