// An mmap of a DAX device, unmapped when the last reference goes.

import SystemPackage

/// A live mapping of `length` bytes of a device starting at device offset
/// `offset`. The address is aligned to the device's alignment.
///
/// The memory is lent out only for the length of a closure
/// (`withUnsafeMutableBytes`), during which the mapping stays alive.
public final class DeviceMapping: @unchecked Sendable {
    // @unchecked: the stored pointer is immutable and the object only hands it
    // out; synchronising access to the memory is the caller's business, as with
    // any shared mapping.
    public let device: any DaxDevice
    public let offset: UInt64
    public let length: UInt64
    public let options: MapOptions
    /// The first mapped byte (device offset `offset`). Set in init, never
    /// changed; valid until `unmap()` or deinit, after which the range may be
    /// reused by any other mapping. Package code that keeps it must keep this
    /// object alive and not call `unmap()` meanwhile.
    package let baseAddress: UnsafeMutableRawPointer
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

    /// Lends the mapped bytes to `body`. The buffer must not escape `body`;
    /// the mapping is kept alive until `body` returns. Precondition: not
    /// unmapped. Accesses race with other mappings of the same device memory
    /// exactly as plain memory accesses do.
    public func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        precondition(live, "\(device.name): mapping used after unmap()")
        return try withExtendedLifetime(self) {
            try body(UnsafeMutableRawBufferPointer(start: baseAddress, count: Int(length)))
        }
    }

    /// munmap now (idempotent).
    public func unmap() {
        guard live else { return }
        live = false
        _ = Sys.munmap(unmapAddress, unmapLength)
    }

    deinit { unmap() }
}
