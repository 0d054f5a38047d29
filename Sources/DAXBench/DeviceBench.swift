// The port and the real kernel side by side on one device.
//
// fault: (a) the kernel's own first touch of each extent of a MAP_SHARED
// mapping of the device (the emulated device: its memfd, i.e. shmem), each
// touch timed and its faults counted with the thread's ru_minflt, the size
// the kernel mapped established by touching further pages of the extent;
// (b) the port's CPU-fault window over the same device, each first touch
// timed end to end (SIGSEGV -> the port's handle_mm_fault -> host mapping ->
// retry) with the window's own port and handler times of that fault; (c) the
// port's bare handle_mm_fault on the same bound kernel and driver in a
// second MM without the host mirror, with its floor.
//
// pin: the kernel's FOLL_LONGTERM pin of a range of the mapped device
// (io_uring buffer registration and unregistration), its FOLL_PIN of the
// same range (an O_DIRECT read into it), and the port's pin_user_pages
// (FOLL_LONGTERM | FOLL_WRITE) of the same range of a window, with its
// floor.
//
// Every figure is an HdrHistogram of nanoseconds (picoseconds inside);
// ratios are p50 over p50 within the run. Device data is kept: the kernel's
// touches write the byte they read, the window writes the word a plain
// mapping reads just before, the O_DIRECT scratch file holds the device's own
// bytes. (fio's write job does overwrite the range it covers.)

import CDaxBench
import CDaxMM
import CDaxSys
import CDaxWindow
import DAXBase
import DAXCore
import DAXDevice
import DAXRuntime
import Foundation
import Histogram
import MMCore

#if canImport(Glibc)
import Glibc
#endif

public struct DeviceBenchOptions: Sendable {
    public var fault = true
    public var pin = true
    public var port = false
    /// fio when it is installed and the device is a real device-dax.
    public var fio = true
    public var quick = false
    /// Only cases whose key contains this (fault.2M.read, pin.64M, port.<id>, fio).
    public var filter: String? = nil
    public var commit: String? = nil
    /// What the caller says about timings of a build that is not optimised.
    public var timingNote: String? = nil
    public var optimized = true
    /// One updating line per case on stderr.
    public var progress = false
    public init() {}

    func wants(_ key: String) -> Bool { filter.map { key.contains($0) } ?? true }
}

public enum BenchError: Error, CustomStringConvertible, Equatable {
    case invalid(String)
    case failed(String)
    public var description: String {
        switch self {
        case .invalid(let s), .failed(let s): return s
        }
    }
}

/// How much to sample.
struct Plan {
    /// Extents touched per round, timed touches at least, seconds per case.
    var extentsPerRound: UInt64
    var minTouches: Int
    var seconds: Double
    var pinSamples: Int
    var pinSizes: [UInt64]
    var fioSeconds: Int

    init(quick: Bool) {
        extentsPerRound = quick ? 64 : 512
        minTouches = quick ? 32 : 256
        seconds = quick ? 0.5 : 3
        pinSamples = quick ? 8 : 50
        pinSizes = quick ? [2 << 20, 8 << 20] : [2 << 20, 64 << 20]
        fioSeconds = quick ? 1 : 3
    }
}

/// A histogram of one figure (picoseconds inside).
struct Figure {
    var h = newHistogram()
    mutating func add(nanos: Int64) { _ = h.record(UInt64(max(nanos, 0)) * 1000 + 1) }
    mutating func add(picos: UInt64) { _ = h.record(max(picos, 1)) }
    var count: Int { Int(h.totalCount) }
    var percentiles: Percentiles { Percentiles(h) }
}

/// One updating line on stderr.
public final class ProgressLine {
    let enabled: Bool
    public init(enabled: Bool) { self.enabled = enabled }
    public func show(_ s: String) {
        guard enabled else { return }
        var line = "\r\u{1b}[K" + String(s.prefix(110))
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }
    public func clear() { show("") }
}

private func levelName(_ align: UInt64) -> String { formatBytes(align) }

private func now() -> Int64 { dax_bench_now_ns() }

/// The kernel's mapping size for a touched extent at `base`: touch further
/// pages and count the faults they cost (none: the first fault mapped them).
/// Pagemap and smaps are not read: their walk would split a PUD.
func probeMappedSize(_ base: UnsafeMutableRawPointer, align: UInt64, write: Bool) -> UInt64 {
    if align <= 4096 { return 4096 }
    if FaultCounter.touch(base + 4096, length: 1, stride: 1, write: write).total > 0 { return 4096 }
    if align <= 2 << 20 { return align }
    return FaultCounter.touch(base + Int(align) - 4096, length: 1, stride: 1, write: write).total == 0 ? align : 2 << 20
}

/// Runs the device side of `daxmm bench` on `device`.
///
/// - Parameter device: nil for the port's matrix alone (its rigs need no device).
public func runDeviceBench(device: (any DaxDevice)?, options o: DeviceBenchOptions) throws(BenchError) -> BenchReport {
    let align = UInt64(device?.align.bytes ?? 0)
    let backing = device.map { $0.kind == .emulated ? "shmem" : "device-dax" } ?? "none"
    var modes: [String] = []
    if o.fault { modes.append("fault") }
    if o.pin { modes.append("pin") }
    if o.port { modes.append("port") }
    let fmt = ISO8601DateFormatter()
    var rep = BenchReport(date: fmt.string(from: Date()), commit: o.commit, kernelRelease: kernelRelease(),
                          device: device?.name ?? "none (the port's rigs)", deviceKind: device?.kind.rawValue ?? "none",
                          backing: backing, align: align, alignName: device == nil ? "-" : levelName(align),
                          deviceSize: device?.size ?? 0, optimized: o.optimized,
                          timingNote: o.timingNote, modes: modes, quick: o.quick)
    if ProcessInfo.processInfo.environment["DAXMM_IN_VM"] == "1" {
        rep.notes.append("inside the project's QEMU guest (TCG): times are not hardware times; ratios within this run still compare")
    }
    let plan = Plan(quick: o.quick)
    let progress = ProgressLine(enabled: o.progress)
    defer { progress.clear() }

    if (o.fault || o.pin || o.fio) && device == nil { throw .invalid("fault, pin and fio need a device") }
    if o.fault || o.pin, let dev = device {
        do { try installFaultGuards() } catch { throw .failed("\(error)") }
        let binding: Binding
        do { binding = try Binding(device: dev, mode: .devdax) } catch {
            throw .failed("\(dev.name): cannot bind the port to the device: \(error)")
        }
        if o.fault {
            for write in [false, true] {
                let key = "fault.\(levelName(align)).\(write ? "write" : "read")"
                guard o.wants(key) else { continue }
                try faultCases(dev, binding, write: write, plan: plan, progress: progress, into: &rep)
            }
        }
        if o.pin {
            try pinCases(dev, binding, options: o, plan: plan, progress: progress, into: &rep)
        }
        let v = binding.checkInvariants()
        rep.invariantViolations += v
        let rss = binding.mm.rssFilePages
        if !v.isEmpty || rss != 0 {
            rep.countersRestored = false
            if rss != 0 { rep.notes.append("the binding's MM still maps \(rss) page(s) after the run") }
        }
    }
    if o.port {
        for c in PortCases.all where o.wants("port." + c.id) {
            progress.show("port: \(c.id)")
            let inst: Instance
            do { inst = try c.make() } catch {
                rep.absent.append("port.\(c.id): \(error)")
                continue
            }
            let r = measure(c, inst, sampling: o.quick ? .quick : Sampling())
            var row = BenchRow(id: "port.\(c.id)", section: "port", group: "port \(c.id)", title: "port \(c.id)",
                               side: .port, per: r.unit, r.port)
            row.portOverFloor = r.ratio
            row.targetValue = r.ratio
            if let t = c.floorTarget, let ratio = r.ratio {
                row.target = t; row.targetOf = "port/floor"; row.met = ratio <= t
            }
            if let sp = r.speedup, let min = r.minSpeedup {
                // Two threads against one: the floor column is one thread.
                row.portOverFloor = nil
                row.targetValue = sp; row.targetMinimum = true
                row.target = min; row.targetOf = "speedup >="; row.met = sp >= min
                row.note = String(format: "two threads %.2fx the throughput of one (one thread %.1f ns per fault)",
                                  sp, r.floor?.p50 ?? 0)
                rep.ratios.append(BenchRatio(name: "two threads / one thread (PMD faults, throughput)", value: sp,
                                             target: min, atLeast: true))
            }
            if let rel = r.relativeRatio, let to = r.relativeTo {
                // memremap: the time against binding 1 GiB, and the memory
                // the bind made resident before any fault.
                row.targetValue = rel
                row.target = r.relativeTarget; row.targetOf = "time / \(to)"; row.met = r.extraMet
                var note = String(format: "%.2fx the time of %@", rel, to)
                if let b = r.residentBytes {
                    note += ", \(b / 1024) KiB resident after the bind"
                    if let t = r.residentTarget { note += " (<= \(t >> 20) MiB)" }
                }
                if let v = r.vmemmapPages { note += ", \(v) vmemmap page(s)" }
                row.note = note
                rep.ratios.append(BenchRatio(name: "memremap \(c.id.split(separator: ".").last ?? "") / \(to.split(separator: ".").last ?? "")",
                                             value: rel, target: r.relativeTarget))
            }
            rep.rows.append(row)
            if let f = r.floor {
                rep.rows.append(BenchRow(id: "port.\(c.id).floor", section: "port", group: "port \(c.id)",
                                         title: "floor of \(c.id)", side: .floor, per: r.unit, f))
            }
        }
    }
    if o.fio && o.wants("fio"), let dev = device {
        progress.show("fio --ioengine=dev-dax on \(dev.name)")
        let (figs, why) = runFio(device: dev, seconds: plan.fioSeconds)
        rep.fio = figs
        rep.fioAbsent = why
        for f in figs {
            let title = String(format: "fio %@ bs %@, %.0fk IOPS", f.rw, formatBytes(f.blockSize), f.iops / 1000)
            var row = BenchRow(id: "fio.\(f.job)", section: "fio", group: "fio --ioengine=dev-dax (completion latency)", title: title,
                               side: .fio, per: "I/O", p50Ns: f.clatP50Ns, p99Ns: f.clatP99Ns, maxNs: f.clatMaxNs,
                               samples: 0)
            row.note = String(format: "%.0f IOPS, %.1f MiB/s", f.iops, f.bandwidthMiBps)
            rep.rows.append(row)
        }
    }
    return rep
}

// MARK: fault

private func faultCases(_ dev: any DaxDevice, _ binding: Binding, write: Bool, plan: Plan,
                        progress: ProgressLine, into rep: inout BenchReport) throws(BenchError) {
    let align = UInt64(dev.align.bytes)
    let lv = levelName(align)
    let rw = write ? "write" : "read"
    let group = "fault \(lv) \(rw)"
    let n = min(dev.size / align, plan.extentsPerRound)
    guard n > 0 else { throw .invalid("\(dev.name): smaller than its alignment") }
    let len = n * align

    // (a) the kernel's first touches.
    progress.show("\(group): kernel first touches (\(rep.backing))")
    var kfig = Figure()
    var touches = 0, one = 0, faultSum = 0
    var mapped: UInt64 = 0
    let deadline = now() + Int64(plan.seconds * 1e9)
    var round = 0
    repeat {
        let m: DeviceMapping
        do { m = try dev.map(offset: 0, length: len, options: .shared) } catch { throw .failed("\(error)") }
        let timed = round > 0
        m.withUnsafeMutableBytes { buf in
            let base = buf.baseAddress!
            for i in 0..<Int(n) {
                let p = base + i * Int(align)
                let f0 = FaultCounter.read(.thread).total
                let t0 = now()
                if write { dax_touch_write(p) } else { _ = dax_touch_read(p) }
                let t1 = now()
                let f = FaultCounter.read(.thread).total - f0
                if timed {
                    touches += 1
                    faultSum += f
                    if f == 1 { one += 1 }
                    if f >= 1 { kfig.add(nanos: t1 - t0) }
                }
            }
            if round == 1 { mapped = probeMappedSize(base, align: align, write: write) }
        }
        m.unmap()
        round += 1
    } while round < 2 || (kfig.count < plan.minTouches && now() < deadline)
    let kp = kfig.percentiles
    let kinfo = KernelFaultInfo(access: rw, mappedSize: levelName(mapped), mappedBytes: mapped, touches: touches,
                                touchesWithOneFault: one, meanFaultsPerTouch: touches > 0 ? Double(faultSum) / Double(touches) : 0)
    rep.kernelFaults.append(kinfo)
    rep.rows.append(BenchRow(id: "fault.kernel.\(lv).\(rw)", section: "fault", group: group,
                             title: "kernel first touch (\(rep.backing)), \(rw)", side: .kernel, per: "fault", kp,
                             note: "kernel mapped \(levelName(mapped))"))

    // The kernel initialised every struct page of the device at probe
    // (memmap_init_zone_device); the port defers that to the first
    // pfn_to_page of each section. Initialise them now, outside the timed
    // faults, so both sides' faults start from initialised struct pages.
    initialiseStructPages(binding)

    // (b) the port's window, end to end. The words written are the ones a
    // plain mapping reads first, so the device keeps its data.
    progress.show("\(group): port window faults (SIGSEGV -> handle_mm_fault -> host map -> retry)")
    var e2e = Figure(), portIn = Figure(), handler = Figure()
    var extraFaults = 0
    do {
        let plain: DeviceMapping
        do { plain = try dev.map(offset: 0, length: len, options: .shared) } catch { throw BenchError.failed("\(error)") }
        defer { plain.unmap() }
        let plainBase = plain.withUnsafeMutableBytes { $0.baseAddress! }
        let w: Window
        do { w = try binding.openWindow(length: len) } catch { throw BenchError.failed("\(error)") }
        defer { w.closeWindow() }
        let deadline = now() + Int64(plan.seconds * 1e9)
        var round = 0
        repeat {
            // Each round touches another page of every extent: the handler
            // refuses a page that faults DAX_WIN_REPEAT_LIMIT times in a row
            // (a device of one extent would otherwise fault the same page
            // every round).
            let sub = align > 4096 ? (UInt64(round) * 4096) % align : 0
            for i in 0..<Int(n) {
                let off = UInt64(i) * align + sub
                let addr = w.address(off)
                let value = (plainBase + Int(off)).load(as: UInt64.self)
                let s0 = w.stats, m0 = binding.mirrorStats.nanos, f0 = dax_window_thread_faults()
                let t0 = now()
                let r = guardedAccess(addr, write: write, value: value)
                let t1 = now()
                let f1 = dax_window_thread_faults(), s1 = w.stats, m1 = binding.mirrorStats.nanos
                guard r.ok else {
                    throw BenchError.failed("\(dev.name): window access at extent \(i) raised \(r)")
                }
                if f1 - f0 != 1 { extraFaults += 1; continue }
                if round == 0 && i == 0 { continue }   // the first fault of the run warms the handler's code
                e2e.add(nanos: t1 - t0)
                portIn.add(nanos: (s1.portNanos - s0.portNanos) - (m1 - m0))
                handler.add(nanos: s1.handlerNanos - s0.handlerNanos)
            }
            w.zap(offset: 0, length: len)
            round += 1
        } while e2e.count < plan.minTouches && now() < deadline
    }
    let ep = e2e.percentiles, pp = portIn.percentiles, hp = handler.percentiles
    var eRow = BenchRow(id: "fault.window.\(lv).\(rw)", section: "fault", group: group,
                        title: "port window fault end to end, \(rw)", side: .window, per: "fault", ep)
    eRow.portOverKernel = ep.p50 / max(kp.p50, 0.001)
    eRow.target = 3; eRow.targetOf = "window/kernel"; eRow.met = eRow.portOverKernel! <= 3
    if extraFaults > 0 { eRow.note = "\(extraFaults) access(es) not one window fault, left out" }
    rep.rows.append(eRow)
    rep.rows.append(BenchRow(id: "fault.window-handler.\(lv).\(rw)", section: "fault", group: group,
                             title: "window handler (port + host mmap), \(rw)", side: .window, per: "fault", hp))
    var pRow = BenchRow(id: "fault.window-port.\(lv).\(rw)", section: "fault", group: group,
                        title: "port handle_mm_fault inside the window fault, \(rw)", side: .port, per: "fault", pp)
    pRow.note = String(format: "share of the window fault %.2f%%", pp.p50 / max(ep.p50, 0.001) * 100)
    rep.rows.append(pRow)

    // (c) the port's bare handle_mm_fault: a second MM over the same bound
    // kernel and driver, no arch hook, with its floor.
    progress.show("\(group): port handle_mm_fault, no host mirror, and its floor")
    guard let devdax = binding.devdax else { throw .failed("\(dev.name): the binding has no device-dax driver") }
    let mm2: MM
    let base: UInt64
    do {
        mm2 = try MM(kernel: binding.kernel)
        base = try mm2.mmap(devdax.mmapRequest(length: len))
    } catch { throw .failed("\(dev.name): a second port MM over the device: \(error)") }
    let range0 = dev.ranges[0].range
    let floorFolios = Int(max(1, min(n, range0.size / align)))
    let floor = Floor(kernel: binding.kernel, firstPfn: range0.start >> 12, folios: floorFolios,
                      stride: align >> 12, order: align.trailingZeroBitCount - 12, entries: Int(n),
                      mmapLock: mm2.withUnsafeRecord { dax_mm_mmap_lock($0) }, owner: mm2)
    let count = Int(n)
    let c = BenchCase(id: "fault.port.\(lv).\(rw)", title: "port handle_mm_fault, \(rw)", group: .fault,
                      floorTarget: PortCases.faultTarget) { throw BenchError.invalid("not rebuilt") }
    let zap = {
        mm2.lockRead()
        mm2.withUnsafeRecord { zapPageRange($0, base, base + len) }
        mm2.unlockRead()
    }
    let inst = Instance(port: Batch(ops: count, run: {
        for i in 0..<count { _ = mm2.handleFault(base + UInt64(i) * align, write: write) }
    }, restore: zap), floor: floor.faultBatch(count), unit: "fault")
    let sampling = Sampling(minSamples: plan.minTouches / 8 + 4, maxSamples: 400, maxSeconds: plan.seconds / 2)
    let r = measure(c, inst, sampling: sampling)
    zap()
    let rss = mm2.rssFilePages
    try? mm2.munmap(base, len)
    if rss != 0 {
        rep.countersRestored = false
        rep.notes.append("the second port MM mapped \(rss) page(s) after its last zap")
    }
    var bare = BenchRow(id: "fault.port.\(lv).\(rw)", section: "fault", group: group,
                        title: "port handle_mm_fault, no host mirror, \(rw)", side: .port, per: "fault", r.port)
    bare.portOverKernel = r.port.p50 / max(kp.p50, 0.001)
    bare.portOverFloor = r.ratio
    bare.target = 0.05; bare.targetOf = "port/kernel"; bare.met = bare.portOverKernel! <= 0.05
    rep.rows.append(bare)
    if let f = r.floor {
        rep.rows.append(BenchRow(id: "fault.floor.\(lv).\(rw)", section: "fault", group: group,
                                 title: "floor of the port's fault, \(rw)", side: .floor, per: "fault", f))
    }

    rep.ratios.append(BenchRatio(name: "port fault / kernel fault (\(lv) \(rw))", value: bare.portOverKernel!, target: 0.05))
    rep.ratios.append(BenchRatio(name: "port share of a window fault (\(lv) \(rw))", value: pp.p50 / max(ep.p50, 0.001), target: 0.02))
    rep.ratios.append(BenchRatio(name: "window fault / kernel fault (\(lv) \(rw))", value: eRow.portOverKernel!, target: 3))
    if let ratio = r.ratio {
        rep.ratios.append(BenchRatio(name: "port fault / floor (\(lv) \(rw))", value: ratio, target: PortCases.faultTarget))
    }
}

// MARK: pin

private func pinCases(_ dev: any DaxDevice, _ binding: Binding, options o: DeviceBenchOptions, plan: Plan,
                      progress: ProgressLine, into rep: inout BenchReport) throws(BenchError) {
    let align = UInt64(dev.align.bytes)
    let page = UInt64(pageSize)
    // Sizes the device holds, each within one mapping of whole extents.
    var sizes: [UInt64] = []
    for s in plan.pinSizes where o.wants("pin.\(formatBytes(s))") {
        let roundedLen = (s + align - 1) / align * align
        if roundedLen <= dev.size { sizes.append(s) }
        else if sizes.isEmpty, dev.size >= align {
            let fit = min(s, dev.size / align * align)
            if !sizes.contains(fit) { sizes.append(fit) }
        }
    }
    guard let largest = sizes.max() else { return }
    let mapLen = (largest + align - 1) / align * align

    let m: DeviceMapping
    do { m = try dev.map(offset: 0, length: mapLen, options: .shared) } catch { throw .failed("\(error)") }
    defer { m.unmap() }
    let base = m.withUnsafeMutableBytes { $0.baseAddress! }
    // Fault the range in writable (the pins are FOLL_WRITE): a pin measures
    // the pin, not the faults.
    progress.show("pin: faulting \(formatBytes(mapLen)) of \(dev.name) in")
    m.withUnsafeMutableBytes { buf in
        var off = 0
        while off < Int(mapLen) { dax_touch_write(buf.baseAddress! + off); off += Int(min(align, page)) }
    }

    // The kernel: io_uring buffer registration (FOLL_LONGTERM).
    var kernelPerPage: [UInt64: Double] = [:]
    var ring: IoUringBuffers? = nil
    do { ring = try IoUringBuffers(entries: 1) } catch {
        rep.absent.append("pin.kernel.uring: \(error)")
    }
    if let ring {
        for s in sizes {
            let sz = formatBytes(s)
            progress.show("pin \(sz): io_uring register + unregister (FOLL_LONGTERM)")
            var call = Figure(), perPage = Figure()
            let pages = s / page
            let deadline = now() + Int64(plan.seconds * 1e9)
            var failed: String? = nil
            var i = 0
            while i < plan.pinSamples + 1 && (i < 3 || now() < deadline) {
                let t0 = now()
                do {
                    try ring.register([IoUringBuffers.Buffer(base, length: Int(s))])
                    try ring.unregister()
                } catch { failed = "\(error)"; break }
                let t1 = now()
                if i > 0 {
                    call.add(nanos: t1 - t0)
                    perPage.add(picos: UInt64(t1 - t0) * 1000 / pages)
                }
                i += 1
            }
            if let failed { rep.absent.append("pin.kernel.uring.\(sz): \(failed)"); continue }
            kernelPerPage[s] = perPage.percentiles.p50
            rep.rows.append(BenchRow(id: "pin.kernel.uring.\(sz)", section: "pin", group: "pin \(sz)",
                                     title: "io_uring register+unregister \(sz) (FOLL_LONGTERM)", side: .kernel,
                                     per: "page", perPage.percentiles))
            rep.rows.append(BenchRow(id: "pin.kernel.uring-call.\(sz)", section: "pin", group: "pin \(sz) per call",
                                     title: "io_uring register+unregister \(sz), per call", side: .kernel,
                                     per: "call", call.percentiles))
        }
        if !ring.registered.isEmpty {
            rep.countersRestored = false
            try? ring.unregister()
        }
        ring.close()
    }

    // The kernel: an O_DIRECT read into the mapping (FOLL_PIN for the I/O),
    // from a scratch file holding the device's own bytes.
    progress.show("pin: O_DIRECT scratch file of \(formatBytes(largest))")
    do {
        let scratch = try m.withUnsafeMutableBytes { buf throws(DirectIOError) in
            try ScratchFile.create(bytes: Int(largest)) { buf[$0] }
        }
        let dio = try DirectIO(path: scratch.path)
        for s in sizes {
            let sz = formatBytes(s)
            progress.show("pin \(sz): O_DIRECT read into the mapping (FOLL_PIN)")
            var call = Figure(), perPage = Figure()
            let deadline = now() + Int64(plan.seconds * 1e9)
            var i = 0
            while i < plan.pinSamples + 1 && (i < 3 || now() < deadline) {
                let t0 = now()
                let got = try dio.read(into: UnsafeMutableRawBufferPointer(start: base, count: Int(s)), at: 0)
                let t1 = now()
                if got != Int(s) { rep.absent.append("pin.kernel.odirect.\(sz): short read of \(got) bytes"); break }
                if i > 0 {
                    call.add(nanos: t1 - t0)
                    perPage.add(picos: UInt64(t1 - t0) * 1000 / (s / page))
                }
                i += 1
            }
            guard call.count > 0 else { continue }
            rep.rows.append(BenchRow(id: "pin.kernel.odirect.\(sz)", section: "pin", group: "pin \(sz)",
                                     title: "O_DIRECT read \(sz) into the mapping (FOLL_PIN + I/O)", side: .kernel,
                                     per: "page", perPage.percentiles, note: "from \(scratch.path)"))
            rep.rows.append(BenchRow(id: "pin.kernel.odirect-call.\(sz)", section: "pin", group: "pin \(sz) per call",
                                     title: "O_DIRECT read \(sz), per call", side: .kernel, per: "call", call.percentiles))
        }
    } catch {
        rep.absent.append("pin.kernel.odirect: \(error)")
    }

    // The port: pin_user_pages_fast(FOLL_LONGTERM | FOLL_WRITE), as io_uring calls it, of the same range
    // of a window over the device, and unpin_user_pages; with the floor.
    let w: Window
    do { w = try binding.openWindow(length: mapLen) } catch { throw .failed("\(error)") }
    defer { w.closeWindow() }
    progress.show("pin: faulting \(formatBytes(mapLen)) of the port's window in")
    var off: UInt64 = 0
    while off < mapLen {
        let value = m.withUnsafeMutableBytes { $0.load(fromByteOffset: Int(off), as: UInt64.self) }
        let r = guardedAccess(w.address(off), write: true, value: value)
        guard r.ok else { throw .failed("\(dev.name): window access at \(hex(off)) raised \(r)") }
        off += align
    }
    let maxPages = Int(largest / page)
    let arr = PageArray.allocate(capacity: maxPages)
    arr.initialize(repeating: nil, count: maxPages)
    defer { arr.deallocate() }
    let range0 = dev.ranges[0].range
    let order = align.trailingZeroBitCount - 12
    let perFolio = 1 << order
    for s in sizes {
        let sz = formatBytes(s)
        progress.show("pin \(sz): port pin_user_pages_fast(FOLL_LONGTERM) + unpin_user_pages, and the floor")
        let pages = Int(s / page)
        var call = Figure(), perPage = Figure()
        let deadline = now() + Int64(plan.seconds * 1e9)
        var failed: String? = nil
        var i = 0
        while i < plan.pinSamples * 4 + 1 && (i < 3 || now() < deadline) {
            let t0 = now()
            let rc = w.mm.withUnsafeRecord { pinUserPagesFast($0, w.base, pages, [.longterm, .write], arr) }
            if rc > 0 { w.mm.kernel.withUnsafeRecord { unpinUserPages($0, arr, rc) } }
            let t1 = now()
            if rc != pages { failed = "pin_user_pages returned \(rc) for \(pages) pages"; break }
            if i > 0 {
                call.add(nanos: t1 - t0)
                perPage.add(picos: UInt64(t1 - t0) * 1000 / UInt64(pages))
            }
            i += 1
        }
        if let failed { rep.absent.append("pin.port.\(sz): \(failed)"); continue }
        // The floor over the same folios (pin then unpin, per call).
        let folios = max(1, min((pages + perFolio - 1) / perFolio, Int(range0.size / align)))
        let floor = Floor(kernel: binding.kernel, firstPfn: range0.start >> 12, folios: folios, stride: align >> 12,
                          order: order, entries: 1, mmapLock: nil, owner: binding)
        floor.reservePageArray(pages)
        var fcall = Figure(), fpage = Figure()
        for j in 0..<(plan.pinSamples * 4 + 1) {
            let t0 = now()
            floor.pin(pages: pages)
            floor.unpin(pages: pages)
            let t1 = now()
            if j > 0 {
                fcall.add(nanos: t1 - t0)
                fpage.add(picos: UInt64(t1 - t0) * 1000 / UInt64(pages))
            }
        }
        var row = BenchRow(id: "pin.port.\(sz)", section: "pin", group: "pin \(sz)",
                           title: "port pin_user_pages_fast(FOLL_LONGTERM)+unpin \(sz)", side: .port, per: "page",
                           perPage.percentiles)
        row.portOverFloor = perPage.percentiles.p50 / max(fpage.percentiles.p50, 0.001)
        if let k = kernelPerPage[s] {
            row.portOverKernel = perPage.percentiles.p50 / max(k, 0.001)
            rep.ratios.append(BenchRatio(name: "port pin / io_uring pin (\(sz), per page)", value: row.portOverKernel!, target: nil))
        }
        row.target = PortCases.pinTarget; row.targetOf = "port/floor"; row.met = row.portOverFloor! <= PortCases.pinTarget
        row.note = "the floor: the folio counters try_grab_folio moves (once per folio) and one page-array store per page"
        rep.ratios.append(BenchRatio(name: "port pin / floor (\(sz), per page)", value: row.portOverFloor!, target: PortCases.pinTarget))
        rep.rows.append(row)
        rep.rows.append(BenchRow(id: "pin.floor.\(sz)", section: "pin", group: "pin \(sz)",
                                 title: "floor of the port's pin+unpin \(sz)", side: .floor, per: "page", fpage.percentiles))
        rep.rows.append(BenchRow(id: "pin.port-call.\(sz)", section: "pin", group: "pin \(sz) per call",
                                 title: "port pin+unpin \(sz), per call", side: .port, per: "call", call.percentiles))
    }
    w.zap(offset: 0, length: mapLen)
}

// MARK: fio

/// fio's dev-dax engine on a real device-dax: 4K random reads and writes,
/// and sequential reads of the device's alignment (at most 2M per I/O).
func runFio(device dev: any DaxDevice, seconds: Int) -> ([FioFigures], String?) {
    guard dev.kind == .deviceDax else {
        return ([], "the device is \(dev.kind.rawValue); fio's dev-dax engine needs a real /dev/daxX.Y")
    }
    guard let fio = findProgram("fio") else { return ([], "fio is not in PATH") }
    let align = UInt64(dev.align.bytes)
    let size = max(align, min(dev.size, 256 << 20) / align * align)
    let seqBS = min(align, 2 << 20)
    var out: [FioFigures] = []
    for (job, rw, bs) in [("randread-4k", "randread", UInt64(4096)), ("randwrite-4k", "randwrite", UInt64(4096)),
                          ("read-\(formatBytes(seqBS))", "read", seqBS)] {
        let args = ["--output-format=json", "--ioengine=dev-dax", "--direct=0", "--filename=\(dev.name)",
                    "--size=\(size)", "--bs=\(bs)", "--rw=\(rw)", "--name=\(job)", "--time_based",
                    "--runtime=\(seconds)", "--norandommap"]
        guard let text = runCapture(fio, args) else { return (out, "fio could not be run") }
        guard let f = parseFio(text, job: job, rw: rw, blockSize: bs) else {
            return (out, "fio printed no usable JSON for \(job): \(text.prefix(200))")
        }
        out.append(f)
    }
    return (out, nil)
}

/// The figures of fio's JSON (the first '{' on: fio may print notes first).
public func parseFio(_ text: String, job: String, rw: String, blockSize: UInt64) -> FioFigures? {
    guard let start = text.firstIndex(of: "{"),
          let v = try? JSONSerialization.jsonObject(with: Data(text[start...].utf8)) as? [String: Any],
          let j = (v["jobs"] as? [[String: Any]])?.first,
          let d = j[rw.contains("write") ? "write" : "read"] as? [String: Any] else { return nil }
    func num(_ x: Any?) -> Double { (x as? NSNumber)?.doubleValue ?? 0 }
    let clat = d["clat_ns"] as? [String: Any]
    let pct = clat?["percentile"] as? [String: Any]
    return FioFigures(job: job, rw: rw, blockSize: blockSize, iops: num(d["iops"]),
                      bandwidthMiBps: num(d["bw"]) / 1024, clatP50Ns: num(pct?["50.000000"]),
                      clatP99Ns: num(pct?["99.000000"]), clatMaxNs: num(clat?["max"]))
}

func findProgram(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for dir in path.split(separator: ":") where access("\(dir)/\(name)", X_OK) == 0 { return "\(dir)/\(name)" }
    return nil
}

/// Runs a program, returns its stdout (nil when it cannot start).
func runCapture(_ exe: String, _ args: [String]) -> String? {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = FileHandle(forWritingAtPath: "/dev/null")
    do { try p.run() } catch { return nil }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}

/// Runs the deferred struct-page initialisation of every section of the
/// binding's pgmap ranges (one pfn_to_page per 128 MiB section).
func initialiseStructPages(_ binding: Binding) {
    guard let pgmap = binding.pgmap else { return }
    binding.kernel.withUnsafeRecord { k in
        for r in pgmap.ranges {
            var pfn = r.startPfn
            while pfn < r.endPfn {
                blackHoleU64(UInt64(UInt(bitPattern: pfnToPage(k, pfn).raw)))
                pfn = (pfn | UInt64(pagesPerSection - 1)) + 1
            }
        }
    }
}

@inline(never) func blackHoleU64(_ v: UInt64) { dax_bench_sink(v) }
