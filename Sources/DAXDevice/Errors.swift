// Typed errors for devices. Every description is one line that names the
// device and the cause, suitable for `daxmm: <description>`.

import DAXBase
import SystemPackage

public enum DeviceError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The path does not exist.
    case noSuchDevice(path: String)
    /// The path exists but is not a device-dax character device.
    case notDeviceDax(path: String, reason: String)
    /// open(2) refused with EACCES/EPERM.
    case permissionDenied(path: String)
    /// The device exists in sysfs but no driver gives it a /dev node, or
    /// another driver (kmem) owns it.
    case disabled(device: String, reason: String)
    /// The device is in use in a way that forbids this (EBUSY).
    case busy(device: String, reason: String)
    /// The device has no capacity.
    case zeroSize(device: String)
    /// A `--device` specification that cannot be used.
    case badSpec(spec: String, reason: String)
    /// open(2) failed for another reason.
    case openFailed(path: String, errno: Errno)
    /// A mapping request refused, by the kernel (errno) or by the port's own
    /// check that mirrors the kernel's (same errno).
    case mapFailed(device: String, request: String, errno: Errno, reason: String)
    /// libdaxctl could not be asked.
    case discovery(DiscoveryError)

    public var description: String {
        switch self {
        case .noSuchDevice(let p):
            return "\(p): no such device"
        case .notDeviceDax(let p, let why):
            return "\(p): not a device-dax device (\(why))"
        case .permissionDenied(let p):
            return "\(p): permission denied (device-dax nodes are usually root-only: run as root or change the node's mode)"
        case .disabled(let d, let why):
            return "\(d): device is disabled (\(why))"
        case .busy(let d, let why):
            return "\(d): device is busy (\(why))"
        case .zeroSize(let d):
            return "\(d): device has size 0 (no capacity assigned)"
        case .badSpec(let s, let why):
            return "\(s): \(why)"
        case .openFailed(let p, let e):
            return "\(p): cannot open: \(errnoName(e.rawValue)) (\(e))"
        case .mapFailed(let d, let req, let e, let why):
            return "\(d): mmap \(req) failed with \(errnoName(e.rawValue)): \(why)"
        case .discovery(let e):
            return e.description
        }
    }

    /// The errno that best stands for this error (for exit codes and tests).
    public var errno: Errno {
        switch self {
        case .noSuchDevice: return .noSuchFileOrDirectory
        case .notDeviceDax: return .operationNotSupportedByDevice
        case .permissionDenied: return .permissionDenied
        case .disabled: return .noSuchAddressOrDevice
        case .busy: return .resourceBusy
        case .zeroSize: return .noSuchAddressOrDevice
        case .badSpec: return .invalidArgument
        case .openFailed(_, let e): return e
        case .mapFailed(_, _, let e, _): return e
        case .discovery: return .noMemory
        }
    }
}
