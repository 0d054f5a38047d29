// The port's hot paths as benchmark cases, each with its floor. The same
// cases run under `daxmm bench port` and under the package benchmarks in
// Benchmarks/ (which add the malloc counter). The cases of each group live
// in FaultCases, ZapCases, GupCases and MemremapCases.
//
// The matrix:
//   fault    device-dax (dev_dax_huge_fault) at PTE, PMD and PUD; fs-dax
//            (dax_iomap_pte_fault, dax_iomap_pmd_fault) at PTE and PMD; each
//            read first, write first, and write on a read-installed entry
//            (mkwrite). There is no fs-dax PUD case: dax_iomap_fault handles
//            PTE and PMD orders only, a PUD fault on fs-dax falls back.
//   zap      zap_page_range per entry, device-dax at each level, fs-dax at
//            PTE and PMD; munmap per entry of a populated device-dax range.
//   gup      get_user_pages(_fast), pin_user_pages(_fast), pin FOLL_LONGTERM
//            per page over PTE-, PMD- and PUD-mapped ranges, one call per
//            batch; one page per call at PTE; unpin_user_pages per page.
//   memremap memremap_pages + memunmap_pages of a GENERIC pgmap at 1 GiB,
//            64 GiB and 1 TiB (timed against 1 GiB; resident memory added).

import CDaxMM
import DAXBase
import DAXCore
import MMCore

/// The order of folios of an alignment.
func order(of align: UInt64) -> Int { align.trailingZeroBitCount - 12 }

/// The three page-table levels of a mapping, named as in the case ids.
public enum Level: String, Sendable, CaseIterable {
    case pte = "PTE", pmd = "PMD", pud = "PUD"

    public var align: UInt64 {
        switch self {
        case .pte: UInt64(pageSize)
        case .pmd: UInt64(pmdSize)
        case .pud: UInt64(pudSize)
        }
    }
}

public enum PortCases {
    /// Operations per batch of a hot path (the floor of the package's
    /// "at least 512 per iteration").
    public static let batch = 512

    /// The fault target: port / floor at most this.
    public static let faultTarget = 1.3
    public static let pinTarget = 1.3

    /// Every port case with `batch` operations per hot-path batch.
    public static var all: [BenchCase] { all(batch: batch) }

    /// Every port case with `n` (>= 512) operations per hot-path batch (the
    /// package benchmarks use 1000, so that `.kilo` scales to one op).
    public static func all(batch n: Int) -> [BenchCase] {
        faults(n) + zaps(n) + gups(n) + memremaps + ThreadCases.all
    }
}

/// What the cases read off a rig: the counters a batch must leave as they
/// were, and the entries a batch changes.
protocol ProbedRig: AnyObject {
    func counters() -> [Int64]
    func entries(_ n: Int) -> [Int64]
}

extension DevDaxRig: ProbedRig {}
extension FsDaxRig: ProbedRig {}

extension Instance {
    /// An instance whose counters and effect are `rig`'s over `n` entries.
    convenience init(probing rig: some ProbedRig, entries n: Int, port: Batch, floor: Batch?, unit: String) {
        self.init(port: port, floor: floor, unit: unit)
        counters = { rig.counters() }
        effect = { rig.entries(n) }
    }
}
