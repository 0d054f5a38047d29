// Zap per entry: zap_page_range over entries faulted in prepare, at each
// level (device-dax PTE/PMD/PUD, fs-dax PTE/PMD), and munmap of a
// populated device-dax range (mmap and faults in prepare), per entry.

import CDaxMM
import DAXBase
import DAXCore
import MMCore

extension PortCases {
    static func zaps(_ n: Int) -> [BenchCase] {
        Level.allCases.map { devdaxZap($0, batch: n) }
            + [false, true].map { fsdaxZap(pmd: $0, batch: n) }
            + Level.allCases.map { devdaxMunmap($0, batch: n) }
    }

    static func zapPath(_ l: Level) -> String {
        switch l {
        case .pte: "zap_pte_range -> ptep_get_and_clear_full, folio_remove_rmap_ptes, tlb batch put"
        case .pmd: "zap_huge_pmd -> pmdp_huge_get_and_clear_full, folio_remove_rmap_pmd, tlb batch put"
        case .pud: "zap_huge_pud -> pudp_huge_get_and_clear_full, folio_remove_rmap_pud, tlb batch put"
        }
    }

    public static func devdaxZap(_ l: Level, batch n: Int = batch) -> BenchCase {
        BenchCase(id: "zap.devdax.\(l.rawValue)",
                  title: "\(l.rawValue) zap per entry, device-dax (zap_page_range -> \(zapPath(l)))",
                  group: .zap, floorTarget: faultTarget) {
            let rig = try devdaxRig(align: l.align, faults: n)
            rig.touchAll()
            let floor = rig.floor(ops: n, withMmapLock: false)
            return Instance(probing: rig, entries: n,
                            port: Batch(ops: n, prepare: { rig.faults(n, write: true) }, run: { rig.zap(n) }),
                            floor: floor.zapBatch(n), unit: "entry")
        }
    }

    public static func fsdaxZap(pmd: Bool, batch n: Int = batch) -> BenchCase {
        let l: Level = pmd ? .pmd : .pte
        return BenchCase(id: "zap.fsdax.\(l.rawValue)",
                         title: "\(l.rawValue) zap per entry, fs-dax (zap_page_range -> \(zapPath(l)))",
                         group: .zap, floorTarget: faultTarget) {
            let rig = try FsDaxRig(pmd: pmd, faults: n)
            rig.touchAll()
            let floor = rig.floor(ops: n)
            return Instance(probing: rig, entries: n,
                            port: Batch(ops: n, prepare: { rig.faults(n, write: true) }, run: { rig.zapAll() }),
                            floor: floor.zapBatch(n), unit: "entry")
        }
    }

    /// munmap of a range whose `n` entries a fault populated: the VMA(s)
    /// go, every entry is zapped and the page tables freed; at PUD the
    /// range is `n` back-to-back mappings of one 1 GiB folio.
    public static func devdaxMunmap(_ l: Level, batch n: Int = batch) -> BenchCase {
        BenchCase(id: "munmap.devdax.\(l.rawValue)",
                  title: "\(l.rawValue) munmap per entry, device-dax (do_vmi_munmap -> unmap_region -> \(zapPath(l)), free_pgtables)",
                  group: .munmap, floorTarget: nil) {
            let rig = try devdaxRig(align: l.align, faults: n)
            rig.touchAll()
            rig.unmap()
            let floor = rig.floor(ops: n, withMmapLock: false)
            return Instance(probing: rig, entries: n,
                            port: Batch(ops: n, prepare: { try? rig.map(); rig.faults(n, write: true) },
                                  run: { rig.unmap() }),
                            floor: floor.zapBatch(n), unit: "entry")
        }
    }
}
