// Faults through MM.handleFault (mmap_lock for read + handle_mm_fault):
// device-dax at PTE, PMD and PUD, fs-dax at PTE and PMD; first faults
// (the entry is empty) and write upgrades of read-installed entries.

import CDaxMM
import DAXBase
import DAXCore
import MMCore

extension PortCases {
    static func faults(_ n: Int) -> [BenchCase] {
        var cs: [BenchCase] = []
        for l in Level.allCases {
            cs.append(devdaxFirstFault(l.rawValue, align: l.align, write: false, batch: n))
            cs.append(devdaxFirstFault(l.rawValue, align: l.align, write: true, batch: n))
            cs.append(devdaxMkwrite(l, batch: n))
        }
        // fs-dax: PTE and PMD only (dax_iomap_fault has no PUD order).
        for pmd in [false, true] {
            cs.append(fsdaxFirstFault(pmd: pmd, write: false, batch: n))
            cs.append(fsdaxFirstFault(pmd: pmd, write: true, batch: n))
            cs.append(fsdaxMkwrite(pmd: pmd, batch: n))
        }
        return cs
    }

    /// The device-dax rig of `n` faults at `align`: one mapping of `n`
    /// folios, or at PUD one folio mapped `n` times (512 distinct 1 GiB
    /// folios would need 512 GiB of records).
    static func devdaxRig(align: UInt64, faults n: Int) throws -> DevDaxRig {
        align == UInt64(pudSize) ? try DevDaxRig(align: align, folios: 1, mappings: n)
                                 : try DevDaxRig(align: align, folios: n)
    }

    static func devdaxTitle(_ name: String) -> String {
        switch name {
        case "PTE": "dev_dax_huge_fault -> __dev_dax_pte_fault -> vmf_insert_page_mkwrite"
        case "PMD": "dev_dax_huge_fault -> __dev_dax_pmd_fault -> vmf_insert_folio_pmd"
        default: "dev_dax_huge_fault -> __dev_dax_pud_fault -> vmf_insert_folio_pud"
        }
    }

    /// First faults through handle_mm_fault on device-dax at `align`, each on
    /// an empty entry (zapped after each batch).
    public static func devdaxFirstFault(_ name: String, align: UInt64, write: Bool, batch n: Int = batch) -> BenchCase {
        let rw = write ? "write" : "read"
        return BenchCase(id: "fault.devdax.\(name).\(rw).first",
                         title: "\(name) fault, device-dax, \(rw), first (handle_mm_fault -> \(devdaxTitle(name)))",
                         group: .fault, floorTarget: faultTarget) {
            let rig = try devdaxRig(align: align, faults: n)
            rig.touchAll()
            let floor = rig.floor(ops: n)
            return Instance(probing: rig, entries: n,
                            port: Batch(ops: n, run: { rig.faults(n, write: write) }, restore: { rig.zapAll() }),
                            floor: floor.faultBatch(n), unit: "fault")
        }
    }

    /// Write faults on entries a read fault installed (prepare), upgraded in
    /// place. A shared device-dax mapping has no write-notify (no
    /// page_mkwrite/pfn_mkwrite, no dirty accounting), so its vm_page_prot
    /// is writable and the read fault already installed a writable, clean
    /// entry: the write fault only marks it dirty and young
    /// (handle_pte_fault's pte_mkdirty + ptep_set_access_flags,
    /// huge_pmd_set_accessed, huge_pud_set_accessed).
    public static func devdaxMkwrite(_ l: Level, batch n: Int = batch) -> BenchCase {
        let path = l == .pte ? "handle_pte_fault -> pte_mkdirty, ptep_set_access_flags"
                             : "huge_\(l.rawValue.lowercased())_set_accessed -> \(l.rawValue.lowercased())_mkdirty, \(l.rawValue.lowercased())p_set_access_flags"
        return BenchCase(id: "fault.devdax.\(l.rawValue).write.mkwrite",
                         title: "\(l.rawValue) fault, device-dax, write on a read entry (handle_mm_fault -> \(path))",
                         group: .fault, floorTarget: faultTarget) {
            let rig = try devdaxRig(align: l.align, faults: n)
            rig.touchAll()
            let floor = rig.floor(ops: n)
            return Instance(probing: rig, entries: n,
                            port: Batch(ops: n, prepare: { rig.faults(n, write: false) },
                                  run: { rig.faults(n, write: true) }, restore: { rig.zapAll() }),
                            floor: floor.mkwriteBatch(n), unit: "fault")
        }
    }

    static func fsdaxTitle(_ pmd: Bool) -> String {
        pmd ? "dax_iomap_fault -> dax_iomap_pmd_fault -> dax_fault_iter -> vmf_insert_folio_pmd"
            : "dax_iomap_fault -> dax_iomap_pte_fault -> dax_fault_iter -> vmf_insert_page_mkwrite"
    }

    /// First faults on fs-dax over allocated blocks: the page-table entry is
    /// empty (zapped after each batch); the file's mapping entries stay, as
    /// after a munmap (the folios the blocks are keep their shape).
    public static func fsdaxFirstFault(pmd: Bool, write: Bool, batch n: Int = batch) -> BenchCase {
        let rw = write ? "write" : "read", name = pmd ? "PMD" : "PTE"
        return BenchCase(id: "fault.fsdax.\(name).\(rw).first",
                         title: "\(name) fault, fs-dax, \(rw), first (handle_mm_fault -> \(fsdaxTitle(pmd)))",
                         group: .fault, floorTarget: faultTarget) {
            let rig = try FsDaxRig(pmd: pmd, faults: n)
            rig.touchAll()
            let floor = rig.floor(ops: n)
            return Instance(probing: rig, entries: n,
                            port: Batch(ops: n, run: { rig.faults(n, write: write) }, restore: { rig.zapAll() }),
                            floor: floor.faultBatch(n), unit: "fault")
        }
    }

    /// Write faults on fs-dax entries a read fault installed: the PTE path's
    /// do_wp_page -> wp_pfn_shared -> pfn_mkwrite -> dax_iomap_fault, the PMD
    /// path's wp_huge_pmd -> huge_fault; the entry is upgraded in place.
    public static func fsdaxMkwrite(pmd: Bool, batch n: Int = batch) -> BenchCase {
        let name = pmd ? "PMD" : "PTE"
        return BenchCase(id: "fault.fsdax.\(name).write.mkwrite",
                         title: "\(name) fault, fs-dax, write on a read entry (handle_mm_fault -> \(pmd ? "wp_huge_pmd" : "wp_pfn_shared") -> \(fsdaxTitle(pmd)))",
                         group: .fault, floorTarget: faultTarget) {
            let rig = try FsDaxRig(pmd: pmd, faults: n)
            rig.touchAll()
            let floor = rig.floor(ops: n)
            return Instance(probing: rig, entries: n,
                            port: Batch(ops: n, prepare: { rig.faults(n, write: false) },
                                  run: { rig.faults(n, write: true) }, restore: { rig.zapAll() }),
                            floor: floor.mkwriteBatch(n), unit: "fault")
        }
    }
}
