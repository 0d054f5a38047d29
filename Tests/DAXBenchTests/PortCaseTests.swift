// Every case of PortCases.all, in a debug build with a few batches: it
// builds, its port and floor batches run, the port's run does what the case
// says (entries appear, upgrade or go; pins are taken or dropped), and
// afterwards every folio and mm counter it touched (refcount, mapcounts,
// pincount, file rss) is back where it was (both sides restore).

import DAXBench
import Testing

@Suite("DAXBench port cases")
struct PortCaseTests {
    static let ids = PortCases.all.map(\.id)

    @Test("every port case runs two port and two floor batches and restores its counters", arguments: ids)
    func caseRestores(_ id: String) throws {
        let c = try #require(PortCases.all.first { $0.id == id })
        let inst = try c.make()
        if c.group != .memremap { #expect(inst.port.ops >= 512, "\(id): \(inst.port.ops) operations per batch") }
        let before = inst.counters?() ?? []
        for _ in 0..<2 {
            inst.port.prepare()
            let e0 = inst.effect?()
            inst.port.run()
            let e1 = inst.effect?()
            if let e0, let e1 {
                #expect(e0 != e1, "\(id): the port's run changed nothing it should (\(e0))")
            }
            inst.port.restore()
            #expect((inst.counters?() ?? []) == before, "\(id): counters after a port batch")
        }
        if let f = inst.floor {
            for _ in 0..<2 {
                f.prepare(); f.run(); f.restore()
                #expect((inst.counters?() ?? []) == before, "\(id): counters after a floor batch")
            }
        }
        if let r = inst.reference {
            r.batch.prepare(); r.batch.run(); r.batch.restore()
            #expect((inst.counters?() ?? []) == before, "\(id): counters after a reference batch")
        }
    }

    @Test("the port case ids are unique, every hot path has a floor target and the thread cases a minimum speedup")
    func idsAndBatches() throws {
        #expect(Set(Self.ids).count == Self.ids.count)
        for c in PortCases.all where c.group != .memremap && c.group != .threads {
            #expect(c.floorTarget != nil || c.group == .munmap, "\(c.id) has no floor target")
        }
        for c in PortCases.all where c.group == .threads {
            #expect(c.minSpeedup == ThreadCases.twoThreadSpeedup, "\(c.id) has no minimum speedup")
        }
    }
}
