// Cross-checks with the real kernel on the same device memory, each a
// reported result. The port chose a pfn, an extent size and a mapcount for
// every address it mapped; the kernel, which really maps the device there
// (the mirror's MAP_SHARED|MAP_FIXED mmap, faulted by the retried access),
// reports its own through /proc/self/pagemap. They must agree.

import CDaxMM
import DAXBase
import DAXCore
import DAXDevice
import MMCore

#if canImport(Glibc)
import Glibc
#endif

extension Exerciser {
    /// Why the kernel's view cannot be compared on this device, or nil.
    private var kernelViewUnavailable: String? {
        if binding.device.kind == .emulated {
            return "the emulated device is shmem: the kernel's pfns are RAM, not the device's physical addresses"
        }
        return nil
    }

    /// pfn: the port's pfn for each sampled mapped address equals pagemap's.
    func checkPfns(_ w: Window) {
        let name = "pfn-pagemap"
        if let why = kernelViewUnavailable { result.checks.append(CheckResult(name, .skip, why)); return }
        guard Pagemap.pfnsVisible() else {
            result.checks.append(CheckResult(name, .skip, "pagemap hides pfns from this user (CAP_SYS_ADMIN needed)"))
            return
        }
        var compared = 0, pudSkipped = 0, zeroPages = 0
        var firstBad: String? = nil, bad = 0
        let pages = Int(w.length / UInt64(pageSize))
        let step = Swift.max(1, pages / 256)
        for page in stride(from: 0, to: pages, by: step) {
            let off = UInt64(page * pageSize)
            guard let t = w.translation(off) else { continue }
            // The host maps a port extent larger than the device's alignment
            // (fs-dax PMDs over a 4K device-dax) page by page on access:
            // touch the page so the kernel has mapped it.
            _ = guardedAccess(w.address(off), write: false)
            let e: PagemapEntry
            do { e = try Pagemap.entry(at: UInt(w.address(off))) } catch {
                result.checks.append(CheckResult(name, .fail, "reading pagemap: \(error)")); return
            }
            if t.level == .pud && !e.present { pudSkipped += 1; continue }
            // The port's shared zero page is its pfn 0; the host backs it with
            // a real zero page (a RAM pfn of its own): not a device pfn.
            if t.pfn == 0 { zeroPages += 1; continue }
            compared += 1
            if e.pfn != t.pfn {
                bad += 1
                if firstBad == nil {
                    firstBad = "window offset \(hex(off)): port \(t), kernel \(e.pfn.map { "pfn " + hex($0) } ?? "not present")"
                }
            }
        }
        if compared == 0 {
            result.checks.append(CheckResult(name, .skip, pudSkipped > 0
                ? "every mapped extent is a PUD, which pagemap does not report on this kernel: see extent-pud-faults"
                : "nothing mapped to compare"))
            return
        }
        result.checks.append(CheckResult(name, bad == 0 ? .pass : .fail,
            bad == 0 ? "\(compared) address(es): the port's pfn equals the kernel's (physical address of the device)\(zeroPages > 0 ? "; \(zeroPages) on the shared zero page not compared" : "")"
                     : "\(bad) of \(compared) differ; first: \(firstBad!)"))
    }

    /// extent: one touch in a fresh window maps the same extent in the port
    /// and in the kernel.
    func checkExtent() {
        let name = "extent-size"
        if let why = kernelViewUnavailable { result.checks.append(CheckResult(name, .skip, why)); return }
        let align = binding.align
        let len = Swift.min(binding.mappableSize - options.windowOffset, Swift.max(align, UInt64(pmdSize)) * 2)
        let w: Window
        do { w = try binding.openWindow(length: len - len % align, offset: options.windowOffset) } catch {
            result.checks.append(CheckResult(name, .fail, "\(error)")); return
        }
        defer { w.closeWindow() }
        // A page inside the first extent, not its first, so a run must reach
        // back to the extent's start to be the whole extent.
        let probe: UInt64 = align >= UInt64(pmdSize) ? 0x5000 : 0
        let o = wordOffset(seed: options.seed, page: probe / UInt64(pageSize))
        let r = guardedAccess(w.address(o), write: true, value: exerciseValue(seed: options.seed, offset: w.offset + o))
        markWritten(o / UInt64(pageSize))
        guard r.ok, let t = w.translation(o) else {
            result.checks.append(CheckResult(name, .fail, "touching the fresh window: \(r)")); return
        }
        if t.level == .pud {
            // pagemap has no PUD walk here; the kernel mapped 1 GiB with one
            // fault iff touching every other 2 MiB of it costs no fault.
            let before = FaultCounter.read(.thread)
            var bad: AccessResult? = nil
            var a: UInt64 = 0
            while a < UInt64(pudSize) {
                let x = guardedAccess(w.address(a + 8), write: false)
                if !x.ok { bad = x; break }
                a += UInt64(pmdSize)
            }
            let faults = FaultCounter.read(.thread) - before
            let ok = bad == nil && faults.total == 0 && w.stats.faults == 1
            result.checks.append(CheckResult("extent-pud-faults", ok ? .pass : .fail, ok
                ? "port PUD; the kernel served 512 touches across the 1 GiB extent with 0 faults after the first (pagemap does not report PUD mappings here)"
                : "port PUD; after the first touch the kernel took \(faults) and the window \(w.stats.faults - 1) more fault(s)\(bad.map { ", \($0)" } ?? "")"))
            return
        }
        // A port extent larger than the device's alignment (an fs-dax PMD
        // over a 4K device-dax) is one host mapping the kernel fills page by
        // page: touch all of it, which must take no further window fault.
        var note = ""
        if t.extentBytes > align {
            let faults = w.stats.faults
            let start = o & ~(t.extentBytes - 1)
            var a = start
            while a < start + t.extentBytes {
                let x = guardedAccess(w.address(a), write: false)
                if !x.ok { result.checks.append(CheckResult(name, .fail, "touching the extent: \(x)")); return }
                a += UInt64(pageSize)
            }
            if w.stats.faults != faults {
                result.checks.append(CheckResult(name, .fail, "port \(t): touching its pages took \(w.stats.faults - faults) more window fault(s)"))
                return
            }
            note = " after touching each page (the \(formatSize(align))-aligned device maps it in \(formatSize(align)) pages)"
        }
        let run: PresentRun
        do { run = try Pagemap.presentRun(around: UInt(w.address(o)), limit: pmdSize) } catch {
            result.checks.append(CheckResult(name, .fail, "reading pagemap: \(error)")); return
        }
        let want = Int(t.extentBytes)
        let start = UInt(w.address(o) & ~(t.extentBytes - 1))
        let ok = run.bytes == want && run.start == start
        result.checks.append(CheckResult(name, ok ? .pass : .fail,
            "port \(t.level == .pmd ? "PMD" : "PTE") (\(formatSize(t.extentBytes))); kernel: \(run.pages) present page(s) from \(hex(UInt64(run.start)))\(run.pfnsChecked ? " with consecutive pfns" : "")\(note)"))
    }

    /// mapcount: the port's folio mapcount agrees with pagemap's
    /// exclusively-mapped bit as a second mapping comes and goes.
    func checkMapcount() {
        let name = "mapcount-exclusive"
        if let why = kernelViewUnavailable { result.checks.append(CheckResult(name, .skip, why)); return }
        guard binding.mode == .devdax else {
            result.checks.append(CheckResult(name, .skip, "device-dax mode only (fs-dax windows map the device through the host's device-dax, not a file)"))
            return
        }
        let version = KernelVersion.current()
        let post = version?.hasZoneDeviceRefcountSeries ?? true
        let ext = Swift.max(binding.align, UInt64(pageSize))
        let a: Window, b: Window
        do {
            a = try binding.openWindow(length: ext, offset: options.windowOffset)
            b = try binding.openWindow(length: ext, offset: options.windowOffset)
        } catch {
            result.checks.append(CheckResult(name, .fail, "\(error)")); return
        }
        defer { a.closeWindow(); b.closeWindow() }
        let o = wordOffset(seed: options.seed, page: 0)
        let v = exerciseValue(seed: options.seed, offset: a.offset + o)
        var steps: [String] = []
        var bad: [String] = []
        func sample(_ label: String, _ w: Window, portExpect: Int32) {
            guard let t = w.translation(o), let f = binding.folio(physical: t.pfn << UInt64(pageShift)) else {
                bad.append("\(label): not mapped in the port"); return
            }
            let e = try? Pagemap.entry(at: UInt(w.address(o)))
            guard let e, e.present else {
                bad.append("\(label): the kernel reports the page not present\(t.level == .pud ? " (PUD: pagemap does not walk it)" : "")")
                return
            }
            let m = f.mapcount
            steps.append("\(label): port mapcount \(m), kernel exclusive \(e.exclusive ? 1 : 0)")
            if m != portExpect { bad.append("\(label): port mapcount \(m), expected \(portExpect)") }
            if post {
                if e.exclusive != (m == 1) { bad.append("\(label): port mapcount \(m) but kernel exclusive=\(e.exclusive)") }
            } else if e.exclusive {
                bad.append("\(label): exclusive bit set on a pre-series kernel")
            }
        }
        guard guardedAccess(a.address(o), write: true, value: v).ok else {
            result.checks.append(CheckResult(name, .fail, "touching the first mapping failed")); return
        }
        markWritten(o / UInt64(pageSize))
        sample("one mapping", a, portExpect: 1)
        guard guardedAccess(b.address(o), write: false).ok else {
            result.checks.append(CheckResult(name, .fail, "touching the second mapping failed")); return
        }
        sample("two mappings (first)", a, portExpect: 2)
        sample("two mappings (second)", b, portExpect: 2)
        b.closeWindow()
        sample("second unmapped", a, portExpect: 1)
        if bad.contains(where: { $0.contains("PUD") }) {
            result.checks.append(CheckResult(name, .skip, "1 GiB extents: pagemap does not report PUD mappings on this kernel (\(version?.description ?? "?")); " + steps.joined(separator: "; ")))
            return
        }
        let kernelNote = post ? "post-series kernel \(version?.description ?? "?")"
                              : "pre-series kernel \(version?.description ?? "?"): device-dax folios are not mapcounted before 6.15, the exclusive bit stays 0"
        result.checks.append(CheckResult(name, bad.isEmpty ? .pass : .fail,
            (bad.isEmpty ? "" : bad.joined(separator: "; ") + " | ") + kernelNote + ": " + steps.joined(separator: "; ")))
    }

    func runCrossChecks(_ w: Window) {
        checkPfns(w)
    }

    /// The checks that need fresh windows, after the main one is closed.
    func runFreshWindowChecks() {
        checkExtent()
        checkMapcount()
    }
}
