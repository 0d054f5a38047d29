// The floors move exactly the counters they claim, on the rigs' own folio
// records, and their inverses put them back; and the rigs fault at the
// level their cases name.

import CDaxMM
import DAXBench
import MMCore
import Testing

@Suite("DAXBench floors and rigs")
struct FloorTests {
    func head(_ rig: DevDaxRig, _ j: Int) -> UnsafeMutablePointer<dax_page> {
        rig.kernel.withUnsafeRecord { pfnToPage($0, rig.firstPfn + UInt64(j) * (rig.align >> 12)).raw }
    }

    @Test("dax_floor_fault on small folios: +1 refcount and +1 _mapcount per fault (folio_add_file_rmap_pte), undone by dax_floor_unfault")
    func faultFloorSmall() throws {
        let rig = try DevDaxRig(align: 4096, folios: 4)
        rig.touchAll()
        let f = rig.floor(order: 0, folios: 4)   // 8 faults over 4 folios: 2 each
        let r0 = (0..<4).map { head(rig, $0).pointee.refcount }
        let m0 = (0..<4).map { head(rig, $0).pointee.mapcount }
        f.fault(8)
        for j in 0..<4 {
            #expect(head(rig, j).pointee.refcount == r0[j] + 2)
            #expect(head(rig, j).pointee.mapcount == m0[j] + 2)
        }
        f.unfault(8)
        #expect((0..<4).map { head(rig, $0).pointee.refcount } == r0)
        #expect((0..<4).map { head(rig, $0).pointee.mapcount } == m0)
    }

    @Test("dax_floor_fault on PMD folios: +1 refcount, +1 _entire_mapcount and +1 _large_mapcount (folio_add_file_rmap_pmd); zap reverses it")
    func faultFloorLarge() throws {
        let rig = try DevDaxRig(align: 2 << 20, folios: 2)
        rig.touchAll()
        let f = rig.floor(ops: 2)
        let p = head(rig, 1)
        let (r, e, l, m) = (p.pointee.refcount, p[1].entire_mapcount, p[1].large_mapcount, p.pointee.mapcount)
        f.fault(2)
        #expect(p.pointee.refcount == r + 1)
        #expect(p[1].entire_mapcount == e + 1)
        #expect(p[1].large_mapcount == l + 1)
        #expect(p.pointee.mapcount == m, "a PMD mapping leaves the head's own _mapcount alone")
        f.zap(2)
        #expect(p.pointee.refcount == r && p[1].entire_mapcount == e && p[1].large_mapcount == l)
    }

    @Test("dax_floor_pin: GUP_PIN_COUNTING_BIAS per small folio, refcount and _pincount by the pages on a large folio (try_grab_folio); dax_floor_unpin reverses")
    func pinFloor() throws {
        let small = try DevDaxRig(align: 4096, folios: 3)
        small.touchAll()
        let fs = small.floor(ops: 3, withMmapLock: false)
        let r0 = head(small, 2).pointee.refcount
        fs.pin(pages: 3)
        #expect(head(small, 2).pointee.refcount == r0 + Int32(DAX_GUP_PIN_COUNTING_BIAS))
        fs.unpin(pages: 3)
        fs.pin(pages: 3, get: true)
        #expect(head(small, 2).pointee.refcount == r0 + 1)
        fs.unpin(pages: 3, get: true)
        #expect(head(small, 2).pointee.refcount == r0)

        let large = try DevDaxRig(align: 2 << 20, folios: 2)
        large.touchAll()
        let fl = large.floor(ops: 2, withMmapLock: false)
        let p0 = head(large, 0), p1 = head(large, 1)
        let (a, b) = (p0.pointee.refcount, p1.pointee.refcount)
        fl.pin(pages: 600)   // 512 pages of folio 0, 88 of folio 1
        #expect(p0.pointee.refcount == a + 512 && p0[1].pincount == 512)
        #expect(p1.pointee.refcount == b + 88 && p1[1].pincount == 88)
        fl.unpin(pages: 600)
        #expect(p0.pointee.refcount == a && p0[1].pincount == 0 && p1.pointee.refcount == b && p1[1].pincount == 0)
    }

    @Test("the PUD rig maps one 1 GiB folio through every mapping: each PUD fault is +1 refcount and +1 _entire_mapcount (vmf_insert_folio_pud)")
    func pudRig() throws {
        let rig = try DevDaxRig(align: 1 << 30, folios: 1, mappings: 4)
        rig.touchAll()
        let p = head(rig, 0)
        let (r, e) = (p.pointee.refcount, p[1].entire_mapcount)
        rig.faults(4, write: false)
        #expect(p.pointee.refcount == r + 4)
        #expect(p[1].entire_mapcount == e + 4)
        rig.mm.withUnsafeRecord { mm in
            for i in 0..<4 {
                let w = walk(mm, rig.base + UInt64(i) << 30)
                #expect(w.pmd == nil && w.pud.map { entryLeaf(dax_load_u64($0)) } == true, "mapping \(i) has a PUD leaf")
            }
        }
        rig.zapAll()
        #expect(p.pointee.refcount == r && p[1].entire_mapcount == e)
    }

    @Test("the fs-dax rigs fault at their level: PTE entries at file page 1 (colour refused by dax_iomap_pmd_fault), PMD leaves at file page 0")
    func fsdaxLevels() throws {
        for pmd in [false, true] {
            let rig = try FsDaxRig(pmd: pmd, faults: 4)
            rig.faults(4, write: true)
            rig.mm.withUnsafeRecord { mm in
                for i in 0..<4 {
                    let w = walk(mm, rig.base + UInt64(i) * rig.step)
                    if pmd {
                        #expect(w.pte == nil && w.pmd.map { entryLeaf(dax_load_u64($0)) } == true)
                    } else {
                        #expect(w.pte.map { entryPresent(dax_load_u64($0)) } == true)
                    }
                }
            }
            #expect(rig.mm.rssFilePages == 4 << (pmd ? 9 : 0))
            rig.zapAll()
        }
    }
}
