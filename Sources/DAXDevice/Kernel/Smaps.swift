// /proc/self/smaps: per-VMA accounting (fs/proc/task_mmu.c show_smap,
// __show_smap, show_smap_vma_flags; Documentation/filesystems/proc.rst).

import SystemPackage

/// The smaps record of one VMA. Sizes are in bytes (smaps prints kB).
///
/// For device-dax, `KernelPageSize` and `MMUPageSize` are the device's
/// alignment (vma_kernel_pagesize asks the driver's ->pagesize, dev_dax_pagesize),
/// whatever size the faults actually mapped; `Rss` and `FilePmdMapped` count
/// only what the smaps walk finds through vm_normal_page(_pmd), which on 6.12
/// is nothing for device-dax (devmap entries), so they read 0 there. Reading
/// smaps walks the page tables of **every** VMA of the process with the same
/// walk rule as pagemap and so unmaps PUD-mapped (1 GiB) device-dax ranges
/// (see `Pagemap`).
public struct SmapsEntry: Equatable, Sendable {
    public var start: UInt
    public var end: UInt
    /// "rw-s", "r-xp", ...
    public var permissions: String
    /// The file, "[heap]", "[stack]", "/memfd:name (deleted)", or "".
    public var pathname: String
    public var size: Int
    public var kernelPageSize: Int
    public var mmuPageSize: Int
    public var rss: Int
    /// Nil when the kernel prints no such line.
    public var filePmdMapped: Int?
    public var anonHugePages: Int?
    /// Two-letter flags of show_smap_vma_flags: "rd", "wr", "sh", "hg" (VM_HUGEPAGE),
    /// "nh" (VM_NOHUGEPAGE), "dd" (VM_DONTDUMP), "mg" (VM_MERGEABLE), ...
    public var vmFlags: [String]
    /// Every other "Key: value kB" line, in bytes (or the bare number).
    public var other: [String: Int]

    public func hasFlag(_ flag: String) -> Bool { vmFlags.contains(flag) }
    public var range: Range<UInt> { start..<end }

    /// The record of the VMA containing `address` in /proc/self/smaps, or nil
    /// when no VMA contains it.
    public static func containing(address: UInt) throws(KernelCallError) -> SmapsEntry? {
        switch Sys.readSmallFile("/proc/self/smaps") {
        case .success(let text): return parse(text).first { $0.range.contains(address) }
        case .failure(let e):
            throw KernelCallError(call: "read(/proc/self/smaps)", errno: e,
                                  reason: "smaps needs CONFIG_PROC_PAGE_MONITOR")
        }
    }

    /// Every record of an smaps text, in file order. Lines that fit no record
    /// are skipped.
    public static func parse(_ text: String) -> [SmapsEntry] {
        var out: [SmapsEntry] = []
        var current: SmapsEntry?
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if let header = parseHeader(line) {
                if let c = current { out.append(c) }
                current = header
                continue
            }
            guard current != nil, let colon = line.firstIndex(of: ":") else { continue }
            let key = String(line[..<colon])
            let value = String(line[line.index(after: colon)...]).trimmingSpaces()
            if key == "VmFlags" {
                current!.vmFlags = value.split(separator: " ").map(String.init)
                continue
            }
            guard let bytes = parseAmount(value) else { continue }
            switch key {
            case "Size": current!.size = bytes
            case "KernelPageSize": current!.kernelPageSize = bytes
            case "MMUPageSize": current!.mmuPageSize = bytes
            case "Rss": current!.rss = bytes
            case "FilePmdMapped": current!.filePmdMapped = bytes
            case "AnonHugePages": current!.anonHugePages = bytes
            default: current!.other[key] = bytes
            }
        }
        if let c = current { out.append(c) }
        return out
    }

    /// "start-end perms offset dev inode [pathname]" (show_vma_header_prefix).
    private static func parseHeader(_ line: Substring) -> SmapsEntry? {
        let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
        guard fields.count >= 5, let dash = fields[0].firstIndex(of: "-"),
              let start = UInt(fields[0][..<dash], radix: 16),
              let end = UInt(fields[0][fields[0].index(after: dash)...], radix: 16),
              fields[1].count == 4 else { return nil }
        let path = fields.count > 5 ? String(fields[5]).trimmingSpaces() : ""
        return SmapsEntry(start: start, end: end, permissions: String(fields[1]), pathname: path,
                          size: 0, kernelPageSize: 0, mmuPageSize: 0, rss: 0,
                          filePmdMapped: nil, anonHugePages: nil, vmFlags: [], other: [:])
    }

    /// "4 kB" → 4096; "0" → 0; anything else → nil.
    private static func parseAmount(_ value: String) -> Int? {
        let parts = value.split(separator: " ")
        guard let first = parts.first, let n = Int(first) else { return nil }
        if parts.count == 2 && parts[1] == "kB" { return n * 1024 }
        return parts.count == 1 ? n : nil
    }
}
