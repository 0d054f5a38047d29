// A device bound to a port Kernel: the one place where the port meets real
// memory.
//
// The device's physical ranges (libdaxctl's resource and mappings, or the
// emulated device's synthetic base) are memremapped into a port Kernel, so a
// port pfn is a physical address of the device and a byte offset in it. In
// device-dax mode the ported device-dax driver (DevDax) runs over them; in
// fs-dax mode the port's extent store (DaxFS, an FS_DAX pgmap) is laid over
// the same memory and the port plays the file system's kernel.
//
// The port's MM gets the host mirror as its arch hook: every leaf entry the
// port installs, re-protects or clears is applied to the host address space
// at the same address (CDaxWindow's dax_mirror_set_entry), so the host maps
// exactly the extents the port inserted, from the device.

import CDaxMM
import CDaxWindow
import DAXBase
import DAXCore
import DAXDevice
import MMCore

#if canImport(Glibc)
import Glibc
#endif

/// What the port runs over the device.
public enum BindMode: String, Sendable, CaseIterable, CustomStringConvertible {
    /// drivers/dax/device.c: the device is one file mapped at its alignment.
    case devdax
    /// fs/dax.c: an extent file store over the device's memory.
    case fsdax
    public var description: String { rawValue }
}

public enum RuntimeError: Error, CustomStringConvertible, Equatable {
    /// Bad input: one line naming what and why.
    case invalid(String)
    /// The port refused (an mm call's errno and message).
    case port(String)
    /// A host system call failed.
    case host(call: String, errno: Int32, detail: String)
    /// The device went away under the binding.
    case deviceGone(String)

    public var description: String {
        switch self {
        case .invalid(let s): return s
        case .port(let s): return s
        case .host(let call, let e, let d): return "\(d): \(call) failed: \(errnoName(e)) (\(String(cString: strerror(e))))"
        case .deviceGone(let s): return s
        }
    }
}

/// The port's fault entry for the window handler: handle_mm_fault with the
/// caller holding mmap_lock for read. A C function pointer; it touches only
/// C records (MMCore's hot-path contract), so it is async-signal-safe.
let windowPortFault: dax_window_fault_fn = { mm, addr, flags in
    handleMMFault(mm!, addr, flags)
}

public final class Binding: @unchecked Sendable {
    // @unchecked: the mirror record is shared with the signal handler and the
    // arch hook; after init only its atomics change. `windows` and `gone` are
    // guarded by `lock`.
    public let device: any DaxDevice
    public let mode: BindMode
    public let kernel: Kernel
    public let mm: MM
    /// Device-dax mode: the ported driver over the device.
    public let devdax: DevDax?
    /// Fs-dax mode: the extent store over the device, and its one file.
    public let fs: DaxFS?
    public let file: DaxFile?
    /// The host side of the port's page tables (arch hook context). Allocated
    /// in init, freed in deinit after the hook is removed.
    let mirror: UnsafeMutablePointer<dax_host_mirror>
    private let zeroFD: Int32
    private let lock = Locked(State())
    private struct State {
        var windows: [ObjectIdentifier: Window] = [:]
        var gone = false
        /// The device mapped whole for the port's direct map (page_address
        /// of a device pfn): made with the first private or anonymous window,
        /// whose copy-on-write faults read the device's bytes through it.
        var directMap: DeviceMapping? = nil
    }

    /// The bytes a window can map: the device in devdax mode, the file in
    /// fs-dax mode.
    public var mappableSize: UInt64 { file?.size ?? device.size }
    /// The smallest extent the host can map from the device.
    public var align: UInt64 { UInt64(device.align.bytes) }

    /// Binds `device`: memremaps its ranges into a new port Kernel (deferred
    /// struct-page init: nothing per page until first use), probes the
    /// device-dax driver or mounts the extent store, and installs the host
    /// mirror and the window fault handler.
    ///
    /// - Parameter fileSize: fs-dax mode: the size of the file windows map
    ///   (default: the whole device).
    public init(device: any DaxDevice, mode: BindMode, fileSize: UInt64? = nil) throws(RuntimeError) {
        self.device = device
        self.mode = mode
        guard let lastEnd = device.ranges.map({ $0.range.start + $0.range.size }).max() else {
            throw .invalid("\(device.name): the device has no physical ranges")
        }
        // The vmemmap must cover the device's highest physical address.
        let bitsNeeded = 64 - (lastEnd - 1).leadingZeroBitCount
        let physBits = max(44, bitsNeeded)
        guard physBits <= Binding.maxPhysBits else {
            throw .invalid("\(device.name): physical addresses up to \(hex(lastEnd - 1)) need \(bitsNeeded) bits; the port's vmemmap covers at most \(Binding.maxPhysBits)")
        }
        do {
            kernel = try Kernel(physBits: physBits)
            mm = try MM(kernel: kernel)
        } catch {
            throw .port("\(device.name): cannot create the port's kernel: \(error)")
        }
        switch mode {
        case .devdax:
            do {
                let d = try DevDax(kernel: kernel, ranges: device.ranges.map(\.range), align: UInt64(device.align.bytes))
                try d.probe()
                devdax = d
            } catch {
                throw .port("\(device.name): dev_dax_probe: \(error)")
            }
            fs = nil
            file = nil
        case .fsdax:
            guard device.ranges.count == 1 else {
                throw .invalid("\(device.name): fs-dax mode needs a device of one physical range (it has \(device.ranges.count))")
            }
            guard device.align.bytes == 4096 else {
                throw .invalid("\(device.name): fs-dax mode maps 4 KiB extents, so it needs a device of 4K alignment (this one has \(device.align)); create one with: ndctl create-namespace -m devdax -a 4K")
            }
            let r = device.ranges[0].range
            do {
                let f = try DaxFS(kernel: kernel, start: r.start, size: r.size)
                let size = fileSize ?? r.size
                guard size > 0, size <= r.size, size % UInt64(pageSize) == 0 else {
                    throw RuntimeError.invalid("\(device.name): fs-dax file size \(size) must be a non-zero multiple of 4 KiB and at most the device size \(r.size)")
                }
                let df = try f.create(name: "daxmm-exercise", maxSize: size)
                try df.extend(to: size)
                fs = f
                file = df
            } catch let e as RuntimeError {
                throw e
            } catch {
                throw .port("\(device.name): cannot lay the extent store over the device: \(error)")
            }
            devdax = nil
        }
        // The shared zero page: a PMD of zeroes (the port maps pfn 0 read-only
        // for fs-dax read holes).
        let zfd = dax_window_memfd("daxmm-zero-page", UInt64(pmdSize))
        guard zfd >= 0 else { throw .host(call: "memfd_create", errno: -zfd, detail: "the zero page") }
        zeroFD = zfd
        mirror = .allocate(capacity: 1)
        mirror.initialize(to: dax_host_mirror())
        mirror.pointee.fd = device.mappingFileDescriptor
        mirror.pointee.zero_fd = zfd
        mirror.pointee.zero_size = UInt64(pmdSize)
        // The port's ordinary memory: anon and copy-on-write pages map from
        // the page allocator's memfd, the huge zero folio from the zero file.
        mirror.pointee.ram_fd = -1
        if let ram = kernel.ramRange, let (fd, _) = kernel.ramFileOffset(pfn: ram.startPfn) {
            mirror.pointee.ram_fd = fd
            mirror.pointee.ram_phys_start = ram.start
            mirror.pointee.ram_phys_end = ram.start + ram.size
        }
        mirror.pointee.huge_zero_phys = hugeZeroPfn << UInt64(pageShift)
        let n = min(device.ranges.count, Int(DAX_WIN_MAX_RANGES))
        mirror.pointee.nr_range = UInt32(n)
        withUnsafeMutableBytes(of: &mirror.pointee.ranges) { raw in
            let rs = raw.bindMemory(to: dax_host_range.self)
            for i in 0..<n {
                let d = device.ranges[i]
                rs[i] = dax_host_range(phys_start: d.range.start, phys_end: d.range.start + d.range.size,
                                       file_offset: d.offset)
            }
        }
        let rc = dax_window_install(windowPortFault)
        guard rc == 0 else {
            mirror.deallocate()
            close(zfd)
            throw .host(call: "sigaction", errno: -rc, detail: "installing the window fault handler")
        }
        mm.setArchHook(dax_mirror_ops_ptr(), context: UnsafeMutableRawPointer(mirror))
    }

    deinit {
        let ws = lock.withLock { $0.windows.values.map { $0 } }
        for w in ws { w.closeWindow() }
        mm.removeArchHook()
        if let dm = lock.withLock({ $0.directMap }) {
            for r in device.ranges { kernel.unregisterDirectMap(range: r.range) }
            dm.unmap()
        }
        mirror.deallocate()
        close(zeroFD)
    }

    /// Maps the device once and registers each of its ranges as the port's
    /// direct map, so copies out of device pages (copy-on-write) read real
    /// bytes.
    private func ensureDirectMap() throws(RuntimeError) {
        if lock.withLock({ $0.directMap != nil }) { return }
        let m: DeviceMapping
        do { m = try device.map() } catch {
            throw .host(call: "mmap", errno: EIO, detail: "\(device.name): mapping the device for the port's direct map: \(error)")
        }
        for r in device.ranges {
            guard let base = UnsafeMutableRawPointer(bitPattern: m.address) else { break }
            do { try kernel.registerDirectMap(range: r.range, bytes: base + Int(r.offset)) } catch {
                m.unmap()
                throw .port("\(device.name): direct map: \(error)")
            }
        }
        lock.withLock { $0.directMap = m }
    }

    /// The widest physical address space the port's vmemmap covers.
    public static var maxPhysBits: Int { 52 }

    // MARK: windows

    /// Opens a window of `length` bytes over [offset, offset + length) of the
    /// device (devdax) or the file (fsdax).
    ///
    /// - Parameter pastTheEnd: allow the window to reach past the end of the
    ///   device (or file), as mmap allows: the port's faults there return
    ///   VM_FAULT_SIGBUS (dax_pgoff_to_phys finds no range), as the kernel's do.
    public func openWindow(length: UInt64, offset: UInt64 = 0, pastTheEnd: Bool = false) throws(RuntimeError) -> Window {
        try openWindow(length: length, offset: offset, pastTheEnd: pastTheEnd, kind: .shared)
    }

    /// Opens a MAP_PRIVATE window over [offset, offset + length) of the
    /// file (fs-dax mode): reads map the file's pages read-only, the first
    /// write of a page copies it into an anon page of the port's ordinary
    /// memory (do_cow_fault, wp_page_copy), so the file keeps its bytes.
    /// Device-dax refuses private mappings as the kernel does (check_vma:
    /// -EINVAL), and so does this in devdax mode.
    public func openPrivateWindow(length: UInt64, offset: UInt64 = 0) throws(RuntimeError) -> Window {
        try ensureDirectMap()
        return try openWindow(length: length, offset: offset, pastTheEnd: false, kind: .privateFile)
    }

    /// Opens a window of anonymous private memory of the port (any mode):
    /// reads map the zero page (the huge zero folio with `hugepage`), writes
    /// new pages of the port's ordinary memory; with `hugepage`
    /// (MADV_HUGEPAGE) PMD-aligned parts fault transparent huge pages.
    public func openAnonymousWindow(length: UInt64, hugepage: Bool = false) throws(RuntimeError) -> Window {
        guard kernel.ramRange != nil else { throw .invalid("the port's kernel has no ordinary memory") }
        return try openWindow(length: length, offset: 0, pastTheEnd: false, kind: hugepage ? .anonymousHuge : .anonymous)
    }

    private func openWindow(length: UInt64, offset: UInt64, pastTheEnd: Bool, kind: Window.Kind) throws(RuntimeError) -> Window {
        if lock.withLock({ $0.gone }) { throw .deviceGone("\(device.name): the device is gone") }
        let w = try Window(binding: self, length: length, offset: offset, pastTheEnd: pastTheEnd, kind: kind)
        lock.withLock { $0.windows[ObjectIdentifier(w)] = w }
        return w
    }

    func forget(_ w: Window) {
        _ = lock.withLock { $0.windows.removeValue(forKey: ObjectIdentifier(w)) }
    }

    /// The open windows.
    public var windows: [Window] { lock.withLock { Array($0.windows.values) } }

    // MARK: host statistics

    public struct MirrorStats: Sendable, Equatable {
        /// Indexed by level: 0 PTE, 1 PMD, 2 PUD.
        public var maps: [Int64], zeroMaps: [Int64], protects: [Int64], unmaps: [Int64]
        /// Extents mapped from the port's ordinary memory (anon and
        /// copy-on-write pages), by level.
        public var ramMaps: [Int64] = [0, 0, 0]
        public var flushes: Int64, errors: Int64
        /// Time spent in the host's mmap/mprotect calls (part of the port's
        /// fault time: the hook runs inside the insert).
        public var nanos: Int64
    }

    public var mirrorStats: MirrorStats {
        withUnsafeMutablePointer(to: &mirror.pointee.stats) { s in
            func lv(_ p: UnsafeMutablePointer<(Int64, Int64, Int64)>) -> [Int64] {
                p.withMemoryRebound(to: Int64.self, capacity: 3) { q in (0..<3).map { dax_window_stat(q + $0) } }
            }
            return MirrorStats(maps: lv(&s.pointee.maps), zeroMaps: lv(&s.pointee.zero_maps),
                               protects: lv(&s.pointee.protects), unmaps: lv(&s.pointee.unmaps),
                               ramMaps: lv(&s.pointee.ram_maps),
                               flushes: dax_window_stat(&s.pointee.flushes), errors: dax_window_stat(&s.pointee.errors),
                               nanos: dax_window_stat(&s.pointee.nanos))
        }
    }

    // MARK: the device going away

    /// The device went away (disabled or reconfigured under the binding):
    /// do what the kernel's kill_dev_dax does, then tear the memmap down.
    /// Device-dax: dax_alive goes false, every user mapping of the device is
    /// zapped (the mirror unmaps the host extents), later faults SIGBUS, and
    /// the pgmap is unmapped once no reference remains. Fs-dax: the file's
    /// mappings are zapped (the file system's notify_failure/shutdown path).
    public func deviceGone(timeoutNanos: Int64 = 5_000_000_000) throws(RuntimeError) {
        lock.withLock { $0.gone = true }
        do {
            if let d = devdax {
                try d.remove(timeoutNanos: timeoutNanos)
            } else if let f = file {
                unmapMappingRange(f.file.ref, holebegin: 0, holelen: 0, evenCows: true)
            }
        } catch {
            throw .port("\(device.name): kill_dev_dax: \(error)")
        }
    }

    public var isGone: Bool { lock.withLock { $0.gone } }
}

extension Binding {
    /// The port's pgmap over the device.
    public var pgmap: DevPagemap? { devdax?.pgmap ?? fs?.pgmap }

    /// The port's invariants over this binding (every folio's refcount,
    /// mapcount and pincount against the page tables and `ledger`, the
    /// references held outside them), then the port's debug reports. Empty
    /// when everything holds; each line names the folio and the rule.
    public func checkInvariants(ledger: RefLedger? = nil) -> [String] {
        let v = invariants(mms: [mm], pgmaps: pgmap.map { [$0] } ?? [], ledger: ledger)
        return v.map(\.description) + kernel.drainReports().map(\.description)
    }

    /// The port's folio for a physical address of the device.
    public func folio(physical: UInt64) -> Folio? {
        pgmap?.page(pfn: physical >> UInt64(pageShift))?.folio
    }
}
