import CDaxMM
import DAXBase
import Dispatch
import Foundation
import Synchronization
import Testing
@testable import DAXCore
@testable import MMCore
import MMTestChecks
import MMTestSupport


/// Random sequences mixing device-dax and fs-dax operations in one kernel and
/// one MM, with the invariants of MMCore/Invariants.swift (against a ledger of
/// held references) and no debug report after every step.
/// DAXMM_DAX_PROPERTY_STEPS sets the length.
@Suite("Property: device-dax and fs-dax together")
struct DAXPropertyTests {
    static var steps: Int { Int(ProcessInfo.processInfo.environment["DAXMM_DAX_PROPERTY_STEPS"] ?? "") ?? 5_000 }

    struct Held { let page: UnsafeMutablePointer<dax_page>; let pin: Bool; let head: UInt64; let weight: Int64 }

    @Test("mixed sequences", arguments: [1, 2] as [UInt64])
    func mixed(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed &* 0x1234_5678)
        let kernel = try Kernel(physBits: 40)
        let k = kernel.ref
        let dev = try DevDax(kernel: kernel, ranges: [PhysicalRange(start: 0x1_0000_0000, size: 8 << 20)], align: 2 << 20)
        try dev.probe()
        let dev4k = try DevDax(kernel: kernel, ranges: [PhysicalRange(start: 0x1_4000_0000, size: 2 << 20)], align: 4096)
        try dev4k.probe()
        let fs = try DaxFS(kernel: kernel, start: 0x2_0000_0000, size: 16 << 20)
        let files = [try fs.create(name: "a", maxSize: 4 << 20), try fs.create(name: "b", maxSize: 4 << 20)]
        for f in files { try f.extend(to: 4 << 20) }
        let mm = try MM(kernel: kernel)
        var maps: [(addr: UInt64, len: UInt64, file: DaxFile?)] = [
            (try mm.mmap(dev.mmapRequest(length: 8 << 20)), 8 << 20, nil),
            (try mm.mmap(dev4k.mmapRequest(length: 2 << 20)), 2 << 20, nil),
            (try mm.mmap(files[0].mmapRequest(length: 4 << 20)), 4 << 20, files[0]),
            (try mm.mmap(files[1].mmapRequest(length: 4 << 20)), 4 << 20, files[1]),
            (try mm.mmap(files[0].mmapRequest(length: 64 << 10, pgoff: 3)), 64 << 10, files[0]),
        ]
        var held: [Held] = []
        var ledger: RefLedger = [:]
        let pages = PageArray.allocate(capacity: 16)
        defer { pages.deallocate() }
        let pgmaps = [dev.pgmap!, dev4k.pgmap!, fs.pgmap]

        for step in 0..<Self.steps {
            let m = maps[Int.random(in: 0..<maps.count, using: &rng)]
            let off = UInt64.random(in: 0..<(m.len / 4096), using: &rng) * 4096
            let op = Int.random(in: 0..<100, using: &rng)
            var what = ""
            switch op {
            case 0..<40:
                let write = Bool.random(using: &rng)
                what = "fault \(write) \(hex(m.addr + off))"
                let r = mm.handleFault(m.addr + off, write: write)
                #expect(r & DAX_VM_FAULT_ERROR == 0, "step \(step): \(what) -> \(r)")
            case 40..<55:
                let n = Int.random(in: 1...min(8, Int((m.len - off) / 4096)), using: &rng)
                let longterm = m.file == nil && Bool.random(using: &rng)
                what = "pin \(n) longterm \(longterm)"
                let got = pinUserPages(mm.ref, m.addr + off, n, longterm ? [.write, .longterm] : [.write], pages)
                #expect(got == n, "step \(step): \(what) -> \(got)")
                for i in 0..<max(got, 0) {
                    let f = Page(pages[i]!).folio
                    let w: Int64 = f.hasPincount ? 1 : 1024
                    let head = pageToPfn(k, f.head)
                    held.append(Held(page: pages[i]!, pin: true, head: head, weight: w))
                    ledger[head, default: 0] += w
                }
            case 55..<60:
                if m.file != nil {
                    what = "longterm pin on fs-dax"
                    #expect(pinUserPages(mm.ref, m.addr + off, 1, [.write, .longterm], pages) == Int(-EOPNOTSUPP))
                }
            case 60..<78:
                guard !held.isEmpty else { break }
                let h = held.remove(at: Int.random(in: 0..<held.count, using: &rng))
                what = "unpin"
                unpinUserPage(k, Page(h.page))
            case 78..<86:
                what = "zap \(hex(m.addr + off))"
                let fs2 = UInt64(m.file == nil && m.len >= 2 << 20 && m.addr >= maps[0].addr && m.addr < maps[0].addr + maps[0].len ? 2 << 20 : 4096)
                let start = m.addr + off / fs2 * fs2
                mm.lockRead()
                zapPageRange(mm.ref, start, start + fs2)
                mm.unlockRead()
            case 86..<94:
                if let f = m.file {
                    let pg = UInt64.random(in: 0..<1024, using: &rng)
                    what = "break layout \(f.name) [\(pg), +16)"
                    do { try f.breakLayout(start: pg, end: pg + 15, wait: false) } catch {
                        // Busy: a pinned page; the entries must still be there.
                        guard case .busy = error else { Issue.record("\(error)"); break }
                    }
                }
            default:
                if let f = m.file {
                    let pg = UInt64.random(in: 0..<1024, using: &rng) & ~15
                    what = "punch hole \(f.name) [\(pg), +16)"
                    do { try f.punchHole(pgoff: pg, pages: 16, timeoutNanos: 0) } catch {
                        guard case .busy = error else { Issue.record("\(error)"); break }
                    }
                }
            }
            // fs-dax folios are built and split as entries come and go: key the
            // ledger by each held page's current head.
            var current: RefLedger = [:]
            for h in held { current[pageToPfn(k, Page(h.page).folio.head), default: 0] += h.weight }
            ledger = current
            guard propertyStepHolds(kernel, mms: [mm], pgmaps: pgmaps, ledger: ledger, seed: seed, step: step, after: what)
            else { return }
        }
        for h in held { unpinUserPage(k, Page(h.page)) }
        for m in maps { try mm.munmap(m.addr, m.len) }
        try fs.unmount(timeoutNanos: 1_000_000_000)
        expectInvariants(kernel, mms: [mm], pgmaps: pgmaps, ledger: [:])
        _ = maps.removeAll()
    }

    /// Faults, unmaps, pins and break-layouts on one fs-dax file from two
    /// threads; afterwards every page is idle and every invariant holds.
    ///
    /// dax_break_layout drops the invalidate lock while it sleeps on a busy
    /// page (as the kernel's wait callback does), so the fault thread may map
    /// that page again meanwhile; then only a new busy scan (which unmaps)
    /// lets it go idle. The breaker therefore rescans after each short wait
    /// while the fault thread is still running, and gives its verdict only on
    /// a scan that started after the fault thread stopped: with nobody else
    /// left, a page still busy then is a leaked reference, whatever the load.
    @Test("concurrent faults, pins and break_layout on fs-dax")
    func concurrent() throws {
        let rig = try FSRig(start: 0x2_0000_0000)
        let (kernel, fs, mm) = (rig.kernel, rig.fs, rig.mm)
        let f = try fs.create(name: "c", maxSize: 4 << 20)
        try f.allocate(pgoff: 0, pages: 1024)
        let addr = try mm.mmap(f.mmapRequest(length: 4 << 20))
        let failures = Locked<[String]>([])
        let iterations = 3000
        let faulterDone = Atomic<Bool>(false)
        DispatchQueue.concurrentPerform(iterations: 2) { t in
            defer { if t == 0 { faulterDone.store(true, ordering: .releasing) } }
            var rng = SplitMix64(seed: UInt64(t + 7))
            let pages = PageArray.allocate(capacity: 4)
            defer { pages.deallocate() }
            for i in 0..<iterations {
                let off = UInt64.random(in: 0..<1024, using: &rng) * 4096
                if t == 0 {
                    if Bool.random(using: &rng) {
                        let r = mm.handleFault(addr + off, write: Bool.random(using: &rng))
                        if r & DAX_VM_FAULT_ERROR != 0 { failures.withLock { $0.append("fault \(i): \(r)") } }
                    } else {
                        let n = pinUserPages(mm.ref, addr + off, 1, [.write], pages)
                        if n == 1 { unpinUserPages(kernel.ref, pages, 1) }
                        else { failures.withLock { $0.append("pin \(i): \(n)") } }
                    }
                } else {
                    let pg = off >> 12
                    while true {
                        let alone = faulterDone.load(ordering: .acquiring)
                        do throws(FSError) {
                            // Alone: nothing can hold a page, so no wait at all.
                            try f.breakLayout(start: pg, end: pg + 63, wait: !alone, timeoutNanos: 1_000_000)
                            break
                        } catch {
                            if case .busy = error, !alone { continue }   // remapped meanwhile: scan again
                            failures.withLock { $0.append("break \(i)\(alone ? " after the fault thread stopped" : ""): \(error)") }
                            break
                        }
                    }
                }
            }
        }
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0.prefix(5) })")
        rig.check([:])
        try mm.munmap(addr, 4 << 20)
        try f.breakLayout()
        for i in 0..<1024 { #expect(try #require(f.folio(at: UInt64(i))).refCount == 0) }
        try fs.unmount()
    }
}
