import Testing
@testable import DAXDevice

#if canImport(Glibc)
import Glibc
#endif

/// uname releases as the distributions spell them.
@Suite("Kernel probes: kernel version")
struct KernelVersionTests {
    static let releases: [(String, Int, Int, Int, String)] = [
        ("7.0.0-1-amd64", 7, 0, 0, "-1-amd64"),
        ("6.12.57+deb12-amd64", 6, 12, 57, "+deb12-amd64"),
        ("6.18.44-fc-v857", 6, 18, 44, "-fc-v857"),
        ("6.15-rc3", 6, 15, 0, "-rc3"),
        ("6.1.0-28-cloud-amd64", 6, 1, 0, "-28-cloud-amd64"),
        ("6.14.11", 6, 14, 11, ""),
        ("6.13.0.x86_64", 6, 13, 0, ".x86_64"),
    ]

    @Test(arguments: releases)
    func parsesARelease(_ r: (String, Int, Int, Int, String)) throws {
        let v = try #require(KernelVersion(release: r.0))
        #expect((v.major, v.minor, v.patch) == (r.1, r.2, r.3))
        #expect(v.suffix == r.4)
        #expect(v.release == r.0)
        #expect(v.description == "\(r.1).\(r.2).\(r.3)\(r.4)")
    }

    @Test(arguments: ["", "abc", "6", "6.", "-6.1", "6.x.1", "v6.12"])
    func refusesWhatIsNotAVersion(_ text: String) {
        #expect(KernelVersion(release: text) == nil)
    }

    /// The ZONE_DEVICE refcount series landed in 6.15; its release
    /// candidates count as 6.15.
    @Test func refcountSeriesFromSixFifteen() throws {
        let cases: [(String, Bool)] = [("6.12.57+deb12-amd64", false), ("6.14.11", false), ("6.15-rc1", true),
                                       ("6.15.0", true), ("6.17.3", true), ("7.0.0-1-amd64", true)]
        for (release, expected) in cases {
            let v = try #require(KernelVersion(release: release))
            #expect(v.hasZoneDeviceRefcountSeries == expected, "\(release)")
        }
        let v = try #require(KernelVersion(release: "6.12.57"))
        #expect(v.atLeast(6, 12) && v.atLeast(6, 12, 57) && !v.atLeast(6, 12, 58) && !v.atLeast(7, 0) && v.atLeast(5, 99))
    }

    /// KVER replaces uname's answer when it parses.
    @Test func kverOverridesUname() throws {
        let o = try #require(KernelVersion.current(environment: ["KVER": "6.12.57+deb12-amd64"]))
        #expect(o.release == "6.12.57+deb12-amd64" && !o.hasZoneDeviceRefcountSeries)
        let u = try #require(KernelVersion.current(environment: [:]))
        #expect(u.release == KernelVersion.unameRelease())
        #expect(KernelVersion.current(environment: ["KVER": ""])?.release == u.release)
        #expect(KernelVersion.current(environment: ["KVER": "garbage"])?.release == u.release)
    }
}

@Suite("Kernel probes: privileges")
struct PrivilegesTests {
    /// CapEff of /proc/self/status, read here by hand, agrees with the probe;
    /// root with CAP_SYS_ADMIN in the initial namespace reads pfns
    /// (pagemap_read: file_ns_capable(file, &init_user_ns, CAP_SYS_ADMIN)).
    @Test func capSysAdminComesFromCapEff() throws {
        let status = try String(contentsOfProcFile: "/proc/self/status")
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("CapEff:") })
        let caps = try #require(UInt64(line.split(separator: "\t").last!, radix: 16))
        #expect(Privileges.effectiveCapabilities() == caps)
        #expect(Privileges.hasCapSysAdmin == (caps >> 21 & 1 == 1))
        #expect(Privileges.isRoot == (geteuid() == 0))
        if Privileges.isRoot && Privileges.hasCapSysAdmin {
            #expect(Pagemap.pfnsVisible())
        }
    }
}
