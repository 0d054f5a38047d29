// The running kernel's version, for the cross-checks whose expected answers
// differ between kernels (before and after the ZONE_DEVICE refcount series).

#if canImport(Glibc)
import Glibc
#endif

/// major.minor.patch of a uname release, with the rest kept as `suffix`
/// ("6.12.57+deb12-amd64" is 6.12.57 with suffix "+deb12-amd64").
public struct KernelVersion: Hashable, Sendable, CustomStringConvertible {
    public let major: Int
    public let minor: Int
    public let patch: Int
    /// Everything after the numbers: "-1-amd64", "+deb12-amd64", "-rc3", "".
    public let suffix: String
    /// The whole release string as given.
    public let release: String

    /// Parses "MAJOR.MINOR[.PATCH][suffix]"; nil when it does not start so.
    public init?(release: String) {
        var rest = Substring(release)
        func number() -> Int? {
            let digits = rest.prefix { $0.isASCII && $0.isNumber }
            guard !digits.isEmpty, digits.count <= 9, let n = Int(digits) else { return nil }
            rest = rest.dropFirst(digits.count)
            return n
        }
        guard let major = number(), rest.first == "." else { return nil }
        rest = rest.dropFirst()
        guard let minor = number() else { return nil }
        var patch = 0
        if rest.first == ".", rest.dropFirst().first?.isNumber == true {
            rest = rest.dropFirst()
            patch = number() ?? 0
        }
        self.major = major
        self.minor = minor
        self.patch = patch
        self.suffix = String(rest)
        self.release = release
    }

    /// The release of the running kernel (uname -r), or `KVER` from
    /// `environment` when that is set and parses: the override lets a run
    /// check the answers expected of another kernel.
    public static func current(environment: [String: String]? = nil) -> KernelVersion? {
        let override = environment.map { $0["KVER"] } ?? getenv("KVER").flatMap { String(validatingCString: $0) }
        if let kver = override, !kver.isEmpty, let v = KernelVersion(release: kver) { return v }
        return KernelVersion(release: unameRelease())
    }

    /// uname(2)'s release field.
    public static func unameRelease() -> String {
        var u = utsname()
        guard uname(&u) == 0 else { return "" }
        return withUnsafeBytes(of: &u.release) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// This version is `major.minor.patch` or later (the suffix is ignored).
    public func atLeast(_ major: Int, _ minor: Int, _ patch: Int = 0) -> Bool {
        (self.major, self.minor, self.patch) >= (major, minor, patch)
    }

    /// The kernel carries "fs/dax: Fix ZONE_DEVICE page reference counts",
    /// merged for 6.15: DAX folios are refcounted and mapcounted like file
    /// pages (device-dax PTEs through vmf_insert_page_mkwrite, PMDs and PUDs
    /// through vmf_insert_folio_pmd/pud, each adding an rmap), so pagemap's
    /// exclusive bit is 1 for a device-dax page mapped once. Before it (6.12),
    /// device-dax PTEs are pte_devmap, for which vm_normal_page returns NULL
    /// (mm/memory.c), and PMDs come from vmf_insert_pfn_pmd, which adds no
    /// rmap: pte_to_pagemap_entry finds no folio (file and exclusive bits 0)
    /// and pagemap_pmd_range finds a folio whose mapcount is 0 (file bit 1,
    /// exclusive bit 0). The series is not in the 6.12 stable line; a kernel
    /// that backports it reports the newer answers under an older version.
    public var hasZoneDeviceRefcountSeries: Bool { atLeast(6, 15) }

    public var description: String { "\(major).\(minor).\(patch)\(suffix)" }
}
