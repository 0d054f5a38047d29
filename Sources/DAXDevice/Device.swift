// The device interface shared by real device-dax and the embedded emulated
// device: a size, an alignment, physical ranges, and MAP_SHARED mappings at
// the device's alignment.

import DAXBase
import SystemPackage

public enum DeviceKind: String, Sendable {
    case deviceDax = "device-dax"
    case emulated = "emulated"
}

/// How to map. Device-dax accepts only shared mappings; `private` exists so
/// callers can ask for one and get the kernel's refusal.
public struct MapOptions: OptionSet, Sendable, CustomStringConvertible {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let shared = MapOptions(rawValue: 1 << 0)
    public static let `private` = MapOptions(rawValue: 1 << 1)
    /// MAP_SHARED_VALIDATE | MAP_SYNC.
    public static let sync = MapOptions(rawValue: 1 << 2)
    /// MAP_POPULATE: fault everything in at mmap time.
    public static let populate = MapOptions(rawValue: 1 << 3)
    public static let readOnly = MapOptions(rawValue: 1 << 4)

    public var description: String {
        var parts: [String] = []
        if contains(.private) { parts.append("MAP_PRIVATE") }
        if contains(.shared) && !contains(.sync) { parts.append("MAP_SHARED") }
        if contains(.sync) { parts.append("MAP_SHARED_VALIDATE|MAP_SYNC") }
        if contains(.populate) { parts.append("MAP_POPULATE") }
        if contains(.readOnly) { parts.append("PROT_READ") }
        return parts.isEmpty ? "no flags" : parts.joined(separator: "|")
    }
}

/// A DAX device the port can put memory under.
public protocol DaxDevice: AnyObject, Sendable {
    /// What the user named: "/dev/dax0.0" or "emulated:size=1G,align=2M".
    var name: String { get }
    var kind: DeviceKind { get }
    /// Usable bytes.
    var size: UInt64 { get }
    var align: DaxAlign { get }
    /// Physical layout, in device-offset order: device bytes [offset,
    /// offset + range.size) live at physical `range`.
    var ranges: [DevDaxRange] { get }
    /// NUMA node of the memory, if known.
    var targetNode: Int? { get }
    /// The open file whose offsets are the device's bytes (the char device,
    /// or the emulated device's memfd), for callers that place mappings
    /// themselves (MAP_FIXED into a reserved window). Valid while the device
    /// object lives; not to be closed.
    var mappingFileDescriptor: Int32 { get }
    /// Maps [offset, offset+length) of the device. `length` nil maps to the end.
    func map(offset: UInt64, length: UInt64?, options: MapOptions) throws(DeviceError) -> DeviceMapping
}

extension DaxDevice {
    public func map(offset: UInt64 = 0, length: UInt64? = nil) throws(DeviceError) -> DeviceMapping {
        try map(offset: offset, length: length, options: .shared)
    }

    /// dax_pgoff_to_phys: the physical address of a device offset, taken from
    /// the first range that contains it; nil outside every range.
    public func physicalAddress(ofOffset offset: UInt64) -> UInt64? {
        for r in ranges where offset >= r.offset && offset - r.offset < r.range.size {
            return r.range.start + (offset - r.offset)
        }
        return nil
    }

    /// One line naming the device, for "using device ..." messages.
    public var summary: String {
        let base = ranges.first.map { hex($0.range.start) } ?? "?"
        let node = targetNode.map { ", node \($0)" } ?? ""
        return "\(name) (\(kind.rawValue), size \(formatSize(size)), align \(align), phys \(base)\(node))"
    }

    /// The request as text, for error messages.
    func describeRequest(offset: UInt64, length: UInt64, options: MapOptions) -> String {
        "[\(hex(offset)), +\(hex(length))) \(options)"
    }

    /// Checks the port applies before mapping, for requests the kernel would
    /// accept but that cannot work (past the end), or that it would refuse with
    /// a less helpful message. Returns the length to map.
    func validateRange(offset: UInt64, length: UInt64?, options: MapOptions) throws(DeviceError) -> UInt64 {
        guard offset <= size else {
            throw .mapFailed(device: name, request: describeRequest(offset: offset, length: length ?? 0, options: options),
                             errno: .invalidArgument,
                             reason: "offset \(hex(offset)) is past the device's end \(hex(size))")
        }
        let len = length ?? (size - offset)
        let req = describeRequest(offset: offset, length: len, options: options)
        if len == 0 {
            throw .mapFailed(device: name, request: req, errno: .invalidArgument, reason: "zero length")
        }
        if len > size - offset {
            throw .mapFailed(device: name, request: req, errno: .invalidArgument,
                             reason: "range ends past the device's end \(hex(size)) (the kernel would map it and raise SIGBUS on access)")
        }
        return len
    }
}
