// A real device-dax character device, /dev/daxX.Y.

import CDaxSys
import DAXBase
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A real /dev/daxX.Y character device, opened and mapped through the host
/// kernel. (DAXCore's `DevDax` is the port of the driver behind such a device.)
public final class DaxCharDevice: DaxDevice {
    public let name: String
    public var kind: DeviceKind { .deviceDax }
    public let devname: String
    public let size: UInt64
    public let align: DaxAlign
    public let ranges: [DevDaxRange]
    public let targetNode: Int?
    public let info: DaxDeviceInfo
    private let fd: Int32
    public var mappingFileDescriptor: Int32 { fd }

    /// Opens `path` ("/dev/dax0.0" or "dax0.0") for read and write.
    ///
    /// Refuses, with one-line errors: a missing path, anything that is not a
    /// device-dax character device (a regular file, /dev/null), a device that
    /// is disabled or owned by kmem, a device of size 0, an alignment other than
    /// 4K/2M/1G, and no permission.
    public init(path given: String) throws(DeviceError) {
        let path = given.hasPrefix("/") ? given : "/dev/" + given
        name = path

        let st: Glibc.stat
        switch Sys.stat(path) {
        case .success(let s): st = s
        case .failure(let e):
            if e == .noSuchFileOrDirectory {
                let base = String(path.split(separator: "/").last ?? "")
                if let why = DaxCharDevice.disabledReason(devname: base) {
                    throw .disabled(device: path, reason: why)
                }
                throw .noSuchDevice(path: path)
            }
            if e == .permissionDenied { throw .permissionDenied(path: path) }
            throw .openFailed(path: path, errno: e)
        }
        guard st.isCharacterDevice else {
            let what = st.isRegularFile ? "a regular file" : st.isDirectory ? "a directory"
                : st.isBlockDevice ? "a block device (fsdax namespaces are block devices; device-dax is a character device)"
                : "not a character device"
            throw .notDeviceDax(path: path, reason: what)
        }
        let sysdev = "/sys/dev/char/\(st.deviceMajor):\(st.deviceMinor)"
        let subsystem = Sys.readlink(sysdev + "/subsystem").map { String($0.split(separator: "/").last ?? "") }
        guard case .success(let sub) = subsystem, sub == "dax" else {
            let got: String
            if case .success(let s) = subsystem { got = "character device \(st.deviceMajor):\(st.deviceMinor) of subsystem '\(s)'" }
            else { got = "character device \(st.deviceMajor):\(st.deviceMinor) with no dax entry in sysfs" }
            throw .notDeviceDax(path: path, reason: got)
        }
        let target = (try? Sys.readlink(sysdev).get()) ?? ""
        devname = String(target.split(separator: "/").last ?? "")
        let sysfs = "/sys/bus/dax/devices/\(devname)"

        switch Sys.readlink(sysfs + "/driver") {
        case .success(let driver):
            if let drv = driver.split(separator: "/").last, drv != "device_dax" {
                throw .busy(device: path, reason: "bound to driver '\(drv)', not device_dax (system-ram mode? try: daxctl reconfigure-device -m devdax \(devname))")
            }
        case .failure:
            // The node can outlive the driver (no udev to remove it).
            throw .disabled(device: path, reason: "no driver bound (try: daxctl enable-device \(devname))")
        }

        // libdaxctl's view (fresh context); sysfs directly if it does not list
        // the device.
        let discovered: DaxDeviceInfo?
        do { discovered = try DaxDiscovery.device(named: devname) }
        catch { throw .discovery(error) }
        let info = discovered ?? DaxCharDevice.sysfsInfo(devname: devname, sysfs: sysfs, major: Int(st.deviceMajor), minor: Int(st.deviceMinor))
        self.info = info

        guard info.size > 0 else { throw .zeroSize(device: path) }
        let alignBytes = info.align == 0 ? UInt64(Sys.pageSize()) : info.align
        guard let a = DaxAlign(bytes: Int(alignBytes)) else {
            throw .badSpec(spec: path, reason: "unsupported alignment \(hex(alignBytes)) (expected 4K, 2M or 1G)")
        }
        align = a
        size = info.size
        targetNode = info.targetNode
        ranges = DaxCharDevice.ranges(of: info)

        switch Sys.open(path, O_RDWR) {
        case .success(let f): fd = f
        case .failure(let e):
            switch e {
            case .permissionDenied, .notPermitted: throw .permissionDenied(path: path)
            case .resourceBusy: throw .busy(device: path, reason: "open returned EBUSY")
            case .noSuchAddressOrDevice, .operationNotSupportedByDevice:
                throw .disabled(device: path, reason: "open returned \(errnoName(e.rawValue))")
            default: throw .openFailed(path: path, errno: e)
            }
        }
    }

    deinit { Sys.close(fd) }

    /// Maps through the kernel. The kernel's own check_vma decides MAP_PRIVATE
    /// and misalignment; its errno comes back in `.mapFailed`.
    public func map(offset: UInt64, length: UInt64?, options: MapOptions) throws(DeviceError) -> DeviceMapping {
        let len = try validateRange(offset: offset, length: length, options: options)
        let prot = options.contains(.readOnly) ? PROT_READ : (PROT_READ | PROT_WRITE)
        var flags: Int32 = options.contains(.private) ? MAP_PRIVATE : MAP_SHARED
        if options.contains(.sync) { flags = dax_map_shared_validate() | dax_map_sync() }
        if options.contains(.populate) { flags |= MAP_POPULATE }
        switch Sys.mmap(nil, Int(len), prot, flags, fd, Int(offset)) {
        case .success(let p):
            return DeviceMapping(device: self, offset: offset, length: len, options: options,
                                 base: p, unmapAddress: p, unmapLength: Int(len))
        case .failure(let e):
            throw .mapFailed(device: name, request: describeRequest(offset: offset, length: len, options: options),
                             errno: e, reason: Self.explain(e, offset: offset, length: len, options: options, align: align))
        }
    }

    /// Why the kernel most likely refused (device-dax's check_vma and mmap rules).
    static func explain(_ e: Errno, offset: UInt64, length: UInt64, options: MapOptions, align: DaxAlign) -> String {
        let a = UInt64(align.bytes)
        switch e {
        case .invalidArgument:
            if options.contains(.private) { return "device-dax allows only shared mappings (MAP_PRIVATE refused)" }
            if offset % a != 0 || length % a != 0 {
                return "offset and length must be multiples of the device alignment \(align)"
            }
            return "refused by the device's mmap checks"
        case .notSupported: return "flag not supported by this device"
        case .noSuchAddressOrDevice: return "the device went away"
        default: return "mmap refused"
        }
    }

    /// nil if no such device exists in sysfs; otherwise why it has no usable node.
    static func disabledReason(devname: String) -> String? {
        let sysfs = "/sys/bus/dax/devices/\(devname)"
        guard case .success = Sys.stat(sysfs) else { return nil }
        switch Sys.readlink(sysfs + "/driver") {
        case .success(let d):
            let drv = d.split(separator: "/").last.map(String.init) ?? d
            return "bound to driver '\(drv)', no /dev node (try: daxctl reconfigure-device -m devdax \(devname))"
        case .failure:
            return "no driver bound (try: daxctl enable-device \(devname))"
        }
    }

    static func ranges(of info: DaxDeviceInfo) -> [DevDaxRange] {
        if !info.mappings.isEmpty {
            // page_offset counts PAGE_SIZE (4K on x86-64) pages, as pgoff does.
            return info.mappings
                .sorted { $0.pageOffset < $1.pageOffset }
                .map { DevDaxRange(pgoff: $0.pageOffset, range: PhysicalRange(start: $0.start, size: $0.size)) }
        }
        return info.resource != 0 ? [DevDaxRange(pgoff: 0, range: PhysicalRange(start: info.resource, size: info.size))] : []
    }

    /// Reads the device's attributes straight from sysfs.
    static func sysfsInfo(devname: String, sysfs: String, major: Int, minor: Int) -> DaxDeviceInfo {
        func num(_ attr: String) -> UInt64? {
            guard case .success(let s) = Sys.readSmallFile(sysfs + "/" + attr) else { return nil }
            return try? parseSize(s)
        }
        func int(_ attr: String) -> Int? {
            guard case .success(let s) = Sys.readSmallFile(sysfs + "/" + attr) else { return nil }
            return Int(s)
        }
        var mappings: [DaxMappingInfo] = []
        var i = 0
        while let start = num("mapping\(i)/start"), let end = num("mapping\(i)/end") {
            mappings.append(DaxMappingInfo(pageOffset: num("mapping\(i)/page_offset") ?? 0, start: start, end: end))
            i += 1
        }
        let parts = devname.dropFirst(3).split(separator: ".")
        let node = int("target_node") ?? -1
        return DaxDeviceInfo(
            devname: devname,
            id: parts.count == 2 ? Int(parts[1]) ?? 0 : 0,
            major: major, minor: minor,
            size: num("size") ?? 0,
            align: num("align") ?? 0,
            resource: num("resource") ?? 0,
            targetNode: node >= 0 ? node : nil,
            mode: "devdax",
            enabled: true,
            mappings: mappings,
            regionID: parts.count == 2 ? Int(parts[0]) ?? 0 : 0)
    }
}
