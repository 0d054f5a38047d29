// The error of the kernel-facing probes (Kernel/): the call the kernel
// refused, its errno with the errno's name, and what that errno means for
// that call.

import DAXBase
import SystemPackage

/// A system call or liburing call that failed, with the kernel's errno.
public struct KernelCallError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The call as C spells it: "io_uring_register_buffers", "pread(/proc/self/pagemap)".
    public let call: String
    public let errno: Errno
    /// What this errno means for this call; empty when there is nothing to add.
    public let reason: String

    public init(call: String, errno: Errno, reason: String = "") {
        self.call = call
        self.errno = errno
        self.reason = reason
    }

    /// "EFAULT", "EOPNOTSUPP", ...
    public var errnoName: String { DAXBase.errnoName(errno.rawValue) }

    public var description: String {
        let base = "\(call) failed with \(errnoName) (\(errno))"
        return reason.isEmpty ? base : "\(base): \(reason)"
    }
}
