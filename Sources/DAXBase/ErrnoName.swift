// The one errno vocabulary of the package: the symbolic name of a Linux
// errno ("EINVAL"), as the kernel's sources and dmesg spell it. MMCore and
// DAXCore report kernel returns (-EINVAL) with it, DAXDevice the errnos of
// open/mmap; DAXDevice does not depend on MMCore, so the table lives here, in
// a target that depends on nothing but the C library. swift-system's `Errno`
// describes an errno with strerror's text ("Invalid argument"), not its name,
// so it cannot stand in for this table.

#if canImport(Glibc)
import Glibc
#endif

/// "EINVAL", "ENXIO", ... for `code` or `-code` (a kernel return); "errno N"
/// for an errno the port never meets. Allocation-free for the named ones.
public func errnoName(_ code: Int32) -> String {
    switch abs(code) {
    case EPERM: return "EPERM"
    case ENOENT: return "ENOENT"
    case EINTR: return "EINTR"
    case EIO: return "EIO"
    case ENXIO: return "ENXIO"
    case EBADF: return "EBADF"
    case EAGAIN: return "EAGAIN"
    case ENOMEM: return "ENOMEM"
    case EACCES: return "EACCES"
    case EFAULT: return "EFAULT"
    case EBUSY: return "EBUSY"
    case EEXIST: return "EEXIST"
    case ENODEV: return "ENODEV"
    case ENOTDIR: return "ENOTDIR"
    case EISDIR: return "EISDIR"
    case EINVAL: return "EINVAL"
    case EMFILE: return "EMFILE"
    case EFBIG: return "EFBIG"
    case ENOSPC: return "ENOSPC"
    case ERANGE: return "ERANGE"
    case ENOSYS: return "ENOSYS"
    case EOVERFLOW: return "EOVERFLOW"
    case EOPNOTSUPP: return "EOPNOTSUPP"
    case ETIMEDOUT: return "ETIMEDOUT"
    case EREMOTEIO: return "EREMOTEIO"
    case EHWPOISON: return "EHWPOISON"
    default: return "errno \(abs(code))"
    }
}
