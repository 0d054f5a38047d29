// An mmap of a DAX device, unmapped when the last reference goes.

import SystemPackage

/// A live mapping of `length` bytes of a device starting at device offset
/// `offset`. The address is aligned to the device's alignment.
///
/// The pointer is valid until `unmap()` or deinit; callers that take
/// `baseAddress` must not use it past the mapping's lifetime.
public final class DeviceMapping: @unchecked Sendable {
    // @unchecked: the stored pointer is immutable and the object only hands it
    // out; synchronising access to the memory is the caller's business, as with
    // any shared mapping.
    public let device: any DaxDevice
    public let offset: UInt64
    public let length: UInt64
    public let options: MapOptions
    public let baseAddress: UnsafeMutableRawPointer
    private let unmapAddress: UnsafeMutableRawPointer
    private let unmapLength: Int
    private var live = true

    init(device: any DaxDevice, offset: UInt64, length: UInt64, options: MapOptions,
         base: UnsafeMutableRawPointer, unmapAddress: UnsafeMutableRawPointer, unmapLength: Int) {
        self.device = device
        self.offset = offset
        self.length = length
        self.options = options
        self.baseAddress = base
        self.unmapAddress = unmapAddress
        self.unmapLength = unmapLength
    }

    /// The virtual address as an integer.
    public var address: UInt { UInt(bitPattern: baseAddress) }

    /// munmap now (idempotent).
    public func unmap() {
        guard live else { return }
        live = false
        _ = Sys.munmap(unmapAddress, unmapLength)
    }

    deinit { unmap() }
}
