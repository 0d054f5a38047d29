import CDaxMM
import DAXBase
import Foundation
import Testing
@testable import MMCore
import MMTestChecks
import MMTestSupport


/// Random sequences of fault / write-upgrade / zap / pin / unpin / get / put /
/// munmap / remap over GENERIC and FS_DAX pgmaps at 4K and 2M folio order,
/// with the invariants of MMCore/Invariants.swift checked after every step
/// against a ledger of the references the sequence holds.
///
/// Steps: DAXMM_PROPERTY_STEPS (default 100_000 over the four cases; set
/// 1_000_000 for the long run).
@Suite("Property: random mm sequences keep the invariants")
struct PropertyTests {
    static var totalSteps: Int {
        Int(ProcessInfo.processInfo.environment["DAXMM_PROPERTY_STEPS"] ?? "") ?? 100_000
    }

    struct Region {
        let map: LinearMapping
        var addr: UInt64?          // nil while unmapped
        let length: UInt64
        var faultSize: UInt64 { map.faultSize }
    }

    struct Held {
        let page: UnsafeMutablePointer<dax_page>
        let pin: Bool
        let headPfn: UInt64
        let weight: Int64
    }

    @Test("random sequences", arguments: [
        (MemoryType.generic, 0), (MemoryType.generic, 9), (MemoryType.fsDax, 0), (MemoryType.fsDax, 9),
    ] as [(MemoryType, Int)])
    func randomSequences(type: MemoryType, order: Int) throws {
        let steps = Self.totalSteps / 4
        let seed = UInt64(ProcessInfo.processInfo.environment["DAXMM_PROPERTY_SEED"] ?? "") ?? 0xdac5_0000 &+ UInt64(order) &* 31 &+ UInt64(type.rawValue)
        var rng = SplitMix64(seed: seed)
        let folioBytes = UInt64(4096) << UInt64(order)
        let nrFolios: UInt64 = order == 0 ? 64 : 4
        // Device-dax (char device) for GENERIC; a regular DAX file for FS_DAX.
        let rig = try FaultRig(type: type, order: order, bytes: max(folioBytes * nrFolios, 2 << 20), phys: 0x2_0000_0000)
        let (kernel, pgmap, map, mm) = (rig.kernel, rig.pgmap, rig.map, rig.mm)
        let k = kernel.ref
        let length = folioBytes * nrFolios
        var regions = [Region(map: map, addr: try mm.mmap(map.request(length: length)), length: length),
                       Region(map: map, addr: try mm.mmap(map.request(length: length)), length: length)]
        var held: [Held] = []
        var ledger: RefLedger = [:]
        let pages = PageArray.allocate(capacity: 64)
        defer { pages.deallocate() }
        let fsdax = type == .fsDax

        func record(_ n: Int, pin: Bool) {
            for i in 0..<n {
                let raw = pages[i]!
                let folio = Page(raw).folio
                let head = pageToPfn(k, folio.head)
                let w: Int64 = pin ? (folio.hasPincount ? 1 : 1024) : 1
                held.append(Held(page: raw, pin: pin, headPfn: head, weight: w))
                ledger[head, default: 0] += w
            }
        }

        for step in 0..<steps {
            let r = Int.random(in: 0..<regions.count, using: &rng)
            let region = regions[r]
            let op = Int.random(in: 0..<100, using: &rng)
            var what = ""
            if let base = region.addr {
                let off = UInt64.random(in: 0..<(region.length / 4096), using: &rng) * 4096
                let addr = base + off
                switch op {
                case 0..<30:
                    let write = Bool.random(using: &rng)
                    what = "fault \(write ? "write" : "read") \(hex(addr))"
                    let ret = mm.handleFault(addr, write: write)
                    #expect(ret & DAX_VM_FAULT_ERROR == 0, "step \(step): \(what) -> \(hex(UInt64(ret)))")
                case 30..<38:
                    // Write-protect then write: the upgrade path.
                    let fs = region.faultSize
                    let start = base + off / fs * fs
                    what = "write-upgrade \(hex(start))"
                    try mm.mprotect(start, fs, [.read])
                    try mm.mprotect(start, fs, [.read, .write])
                    #expect(mm.handleFault(start, write: true) & DAX_VM_FAULT_ERROR == 0, "step \(step): \(what)")
                case 38..<48:
                    let fs = region.faultSize
                    let start = base + off / fs * fs
                    what = "zap \(hex(start))"
                    mm.lockRead()
                    zapPageRange(mm.ref, start, start + fs)
                    mm.unlockRead()
                case 48..<64:
                    let n = Int.random(in: 1...min(16, Int((region.length - off) / 4096)), using: &rng)
                    let longterm = Bool.random(using: &rng)
                    let fast = Bool.random(using: &rng)
                    var flags: GupFlags = Bool.random(using: &rng) ? [.write] : []
                    if longterm { flags.insert(.longterm) }
                    what = "pin\(fast ? "_fast" : "") \(n) at \(hex(addr)) \(longterm ? "LONGTERM" : "")"
                    let before = fsdax ? (Page(pfnToPage(k, pgmap.ranges[0].startPfn).raw).folio.refCount) : 0
                    let got = fast ? pinUserPagesFast(mm.ref, addr, n, flags, pages) : pinUserPages(mm.ref, addr, n, flags, pages)
                    if fsdax && longterm {
                        #expect(got == Int(-EOPNOTSUPP), "step \(step): \(what) -> \(got)")
                        #expect(Page(pfnToPage(k, pgmap.ranges[0].startPfn).raw).folio.refCount == before)
                    } else {
                        #expect(got == n, "step \(step): \(what) -> \(got)")
                        if got > 0 { record(got, pin: true) }
                    }
                case 64..<70:
                    let n = Int.random(in: 1...min(8, Int((region.length - off) / 4096)), using: &rng)
                    what = "get_user_pages \(n) at \(hex(addr))"
                    let got = getUserPages(mm.ref, addr, n, [], pages)
                    #expect(got == n, "step \(step): \(what) -> \(got)")
                    if got > 0 { record(got, pin: false) }
                case 70..<88:
                    guard !held.isEmpty else { break }
                    let i = Int.random(in: 0..<held.count, using: &rng)
                    let h = held.remove(at: i)
                    what = h.pin ? "unpin" : "put"
                    if h.pin { unpinUserPage(k, Page(h.page)) } else { folioPut(k, Page(h.page).folio) }
                    ledger[h.headPfn, default: 0] -= h.weight
                case 88..<94:
                    what = "munmap region \(r)"
                    try mm.munmap(base, region.length)
                    regions[r].addr = nil
                default:
                    // Partial munmap at a refused (misaligned) boundary must change nothing.
                    if region.faultSize > 4096 {
                        what = "munmap misaligned"
                        #expect(throws: MMError.self) { try mm.munmap(base + 4096, 4096) }
                    }
                }
            } else {
                what = "remap region \(r)"
                regions[r].addr = try mm.mmap(region.map.request(length: region.length))
            }
            guard propertyStepHolds(kernel, mms: [mm], pgmaps: [pgmap], ledger: ledger, seed: seed, step: step, after: what)
            else { return }
        }
        // Release everything: back to idle.
        for h in held {
            if h.pin { unpinUserPage(k, Page(h.page)) } else { folioPut(k, Page(h.page).folio) }
        }
        for reg in regions { if let a = reg.addr { try mm.munmap(a, reg.length) } }
        rig.check([:])
        var pfn = pgmap.ranges[0].startPfn
        while pfn < pgmap.ranges[0].endPfn {
            #expect(pfnToPage(k, pfn).folio.refCount == type.idleRefcount)
            pfn += UInt64(1 << order)
        }
    }
}
