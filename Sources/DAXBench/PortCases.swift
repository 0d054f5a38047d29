// The port's hot paths as benchmark cases, each with its floor. The same
// cases run under `daxmm bench port` and under the package benchmarks in
// Benchmarks/ (which add the malloc counter).

import CDaxMM
import DAXBase
import DAXCore
import MMCore

/// The order of folios of an alignment.
func order(of align: UInt64) -> Int { align.trailingZeroBitCount - 12 }

public enum PortCases {
    /// Operations per batch of a hot path (the floor of the package's
    /// "at least 512 per iteration").
    public static let batch = 512

    /// The fault target: port / floor at most this.
    public static let faultTarget = 1.3
    public static let pinTarget = 1.3

    /// First faults through handle_mm_fault on device-dax at `align`, each on
    /// a folio never mapped before in the batch (zapped after each batch).
    public static func devdaxFirstFault(_ name: String, align: UInt64, write: Bool) -> BenchCase {
        let rw = write ? "write" : "read"
        return BenchCase(id: "fault.devdax.\(name).\(rw).first",
                         title: "\(name) fault, device-dax, \(rw), first (handle_mm_fault -> dev_dax_huge_fault)",
                         group: .fault, floorTarget: faultTarget) {
            let n = batch
            let rig = try DevDaxRig(align: align, folios: n)
            rig.touchAll()
            let floor = rig.floor(order: order(of: align), folios: n)
            return Instance(port: Batch(ops: n, run: { rig.faults(n, write: write) }, restore: { rig.zapAll() }),
                            floor: floor.faultBatch(n), unit: "fault")
        }
    }

    public static var all: [BenchCase] {
        [
            devdaxFirstFault("PTE", align: 4096, write: false),
            devdaxFirstFault("PTE", align: 4096, write: true),
            devdaxFirstFault("PMD", align: 2 << 20, write: false),
            devdaxFirstFault("PMD", align: 2 << 20, write: true),
        ]
    }
}
