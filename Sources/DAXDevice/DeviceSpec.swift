// What `--device` accepts, and opening the default device.
//
//   /dev/dax0.0 or dax0.0                  a real device-dax instance
//   emulated                               the embedded device, 1G at 2M align
//   emulated:size=1G,align=2M[,base=0x...][,node=N]

import DAXBase

public enum DeviceSpec: Equatable, Sendable, CustomStringConvertible {
    case real(path: String)
    case emulated(size: UInt64, align: DaxAlign, base: UInt64, node: Int?)

    public var description: String {
        switch self {
        case .real(let p): return p
        case .emulated(let s, let a, let b, let n):
            var d = "emulated:size=\(formatSize(s)),align=\(a)"
            if b != EmulatedDevice.defaultPhysicalBase { d += ",base=\(hex(b))" }
            if let n { d += ",node=\(n)" }
            return d
        }
    }

    public init(parsing text: String) throws(DeviceError) {
        if text == "emulated" || text.hasPrefix("emulated:") {
            var size = EmulatedDevice.defaultSize
            var align = EmulatedDevice.defaultAlign
            var base = EmulatedDevice.defaultPhysicalBase
            var node: Int? = nil
            let params = text == "emulated" ? "" : String(text.dropFirst("emulated:".count))
            for item in params.split(separator: ",", omittingEmptySubsequences: false) where !(params.isEmpty) {
                let kv = item.split(separator: "=", maxSplits: 1).map(String.init)
                guard kv.count == 2, !kv[1].isEmpty else {
                    throw .badSpec(spec: text, reason: "expected key=value, got '\(item)'")
                }
                do {
                    switch kv[0] {
                    case "size": size = try parseSize(kv[1])
                    case "align":
                        let bytes = try parseSize(kv[1])
                        guard let a = DaxAlign(bytes: Int(clamping: bytes)) else {
                            throw DeviceError.badSpec(spec: text, reason: "unknown align '\(kv[1])' (use 4K, 2M or 1G)")
                        }
                        align = a
                    case "base": base = try parseSize(kv[1])
                    case "node":
                        guard let n = Int(kv[1]), n >= 0 else {
                            throw DeviceError.badSpec(spec: text, reason: "node must be a non-negative integer")
                        }
                        node = n
                    default:
                        throw DeviceError.badSpec(spec: text, reason: "unknown key '\(kv[0])' (size, align, base, node)")
                    }
                } catch let e as SizeParseError {
                    throw .badSpec(spec: text, reason: "bad \(kv[0]) \(e)")
                } catch let e as DeviceError {
                    throw e
                } catch {
                    throw .badSpec(spec: text, reason: "\(error)")
                }
            }
            if size == 0 { throw .zeroSize(device: text) }
            if size % UInt64(align.bytes) != 0 {
                throw .badSpec(spec: text, reason: "size \(formatSize(size)) is not a multiple of align \(align)")
            }
            self = .emulated(size: size, align: align, base: base, node: node)
            return
        }
        if text.isEmpty { throw .badSpec(spec: "''", reason: "empty device name") }
        self = .real(path: text.hasPrefix("/") ? text : "/dev/" + text)
    }

    /// Opens the device this names.
    public func open() throws(DeviceError) -> any DaxDevice {
        switch self {
        case .real(let p): return try DaxCharDevice(path: p)
        case .emulated(let s, let a, let b, let n): return try EmulatedDevice(size: s, align: a, base: b, node: n)
        }
    }

    /// The default: the first enabled real device-dax instance with a /dev
    /// node and non-zero size, else the embedded emulated device.
    public static func defaultSpec() throws(DeviceError) -> DeviceSpec {
        let devices: [DaxDeviceInfo]
        do { devices = try DaxDiscovery.devices() } catch { throw .discovery(error) }
        if let d = devices.first(where: { $0.enabled && $0.size > 0 && $0.mode == "devdax" }) {
            return .real(path: d.path)
        }
        return .emulated(size: EmulatedDevice.defaultSize, align: EmulatedDevice.defaultAlign,
                         base: EmulatedDevice.defaultPhysicalBase, node: nil)
    }
}
