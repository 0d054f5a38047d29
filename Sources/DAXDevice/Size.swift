// Byte sizes as users write them (4K, 2M, 1G, 512M, 0x200000, 4096) and the
// three device-dax alignments.

/// A device-dax alignment: the page size a device maps with.
public enum DaxAlign: Int, Sendable, CaseIterable, CustomStringConvertible {
    case pte = 0x1000          // 4 KiB
    case pmd = 0x20_0000       // 2 MiB
    case pud = 0x4000_0000     // 1 GiB

    public var bytes: Int { rawValue }

    /// The fault order a mapping of this alignment uses (0, 9 or 18).
    public var order: Int { (rawValue >> 12).trailingZeroBitCount }

    public var description: String { formatSize(UInt64(rawValue)) }

    /// The alignment of a byte count, if it is one of the three.
    public init?(bytes: Int) { self.init(rawValue: bytes) }
}

/// Why a size string was refused.
public struct SizeParseError: Error, Equatable, Sendable, CustomStringConvertible {
    public let text: String
    public let reason: String
    public var description: String { "'\(text)': \(reason)" }
}

/// Parses "4096", "0x1000", "4K", "4k", "2M", "1G", "1T", "512MiB". Suffixes are
/// binary (K = 1024), as in ndctl and the kernel's memparse.
public func parseSize(_ text: String) throws(SizeParseError) -> UInt64 {
    let t = text.trimmingSpaces()
    if t.isEmpty { throw SizeParseError(text: text, reason: "empty size") }
    let lower = t.lowercased()
    if lower.hasPrefix("0x") {
        guard let v = UInt64(lower.dropFirst(2), radix: 16) else {
            throw SizeParseError(text: text, reason: "not a hexadecimal number")
        }
        return v
    }
    var digits = Substring(lower)
    var suffix = Substring("")
    if let idx = lower.firstIndex(where: { !$0.isNumber }) {
        digits = lower[..<idx]
        suffix = lower[idx...]
    }
    guard !digits.isEmpty, let base = UInt64(digits) else {
        throw SizeParseError(text: text, reason: "not a number")
    }
    let shift: UInt64
    switch suffix {
    case "", "b": shift = 0
    case "k", "kb", "kib": shift = 10
    case "m", "mb", "mib": shift = 20
    case "g", "gb", "gib": shift = 30
    case "t", "tb", "tib": shift = 40
    default: throw SizeParseError(text: text, reason: "unknown unit '\(suffix)' (use K, M, G or T)")
    }
    let (v, overflow) = base.multipliedReportingOverflow(by: 1 << shift)
    if overflow { throw SizeParseError(text: text, reason: "too large") }
    return v
}

/// "4K", "2M", "1G", "1.50G"-free exact forms where possible, else bytes.
public func formatSize(_ bytes: UInt64) -> String {
    let units: [(UInt64, String)] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")]
    for (unit, name) in units where bytes >= unit && bytes % unit == 0 {
        return "\(bytes / unit)\(name)"
    }
    if bytes >= 1 << 20 {
        // Not an exact multiple: one decimal of MiB/GiB for a table.
        let (unit, name): (UInt64, String) = bytes >= 1 << 30 ? (1 << 30, "G") : (1 << 20, "M")
        let tenths = (bytes * 10 + unit / 2) / unit
        return "\(tenths / 10).\(tenths % 10)\(name)"
    }
    return "\(bytes)"
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" { s.removeLast() }
        return String(s)
    }
}
