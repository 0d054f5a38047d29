// Device-dax discovery through libdaxctl.
//
// libdaxctl enumerates lazily and caches: once a context has listed its
// regions it never rescans, so every query here makes a fresh context and
// drops it before returning.

import CDaxSys
import DAXBase

/// One physical range of a device (a `mappingN` directory in sysfs).
public struct DaxMappingInfo: Sendable, Equatable {
    public var pageOffset: UInt64  // device offset of the range, in pages
    public var start: UInt64       // physical start
    public var end: UInt64         // physical end, inclusive
    public var size: UInt64 { end &- start &+ 1 }
}

/// What libdaxctl says about one device, read once at discovery.
public struct DaxDeviceInfo: Sendable, Equatable {
    public var devname: String           // "dax0.0"
    public var id: Int
    public var major: Int
    public var minor: Int
    public var size: UInt64
    /// `align` attribute; 0 when the kernel predates it (before 5.10).
    public var align: UInt64
    /// Physical start of the first range (0 if unknown).
    public var resource: UInt64
    /// NUMA node of the memory; nil when the kernel reports -1.
    public var targetNode: Int?
    /// "devdax", or "system-ram" when the kmem driver owns it.
    public var mode: String
    public var enabled: Bool
    public var mappings: [DaxMappingInfo]
    /// kmem facts, present in system-ram mode.
    public var onlineMemblocks: Int?
    public var totalMemblocks: Int?
    public var movable: Bool?
    public var regionID: Int

    public var path: String { "/dev/\(devname)" }
}

/// What libdaxctl says about one dax region.
public struct DaxRegionInfo: Sendable, Equatable {
    public var id: Int
    /// Absolute sysfs path of the device that owns `dax_region/`.
    public var path: String
    /// nil when `dax_region/size` could not be read.
    public var size: UInt64?
    public var availableSize: UInt64
    /// nil when `dax_region/align` could not be read.
    public var align: UInt64?
    public var devices: [DaxDeviceInfo]
}

public enum DiscoveryError: Error, Equatable, Sendable, CustomStringConvertible {
    /// daxctl_new failed with this errno.
    case contextFailed(Int32)

    public var description: String {
        switch self {
        case .contextFailed(let rc):
            return "libdaxctl: cannot create a context: \(errnoName(-rc))"
        }
    }
}

public enum DaxDiscovery {
    /// Every dax region and its devices, as libdaxctl sees them now.
    /// Devices of size 0 (idle seeds) are included; `list` filters them the
    /// way `daxctl list` does.
    public static func scan() throws(DiscoveryError) -> [DaxRegionInfo] {
        var ctx: OpaquePointer?
        let rc = daxctl_new(&ctx)
        guard rc == 0, let ctx else { throw .contextFailed(rc) }
        defer { daxctl_unref(ctx) }

        var regions: [DaxRegionInfo] = []
        var region = daxctl_region_get_first(ctx)
        while let r = region {
            regions.append(regionInfo(r))
            region = daxctl_region_get_next(r)
        }
        return regions
    }

    /// All devices of all regions, in discovery order.
    public static func devices() throws(DiscoveryError) -> [DaxDeviceInfo] {
        try scan().flatMap(\.devices)
    }

    /// The device named `devname` ("dax0.0"), if libdaxctl knows it.
    public static func device(named devname: String) throws(DiscoveryError) -> DaxDeviceInfo? {
        try devices().first { $0.devname == devname }
    }

    private static func regionInfo(_ r: OpaquePointer) -> DaxRegionInfo {
        let size = daxctl_region_get_size(r)
        let align = daxctl_region_get_align(r)
        var devs: [DaxDeviceInfo] = []
        var dev = daxctl_dev_get_first(r)
        let regionID = Int(daxctl_region_get_id(r))
        while let d = dev {
            devs.append(deviceInfo(d, regionID: regionID))
            dev = daxctl_dev_get_next(d)
        }
        return DaxRegionInfo(
            id: regionID,
            path: string(daxctl_region_get_path(r)),
            size: size == UInt64.max ? nil : UInt64(size),
            availableSize: UInt64(daxctl_region_get_available_size(r)),
            align: align == UInt.max ? nil : UInt64(align),
            devices: devs)
    }

    private static func deviceInfo(_ d: OpaquePointer, regionID: Int) -> DaxDeviceInfo {
        var mappings: [DaxMappingInfo] = []
        var m = daxctl_mapping_get_first(d)
        while let mp = m {
            mappings.append(DaxMappingInfo(
                pageOffset: UInt64(daxctl_mapping_get_offset(mp)),
                start: UInt64(daxctl_mapping_get_start(mp)),
                end: UInt64(daxctl_mapping_get_end(mp))))
            m = daxctl_mapping_get_next(mp)
        }
        let node = Int(daxctl_dev_get_target_node(d))
        let mem = daxctl_dev_get_memory(d)
        var info = DaxDeviceInfo(
            devname: string(daxctl_dev_get_devname(d)),
            id: Int(daxctl_dev_get_id(d)),
            major: Int(daxctl_dev_get_major(d)),
            minor: Int(daxctl_dev_get_minor(d)),
            size: UInt64(daxctl_dev_get_size(d)),
            align: UInt64(daxctl_dev_get_align(d)),
            resource: UInt64(daxctl_dev_get_resource(d)),
            targetNode: node >= 0 ? node : nil,
            mode: mem != nil ? "system-ram" : "devdax",
            enabled: daxctl_dev_is_enabled(d) != 0,
            mappings: mappings,
            regionID: regionID)
        if let mem, info.resource != 0 {
            info.onlineMemblocks = Int(daxctl_memory_is_online(mem))
            info.totalMemblocks = Int(daxctl_memory_num_sections(mem))
            let mv = daxctl_memory_is_movable(mem)
            info.movable = mv == 1 ? true : (mv == 0 ? false : nil)
        }
        return info
    }

    private static func string(_ p: UnsafePointer<CChar>?) -> String {
        p.map { String(cString: $0) } ?? ""
    }
}
