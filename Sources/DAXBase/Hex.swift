// The hex formatter every module prints addresses, pfns and flags with.

/// "0x" and lowercase hex digits, the kernel's %#llx: `hex(4096)` is "0x1000".
public func hex(_ value: UInt64) -> String {
    "0x" + String(value, radix: 16)
}

/// `width` lowercase hex digits, zero-padded, no prefix (%016llx, %04x); a
/// value with more digits is printed whole.
public func hexDigits(_ value: UInt64, width: Int) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
}
