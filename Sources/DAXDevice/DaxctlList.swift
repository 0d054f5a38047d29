// The JSON of `daxctl list -R -D` (ndctl's daxctl/json.c), built from our own
// discovery so scripts written for daxctl read daxmm's output unchanged.

public struct ListOptions: Sendable {
    /// -M: include each device's physical mappings.
    public var mappings = false
    /// -i: include idle devices (size 0).
    public var idle = false
    public init(mappings: Bool = false, idle: Bool = false) {
        self.mappings = mappings; self.idle = idle
    }
}

public enum DaxctlList {
    /// The array `daxctl list -R -D` prints: one object per region with its
    /// devices. Keys, their order and their omission rules follow daxctl.
    public static func regionsJSON(_ regions: [DaxRegionInfo], options: ListOptions = ListOptions()) -> JSONValue {
        .array(regions.map { regionJSON($0, options: options) })
    }

    public static func regionJSON(_ r: DaxRegionInfo, options: ListOptions) -> JSONValue {
        var m: [(String, JSONValue)] = []
        let prefix = "/sys/devices"
        m.append(("path", .string(r.path.hasPrefix(prefix) ? String(r.path.dropFirst(prefix.count)) : r.path)))
        m.append(("id", .int(Int64(r.id))))
        if let s = r.size { m.append(("size", .uint(s))) }
        if r.availableSize != 0 { m.append(("available_size", .uint(r.availableSize))) }
        if let a = r.align { m.append(("align", .uint(a))) }
        let devs = r.devices.filter { options.idle || $0.size != 0 }
        if !devs.isEmpty { m.append(("devices", .array(devs.map { deviceJSON($0, options: options) }))) }
        return .object(m)
    }

    public static func deviceJSON(_ d: DaxDeviceInfo, options: ListOptions) -> JSONValue {
        var m: [(String, JSONValue)] = []
        m.append(("chardev", .string(d.devname)))
        m.append(("size", .uint(d.size)))
        if let n = d.targetNode { m.append(("target_node", .int(Int64(n)))) }
        if d.align > 0 { m.append(("align", .uint(d.align))) }
        m.append(("mode", .string(d.mode)))
        if let on = d.onlineMemblocks { m.append(("online_memblocks", .int(Int64(on)))) }
        if let tot = d.totalMemblocks { m.append(("total_memblocks", .int(Int64(tot)))) }
        if let mv = d.movable { m.append(("movable", .bool(mv))) }
        if !d.enabled { m.append(("state", .string("disabled"))) }
        if options.mappings && !d.mappings.isEmpty {
            m.append(("mappings", .array(d.mappings.map { mp in
                .object([("page_offset", .uint(mp.pageOffset)), ("start", .uint(mp.start)),
                         ("end", .uint(mp.end)), ("size", .uint(mp.size))])
            })))
        }
        return .object(m)
    }
}
