// Who the process is, for probes whose answers depend on it: pagemap shows
// page frame numbers only to CAP_SYS_ADMIN (fs/proc/task_mmu.c pagemap_read:
// file_ns_capable(file, &init_user_ns, CAP_SYS_ADMIN)).

import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

public enum Privileges {
    /// CAP_SYS_ADMIN's bit number (include/uapi/linux/capability.h).
    public static let capSysAdmin = 21

    /// The effective user is root.
    public static var isRoot: Bool { geteuid() == 0 }

    /// The effective capability set (CapEff of /proc/self/status), or nil if
    /// it cannot be read.
    public static func effectiveCapabilities() -> UInt64? {
        guard case .success(let text) = Sys.readSmallFile("/proc/self/status") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("CapEff:") {
            return UInt64(String(line.dropFirst("CapEff:".count)).trimmingSpaces(), radix: 16)
        }
        return nil
    }

    /// CAP_SYS_ADMIN is in the effective set. Pagemap asks for it in the
    /// initial user namespace, so inside a user namespace this can be true
    /// while pfns stay hidden: `Pagemap.pfnsVisible()` is the test that counts.
    public static var hasCapSysAdmin: Bool {
        guard let caps = effectiveCapabilities() else { return false }
        return caps & (1 << UInt64(capSysAdmin)) != 0
    }
}
