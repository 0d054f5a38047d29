// `daxmm bench fault --quick --json` on every device-dax alignment present:
// the kernel's first touch of each extent of the mapped device costs one
// fault that maps the whole extent (a PMD on 2M, a PUD on 1G), the port's
// window faults and bare handle_mm_fault are measured over the same device,
// the ratios the report promises are there, and the port's folio counters
// are back where they were after the run. ndctl's device-dax.c times its
// verify pass over a mapping of each alignment (4K, 2M, 1G); this times the
// first touches, the kernel's and the port's, on the devices present.

import DAXBase
import DAXDevice
import Foundation

enum BenchCheck {
    static func run(_ t: TestContext) throws {
        let exe = try t.require(ProjectFiles.executablePath(), "cannot find this executable (/proc/self/exe)")
        let devices = [DaxAlign.pte, .pmd, .pud].compactMap { t.environment.devdax(align: $0) }
        try t.require(!devices.isEmpty, "no enabled device-dax device")
        for dev in devices {
            let name = "\(dev.devname) (\(formatSize(dev.align)))"
            let r = try t.command([exe, "bench", "fault", "--quick", "--json", "--device", dev.path], timeout: 120)
            t.expectEqual(r.status, 0, "\(name): daxmm bench fault exit status")
            guard let start = r.stdout.firstIndex(of: "{"),
                  let rep = try? JSONSerialization.jsonObject(with: Data(r.stdout[start...].utf8)) as? [String: Any] else {
                t.expect(false, "\(name): daxmm bench printed no JSON report")
                continue
            }
            t.expectEqual(rep["backing"] as? String, "device-dax", "\(name): what the kernel's side ran over")
            t.expectEqual((rep["align"] as? NSNumber)?.uint64Value, dev.align, "\(name): the report's alignment")
            t.expect(rep.keys.contains("commit") && rep.keys.contains("optimized") && rep.keys.contains("kernelRelease"),
                     "\(name): the report names commit, optimized and kernelRelease")
            // The kernel faulted at the device's size: one fault per touch,
            // and no further fault for other pages of the extent.
            let kf = rep["kernelFaults"] as? [[String: Any]] ?? []
            t.expectEqual(kf.count, 2, "\(name): kernel first-touch results (read, write)")
            for k in kf {
                let access = k["access"] as? String ?? "?"
                t.expectEqual((k["mappedBytes"] as? NSNumber)?.uint64Value, dev.align,
                              "\(name) \(access): the size the kernel mapped per first touch")
                let touches = (k["touches"] as? NSNumber)?.intValue ?? 0
                let one = (k["touchesWithOneFault"] as? NSNumber)?.intValue ?? 0
                t.expect(touches > 0 && one * 10 >= touches * 9,
                         "\(name) \(access): \(one) of \(touches) first touches cost exactly one fault of the thread")
            }
            // The ratios, for read and write.
            let ratios = rep["ratios"] as? [[String: Any]] ?? []
            func ratio(_ prefix: String, _ access: String) -> Double? {
                ratios.first { ($0["name"] as? String)?.hasPrefix(prefix) == true && ($0["name"] as? String)?.contains(access) == true }
                    .flatMap { ($0["value"] as? NSNumber)?.doubleValue }
            }
            for access in ["read", "write"] {
                for p in ["port fault / kernel fault", "window fault / kernel fault", "port fault / floor"] {
                    let v = ratio(p, access)
                    t.expect(v.map { $0 > 0 && $0.isFinite } ?? false, "\(name): ratio '\(p)' (\(access)) present and positive: \(String(describing: v))")
                }
                let share = ratio("port share of a window fault", access)
                t.expect(share.map { $0 > 0 && $0 <= 1 } ?? false, "\(name): the port's share of a window fault (\(access)) in (0, 1]: \(String(describing: share))")
            }
            let rows = rep["rows"] as? [[String: Any]] ?? []
            t.expect(rows.count >= 10 && rows.allSatisfy { (($0["p50Ns"] as? NSNumber)?.doubleValue ?? 0) > 0 },
                     "\(name): every figure positive (\(rows.count) rows)")
            // Counters restored.
            t.expectEqual(rep["countersRestored"] as? Bool, true, "\(name): counters restored after the run")
            t.expectEqual((rep["invariantViolations"] as? [Any])?.count, 0, "\(name): the port's invariant violations after the run")
        }
    }
}
