// The mm suite's seeded property run: random sequences of faults, GUP pins
// and gets, unpins and puts, zaps, mprotect, munmap (whole and partial),
// truncate, dax_break_layout and hole punch, over a 2M and a 4K device-dax
// and two fs-dax files in one kernel and one mm, and a private anonymous
// MADV_HUGEPAGE mapping beside them (anon PTE and THP faults, the huge zero
// folio, partial munmaps that split THPs, MADV_DONTNEED zaps,
// make_device_exclusive with its release and the CPU faults that restore
// the entries, GUP gets of anon pages, writes to read-only anon pages
// (do_wp_page's copy or reuse), mprotect read-only and back, and fork of
// the whole mm with writes in both and the child's exit); after every step the
// port's invariants (MMCore/Invariants.swift, rule 1 as an equality
// against the references the sequence holds) and no debug report. It is the
// generator of Tests/DAXCoreTests/DAXPropertyTests.swift widened to
// mprotect, partial munmap and truncate, with each operation's expected
// result (errno or VM_FAULT_*) checked too.
//
// DAXMM_PROPERTY_STEPS sets the number of steps (a long run:
// `DAXMM_PROPERTY_STEPS=1000000 daxmm test mm-property`), DAXMM_PROPERTY_SEED
// the seed; a failure names the seed and the step, and the log has the
// command that replays it.

import CDaxMM
import DAXBase
import DAXCore
import Foundation
import MMCore
import MMTestSupport

/// One property run's parameters.
struct PropertyRun: Sendable {
    var seed: UInt64
    var steps: Int
    /// A test seam: at this step, after the operation, take a reference
    /// nothing accounts for (the run must then fail at this step).
    var leakAtStep: Int? = nil
    /// Log every step (DAXMM_PROPERTY_TRACE=1), for replaying a failure.
    var trace = false

    /// Seconds on the host; inside the project's VM (TCG, several times
    /// slower, and this suite tests no kernel) a fifth of it.
    static let defaultSteps = 1500
    static let defaultGuestSteps = 300
    static let defaultSeed: UInt64 = 0xdac5_2015

    init(seed: UInt64, steps: Int, leakAtStep: Int? = nil) {
        self.seed = seed
        self.steps = steps
        self.leakAtStep = leakAtStep
    }

    /// DAXMM_PROPERTY_STEPS and DAXMM_PROPERTY_SEED from `variables`.
    init(variables: [String: String]) {
        let guest = variables["DAXMM_IN_VM"] == "1"
        steps = variables["DAXMM_PROPERTY_STEPS"].flatMap { Int($0) } ?? (guest ? Self.defaultGuestSteps : Self.defaultSteps)
        seed = variables["DAXMM_PROPERTY_SEED"].flatMap { UInt64($0) } ?? Self.defaultSeed
        trace = variables["DAXMM_PROPERTY_TRACE"] == "1"
    }

    /// The runner's limit for mm-property: room for the steps asked for.
    static var timeout: Double {
        let steps = PropertyRun(variables: ProcessInfo.processInfo.environment).steps
        return max(120, Double(steps) * 0.05)
    }
}

/// A mapping the sequence works on: one VMA (minus the units munmapped
/// out of it) of a device or a file.
private struct Region {
    enum Backing {
        case devdax(DevDax)
        case file(DaxFile)
        case anon
    }
    let name: String
    let backing: Backing
    let length: UInt64
    let pgoff: UInt64
    /// The granule of zaps and partial munmaps (the device alignment: a
    /// finer split is refused by dev_dax_may_split; 4K for files).
    let unit: UInt64
    var addr: UInt64? = nil
    var writable = true
    /// Units munmapped out of the VMA.
    var holes: Set<UInt64> = []

    var file: DaxFile? { if case .file(let f) = backing { return f }; return nil }
    var isAnon: Bool { if case .anon = backing { return true }; return false }

    func request() -> MMapRequest {
        switch backing {
        case .devdax(let d): return d.mmapRequest(length: length, pgoff: pgoff)
        case .file(let f): return f.mmapRequest(length: length, pgoff: pgoff)
        case .anon:
            var req = MMapRequest(length: length)
            req.shared = false
            req.alignment = UInt64(pmdSize)
            return req
        }
    }

    func inHole(_ offset: UInt64) -> Bool { holes.contains(offset / unit) }

    /// The runs [start, end) of region offsets still mapped by the region
    /// (another region's mmap may have landed in a hole).
    var mappedRuns: [(UInt64, UInt64)] {
        var runs: [(UInt64, UInt64)] = []
        var u: UInt64 = 0
        let units = length / unit
        while u < units {
            if holes.contains(u) { u += 1; continue }
            let s = u
            while u < units && !holes.contains(u) { u += 1 }
            runs.append((s * unit, u * unit))
        }
        return runs
    }

    /// Pages from `offset` that GUP can take in one call: up to the next
    /// hole, the region's end, and (files) the end of file.
    func pagesFrom(_ offset: UInt64) -> UInt64 {
        var end = length
        if let u = holes.filter({ $0 * unit > offset }).min() { end = min(end, u * unit) }
        if let f = file {
            let eof = f.size
            let fileOff = (pgoff << UInt64(pageShift)) + offset
            end = eof > fileOff ? min(end, offset + (eof - fileOff)) : offset
        }
        return end > offset ? (end - offset) >> UInt64(pageShift) : 0
    }

    /// Whether the file page under `offset` is past the end of file.
    func pastEOF(_ offset: UInt64) -> Bool {
        guard let f = file else { return false }
        return pgoff + (offset >> UInt64(pageShift)) >= f.size >> UInt64(pageShift)
    }
}

/// A reference the sequence holds outside the page tables.
private struct Held {
    let page: Page
    let pin: Bool
    /// What it adds to its folio's refcount (try_grab_folio).
    let weight: Int64
}

/// The run. Returns normally whether or not it failed; a failure is a
/// failed check naming the seed and the step.
func mmPropertyScenario(_ t: TestContext, run: PropertyRun, rules: KernelRules = .kernel) throws {
    var rng = SplitMix64(seed: run.seed)
    let kernel = try t.must("a port kernel") { try Kernel(physBits: 40) }
    let k = kernel.ref
    let dev2m = try t.must("a 2M device-dax of 8 MiB") {
        try DevDax(kernel: kernel, ranges: [PhysicalRange(start: 0x1_0000_0000, size: 8 << 20)], align: UInt64(pmdSize))
    }
    try t.must("probe") { try dev2m.probe() }
    let dev4k = try t.must("a 4K device-dax of 2 MiB") {
        try DevDax(kernel: kernel, ranges: [PhysicalRange(start: 0x1_4000_0000, size: 2 << 20)], align: 4096)
    }
    try t.must("probe") { try dev4k.probe() }
    let fs = try t.must("an extent store on 16 MiB of fs-dax memory") { try DaxFS(kernel: kernel, start: 0x2_0000_0000, size: 16 << 20) }
    let fileMax: UInt64 = 4 << 20
    let files = try t.must("two files") { [try fs.create(name: "a", maxSize: fileMax), try fs.create(name: "b", maxSize: fileMax)] }
    try t.must("i_size 4 MiB each") { for f in files { try f.extend(to: fileMax) } }
    let mm = try t.must("an mm") { try MM(kernel: kernel) }
    let pgmaps = [dev2m.pgmap!, dev4k.pgmap!, fs.pgmap]
    var regions = [
        Region(name: "devdax-2M", backing: .devdax(dev2m), length: 8 << 20, pgoff: 0, unit: UInt64(pmdSize)),
        Region(name: "devdax-4K", backing: .devdax(dev4k), length: 2 << 20, pgoff: 0, unit: 4096),
        Region(name: "file-a", backing: .file(files[0]), length: fileMax, pgoff: 0, unit: 4096),
        Region(name: "file-b", backing: .file(files[1]), length: fileMax, pgoff: 0, unit: 4096),
        Region(name: "file-a@3", backing: .file(files[0]), length: 64 << 10, pgoff: 3, unit: 4096),
        Region(name: "anon", backing: .anon, length: 4 << 20, pgoff: 0, unit: 4096),
    ]
    /// mmap of region `i`, and MADV_HUGEPAGE on an anonymous one.
    func mapRegion(_ i: Int) throws(MMError) {
        let a = try mm.mmap(regions[i].request())
        regions[i].addr = a
        if regions[i].isAnon { try mm.madvise(a, regions[i].length, .hugepage) }
    }
    for i in regions.indices {
        try t.must("mmap \(regions[i].name)") { try mapRegion(i) }
    }
    var held: [Held] = []
    let pages = PageArray.allocate(capacity: 16)
    defer { pages.deallocate() }
    t.log("mm-property: seed \(run.seed), \(run.steps) steps")

    /// Records the failure of `step` (seed, step, operation, what went
    /// wrong) and the command that replays it.
    func fail(_ step: Int, _ what: String, _ problem: String) {
        t.expect(false, "seed \(run.seed) step \(step) after \(what): \(problem)")
        t.log("replay: DAXMM_PROPERTY_SEED=\(run.seed) DAXMM_PROPERTY_STEPS=\(step + 1) DAXMM_PROPERTY_TRACE=1 daxmm test mm-property")
    }

    /// The port's verdict after a step: invariants against the references
    /// held (keyed by each held page's folio now: fs-dax folios are built
    /// and split as entries come and go), and no debug report.
    func check() -> String? {
        var ledger: RefLedger = [:]
        for h in held { ledger[pageToPfn(k, h.page.folio.head), default: 0] += h.weight }
        let v = invariants(mms: [mm], pgmaps: pgmaps, ledger: ledger, complete: true)
        let problems = v.map(\.description) + kernel.drainReports().map { "debug report:\n\($0)" }
        return problems.isEmpty ? nil : problems.prefix(3).joined(separator: "\n")
    }

    stepping: for step in 0..<run.steps {
        let r = Int.random(in: 0..<regions.count, using: &rng)
        let op = Int.random(in: 0..<100, using: &rng)
        var what = ""
        var problem: String? = nil
        func unexpected(_ s: String) { if problem == nil { problem = s } }

        guard let base = regions[r].addr else {
            what = "mmap \(regions[r].name)"
            do {
                try mapRegion(r)
                regions[r].writable = true
                regions[r].holes = []
            } catch { unexpected("\(error)") }
            if run.leakAtStep == step {
                pfnToPage(k, dev2m.ranges[0].range.startPfn).folio.refInc()
                what += " (and a reference nobody accounts for)"
            }
            if let p = problem ?? check() { fail(step, what, p); break stepping }
            continue
        }
        let region = regions[r]
        let off = UInt64.random(in: 0..<(region.length >> UInt64(pageShift)), using: &rng) << UInt64(pageShift)
        let addr = base + off
        /// The present leaf (PTE or PMD) at `addr`: (present, writable).
        func anonLeaf() -> (present: Bool, writable: Bool) {
            guard let l = leaf(mm, addr) else { return (false, false) }
            return (true, l.writable)
        }
        if region.isAnon && !region.inHole(off) {
            var handled = true
            switch op {
            case 0..<28:
                // Mostly writes: reads map the zero pages, and a write to a
                // read-only page (a zero page, a page write-protected by a
                // fork or an mprotect) is do_wp_page's copy or reuse.
                let write = Int.random(in: 0..<4, using: &rng) != 0
                what = "\(write ? "write" : "read") fault anon+\(hex(off))"
                let ret = mm.handleFault(addr, write: write)
                if write && !region.writable {
                    if ret != DAX_VM_FAULT_SIGSEGV { unexpected("\(vmFaultName(ret)), expected VM_FAULT_SIGSEGV") }
                } else if ret & DAX_VM_FAULT_ERROR != 0 {
                    unexpected(vmFaultName(ret))
                } else if write && !(anonLeaf().present && anonLeaf().writable) {
                    unexpected("no writable entry after the write fault")
                }
            case 28..<36:
                let l = anonLeaf()
                guard l.present && l.writable else { what = "make_device_exclusive skipped (no writable page)"; break }
                what = "make_device_exclusive anon+\(hex(off)) and release"
                do {
                    let p = try mm.makeDeviceExclusive(addr, owner: UnsafeMutableRawPointer(bitPattern: 0xe8c1))
                    if !p.folio.isLocked { unexpected("the folio is not returned locked") }
                    mm.releaseDeviceExclusive(p)
                    if let e = mm.withUnsafeRecord({ walk($0, addr).pte.map { dax_load_u64($0) } }),
                       !(isSwapPte(e) && isDeviceExclusiveEntry(pteToSwpEntry(e))) {
                        unexpected("no device-exclusive entry after make_device_exclusive: \(hex(e))")
                    }
                } catch { unexpected("\(error)") }
            case 36..<45:
                let l = anonLeaf()
                guard l.present && l.writable else { what = "get skipped (no writable anon page)"; break }
                what = "get_user_pages(1) anon+\(hex(off))"
                let got = mm.withUnsafeRecord { getUserPages($0, addr, 1, [], pages) }
                if got != 1 { unexpected("returned \(got), expected 1") }
                for i in 0..<max(got, 0) { held.append(Held(page: Page(pages[i]!), pin: false, weight: 1)) }
            case 95..<100:
                // dup_mmap of the whole mm, writes in both, the child's exit.
                what = "fork, writes in both, exit of the child"
                do {
                    var child: MM? = try mm.fork()
                    var ledger: RefLedger = [:]
                    for h in held { ledger[pageToPfn(k, h.page.folio.head), default: 0] += h.weight }
                    var p = invariants(mms: [mm, child!], pgmaps: pgmaps, ledger: ledger, complete: true).map(\.description)
                    if let first = p.first { unexpected("after fork: \(first)"); break }
                    if region.writable {
                        for _ in 0..<4 {
                            let o = UInt64.random(in: 0..<(region.length >> UInt64(pageShift)), using: &rng) << UInt64(pageShift)
                            guard !region.inHole(o) else { continue }
                            let who = Bool.random(using: &rng) ? child! : mm
                            let ret = who.handleFault(base + o, write: true)
                            if ret & DAX_VM_FAULT_ERROR != 0 { unexpected("write fault anon+\(hex(o)) in the \(who === mm ? "parent" : "child"): \(vmFaultName(ret))") }
                        }
                    }
                    p = invariants(mms: [mm, child!], pgmaps: pgmaps, ledger: ledger, complete: true).map(\.description)
                    if let first = p.first { unexpected("after the writes: \(first)") }
                    child = nil
                } catch { unexpected("\(error)") }
            default:
                handled = false
            }
            if handled {
                if run.leakAtStep == step {
                    pfnToPage(k, dev2m.ranges[0].range.startPfn).folio.refInc()
                    what += " (and a reference nobody accounts for)"
                }
                if run.trace { t.log("step \(step): \(what)") }
                if let p = problem ?? check() {
                    fail(step, what, p)
                    break stepping
                }
                continue
            }
        }
        switch op {
        case 0..<28:
            let write = Bool.random(using: &rng)
            what = "\(write ? "write" : "read") fault \(region.name)+\(hex(off))"
            let ret = mm.handleFault(addr, write: write)
            if region.inHole(off) && mm.findVMA(addr).map({ $0.pointee.vm_start <= addr }) == true {
                what += " (in a hole another region now maps)"
            } else if region.inHole(off) || (write && !region.writable) {
                if ret != DAX_VM_FAULT_SIGSEGV { unexpected("\(vmFaultName(ret)), expected VM_FAULT_SIGSEGV") }
            } else if region.pastEOF(off) {
                if ret != DAX_VM_FAULT_SIGBUS { unexpected("\(vmFaultName(ret)) past EOF, expected VM_FAULT_SIGBUS") }
            } else if ret & DAX_VM_FAULT_ERROR != 0 {
                unexpected(vmFaultName(ret))
            }
        case 28..<40:
            let avail = region.inHole(off) ? 0 : region.pagesFrom(off)
            guard avail > 0 else { what = "pin skipped"; break }
            let n = Int.random(in: 1...Int(min(8, avail)), using: &rng)
            let longterm = Bool.random(using: &rng), fast = Bool.random(using: &rng)
            var flags: GupFlags = region.writable && Bool.random(using: &rng) ? [.write] : []
            if longterm { flags.insert(.longterm) }
            what = "pin_user_pages\(fast ? "_fast" : "")(\(n)\(flags.contains(.write) ? ", FOLL_WRITE" : "")\(longterm ? ", FOLL_LONGTERM" : "")) \(region.name)+\(hex(off))"
            let got = mm.withUnsafeRecord { fast ? pinUserPagesFast($0, addr, n, flags, pages) : pinUserPages($0, addr, n, flags, pages) }
            if region.file != nil && longterm {
                if got != Int(-rules.longtermFsdaxErrno) { unexpected("returned \(got), expected -\(errnoName(rules.longtermFsdaxErrno))") }
            } else if got != n {
                unexpected("returned \(got), expected \(n)")
            }
            for i in 0..<max(got, 0) {
                let p = Page(pages[i]!)
                held.append(Held(page: p, pin: true, weight: p.folio.hasPincount ? 1 : Int64(rules.pinCountingBias)))
            }
        case 40..<45:
            let avail = region.inHole(off) ? 0 : region.pagesFrom(off)
            guard avail > 0 else { what = "get skipped"; break }
            let n = Int.random(in: 1...Int(min(4, avail)), using: &rng)
            let fast = Bool.random(using: &rng)
            what = "get_user_pages\(fast ? "_fast" : "")(\(n)) \(region.name)+\(hex(off))"
            let got = mm.withUnsafeRecord { fast ? getUserPagesFast($0, addr, n, [], pages) : getUserPages($0, addr, n, [], pages) }
            if got != n { unexpected("returned \(got), expected \(n)") }
            for i in 0..<max(got, 0) { held.append(Held(page: Page(pages[i]!), pin: false, weight: 1)) }
        case 45..<60:
            guard !held.isEmpty else { what = "unpin skipped"; break }
            let h = held.remove(at: Int.random(in: 0..<held.count, using: &rng))
            what = h.pin ? "unpin_user_page" : "put_page"
            if h.pin { unpinUserPage(k, h.page) } else { folioPut(k, h.page.folio) }
        case 60..<68:
            let start = off / region.unit * region.unit
            let len = min(region.unit * UInt64.random(in: 1...2, using: &rng), region.length - start)
            what = "zap \(region.name)+[\(hex(start)), +\(hex(len)))"
            zap(mm, base + start, len)
        case 68..<74:
            let prot: Prot = region.writable ? [.read] : [.read, .write]
            what = "mprotect \(region.name) \(region.writable ? "PROT_READ" : "PROT_READ|PROT_WRITE")"
            // Over a hole nobody maps mprotect is -ENOMEM and changes
            // nothing; a hole another region maps now is left alone.
            let refill = region.holes.contains { u in mm.findVMA(base + u * region.unit).map { $0.pointee.vm_start < base + (u + 1) * region.unit } == true }
            if refill { what += " skipped (a hole is mapped by another region)"; break }
            do {
                try mm.mprotect(base, region.length, prot)
                if !region.holes.isEmpty { unexpected("succeeded over a range with holes, expected ENOMEM") }
                regions[r].writable.toggle()
            } catch {
                if region.holes.isEmpty || error.code != ENOMEM { unexpected("\(error)") }
            }
        case 74..<78:
            what = "munmap \(region.name)"
            do {
                for (s, e) in region.mappedRuns { try mm.munmap(base + s, e - s) }
                regions[r].addr = nil
            } catch { unexpected("\(error)") }
        case 78..<84:
            let unit = off / region.unit
            // A hole may hold another region's mapping now: leave it alone.
            if region.holes.contains(unit) { what = "munmap skipped (a hole)"; break }
            if region.unit > 4096 && Bool.random(using: &rng) {
                what = "munmap 4K inside a 2M unit of \(region.name) (dev_dax_may_split)"
                let vmas = mm.vmaList().count, rss = mm.rssFilePages
                do {
                    try mm.munmap(base + unit * region.unit + 4096, 4096)
                    unexpected("succeeded, expected \(errnoName(rules.maySplitErrno))")
                } catch {
                    if error.code != rules.maySplitErrno { unexpected("\(error)") }
                }
                if mm.vmaList().count != vmas || mm.rssFilePages != rss { unexpected("the refused munmap changed the mm") }
            } else {
                what = "munmap unit \(unit) of \(region.name)"
                do {
                    try mm.munmap(base + unit * region.unit, region.unit)
                    regions[r].holes.insert(unit)
                } catch { unexpected("\(error)") }
            }
        case 84..<90:
            guard let f = region.file else { what = "truncate skipped"; break }
            let size = UInt64.random(in: 0...(fileMax >> UInt64(pageShift)), using: &rng) << UInt64(pageShift)
            what = "truncate \(f.name) to \(hex(size))"
            let before = f.size
            do {
                try f.truncate(to: size, timeoutNanos: 0)
                if f.size != size { unexpected("i_size \(hex(f.size))") }
            } catch {
                if case .busy = error {
                    if f.size != before { unexpected("a refused truncate changed i_size") }
                } else { unexpected("\(error)") }
            }
        case 90..<95:
            guard let f = region.file else { what = "break layout skipped"; break }
            let pg = UInt64.random(in: 0..<(fileMax >> UInt64(pageShift)), using: &rng)
            what = "dax_break_layout \(f.name) [\(pg), +16)"
            do { try f.breakLayout(start: pg, end: pg + 15, wait: false) } catch {
                if case .busy = error {} else { unexpected("\(error)") }
            }
        default:
            guard let f = region.file else { what = "punch skipped"; break }
            let pg = UInt64.random(in: 0..<(fileMax >> UInt64(pageShift)), using: &rng) & ~15
            what = "punch hole \(f.name) [\(pg), +16)"
            do { try f.punchHole(pgoff: pg, pages: 16, timeoutNanos: 0) } catch {
                if case .busy = error {} else { unexpected("\(error)") }
            }
        }
        if run.leakAtStep == step {
            pfnToPage(k, dev2m.ranges[0].range.startPfn).folio.refInc()
            what += " (and a reference nobody accounts for)"
        }
        if run.trace { t.log("step \(step): \(what)") }
        if let p = problem ?? check() {
            fail(step, what, p)
            break stepping
        }
    }

    // Give everything back: every folio idle.
    for h in held { if h.pin { unpinUserPage(k, h.page) } else { folioPut(k, h.page.folio) } }
    held.removeAll()
    for region in regions {
        guard let a = region.addr else { continue }
        try t.must("munmap \(region.name)") { for (s, e) in region.mappedRuns { try mm.munmap(a + s, e - s) } }
    }
    try t.must("unmount (dax_break_layout_final)") { try fs.unmount(timeoutNanos: 1_000_000_000) }
    t.expectEqual(kernel.ramStats?.allocatedPages, 0, "seed \(run.seed): pages of ordinary memory still allocated after the run")
    t.expectEqual(mm.rssAnonPages, 0, "seed \(run.seed): MM_ANONPAGES after the run")
    t.expectPortConsistent(kernel, mms: [mm], pgmaps: pgmaps, after: "the run (seed \(run.seed), everything released)")
    var busy: [String] = []
    for (pg, idle) in [(dev2m.pgmap!, rules.devdaxIdleRefcount), (dev4k.pgmap!, rules.devdaxIdleRefcount), (fs.pgmap, rules.fsdaxIdleRefcount)] {
        let r = pg.ranges[0]
        var pfn = r.startPfn
        while pfn < r.endPfn {
            let f = pfnToPage(k, pfn).folio
            if f.refCount != idle && busy.count < 4 { busy.append("pfn \(hex(pfn)) refcount \(f.refCount)") }
            pfn += UInt64(max(f.nrPages, 1))
        }
    }
    t.expect(busy.isEmpty, "seed \(run.seed): folios not idle after the run: \(busy)")
}
