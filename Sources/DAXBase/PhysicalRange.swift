// The one physical-range type of the package: struct range from
// include/linux/range.h, physical addresses [start, end] with an inclusive end.
// pgmaps (MMCore), device-dax ranges (DAXCore) and the devices' layouts
// (DAXDevice) all describe memory with it.

/// struct range: physical [start, end], end inclusive. An empty range has
/// end == start - 1, as in the kernel.
public struct PhysicalRange: Sendable, Hashable, CustomStringConvertible {
    public var start: UInt64
    public var end: UInt64

    @inlinable public init(start: UInt64, end: UInt64) {
        self.start = start
        self.end = end
    }

    /// [start, start + size - 1].
    @inlinable public init(start: UInt64, size: UInt64) {
        self.start = start
        self.end = start &+ size &- 1
    }

    /// range_len
    @inlinable public var size: UInt64 { end &- start &+ 1 }

    /// First pfn (PAGE_SHIFT 12).
    @inlinable public var startPfn: UInt64 { start >> 12 }
    /// One past the last pfn.
    @inlinable public var endPfn: UInt64 { (end &+ 1) >> 12 }

    /// range_contains-style test for one address.
    @inlinable public func contains(_ addr: UInt64) -> Bool { addr >= start && addr <= end }

    public var description: String { "[\(hex(start))-\(hex(end))]" }
}

/// struct dev_dax_range: device pages [pgoff, pgoff + pages) live at the
/// physical `range`. A device-dax instance is an ordered list of them, the
/// kernel's and sysfs' mappingN/{start,end,page_offset}.
public struct DevDaxRange: Sendable, Hashable {
    /// First device page offset the range backs.
    public var pgoff: UInt64
    public var range: PhysicalRange

    @inlinable public init(pgoff: UInt64, range: PhysicalRange) {
        self.pgoff = pgoff
        self.range = range
    }

    /// Pages in the range.
    @inlinable public var pages: UInt64 { range.size >> 12 }
    /// Device byte offset of the range's first byte (pgoff * PAGE_SIZE).
    @inlinable public var offset: UInt64 { pgoff << 12 }
}
