// GUP per page over device-dax ranges faulted (writable) once in make:
// get_user_pages(_fast), pin_user_pages(_fast), and pin FOLL_LONGTERM
// (a writable long-term pin of a file mapping leaves GUP-fast for the slow
// path, gup_fast_folio_allowed), over PTE-, PMD- and PUD-mapped ranges; one
// call of `n` pages per batch, counted per page; one page per call at PTE
// (the per-call cost); unpin_user_pages per page. The floor: what
// try_grab_folio must move (one atomic per small folio, refcount and
// _pincount once per large folio) and its reverse for the release.

import CDaxMM
import DAXBase
import DAXCore
import MMCore

/// A device-dax range mapped and faulted once, and a page array.
final class GupRig {
    let rig: DevDaxRig
    let pages: PageArray
    let n: Int

    /// `n` pages of a device of 4K, 2M or 1G folios (as many as `n` pages
    /// cover).
    init(_ l: Level, pages n: Int) throws {
        let perFolio = Int(l.align >> 12)
        rig = try DevDaxRig(align: l.align, folios: (n + perFolio - 1) / perFolio)
        rig.faults(rig.folios, write: true)
        self.n = n
        pages = .allocate(capacity: n)
        pages.initialize(repeating: nil, count: n)
    }

    deinit { pages.deallocate() }

    var mm: MM { rig.mm }

    /// One call of `n` pages (or `n` calls of one page).
    @inline(never)
    func grab(_ flags: GupFlags, pin: Bool, fast: Bool, perCall: Int) {
        let b = rig.base, p = pages, total = n
        rig.mm.withUnsafeRecord { mm in
            var i = 0
            while i < total {
                let a = b + UInt64(i) * UInt64(pageSize)
                let got: Int
                switch (pin, fast) {
                case (true, true): got = pinUserPagesFast(mm, a, perCall, flags, p + i)
                case (true, false): got = pinUserPages(mm, a, perCall, flags, p + i)
                case (false, true): got = getUserPagesFast(mm, a, perCall, flags, p + i)
                case (false, false): got = getUserPages(mm, a, perCall, flags, p + i)
                }
                if got != perCall { fatalError("GUP returned \(got) for \(perCall) pages") }
                i += perCall
            }
        }
    }

    @inline(never)
    func release(pin: Bool) {
        let p = pages, total = n
        rig.kernel.withUnsafeRecord { k in
            if pin { unpinUserPages(k, p, total) } else { putUserPages(k, p, total) }
        }
    }

    func floor() -> Floor {
        Floor(kernel: rig.kernel, firstPfn: rig.firstPfn, folios: rig.folios, stride: rig.align >> 12,
              order: rig.order, entries: 1, mmapLock: nil, owner: rig)
    }

    func counters() -> [Int64] { rig.counters() }
}

extension PortCases {
    enum GupKind: String, CaseIterable {
        case get, pin, longterm = "pin-longterm"

        var flags: GupFlags { self == .longterm ? [.write, .longterm] : [.write] }
        var pin: Bool { self != .get }
        func function(fast: Bool) -> String {
            switch (self, fast) {
            case (.get, false): "get_user_pages -> __get_user_pages -> follow_page_mask -> try_grab_folio"
            case (.get, true): "get_user_pages_fast -> gup_fast -> try_grab_folio_fast"
            case (.pin, false): "pin_user_pages -> __get_user_pages -> follow_page_mask -> try_grab_folio"
            case (.pin, true): "pin_user_pages_fast -> gup_fast -> try_grab_folio_fast"
            case (.longterm, false): "pin_user_pages FOLL_LONGTERM -> __gup_longterm_locked -> __get_user_pages"
            case (.longterm, true): "pin_user_pages_fast FOLL_LONGTERM -> gup_fast refuses (gup_fast_folio_allowed) -> __gup_longterm_locked"
            }
        }
    }

    static func gups(_ n: Int) -> [BenchCase] {
        var cs: [BenchCase] = []
        for l in Level.allCases {
            for k in GupKind.allCases {
                for fast in [false, true] { cs.append(gup(l, k, fast: fast, perCall: n, batch: n)) }
            }
        }
        for k in GupKind.allCases { cs.append(gup(.pte, k, fast: true, perCall: 1, batch: n)) }
        for l in Level.allCases { cs.append(unpin(l, batch: n)) }
        return cs
    }

    /// `n` pages per batch, `perCall` per call, over a range mapped at `l`.
    static func gup(_ l: Level, _ k: GupKind, fast: Bool, perCall: Int, batch n: Int) -> BenchCase {
        let calls = perCall == 1 ? ".1page" : ""
        let how = perCall == 1 ? "1 page per call" : "\(n) pages per call"
        return BenchCase(id: "gup.\(l.rawValue).\(k.rawValue).\(fast ? "fast" : "slow")\(calls)",
                         title: "GUP \(k.rawValue) per page, \(l.rawValue)-mapped, \(how) (\(k.function(fast: fast)))",
                         group: .gup, floorTarget: pinTarget) {
            let g = try GupRig(l, pages: n)
            let floor = g.floor()
            let inst = Instance(port: Batch(ops: n, run: { g.grab(k.flags, pin: k.pin, fast: fast, perCall: perCall) },
                                            restore: { g.release(pin: k.pin) }),
                                floor: floor.pinBatch(pages: n, get: !k.pin), unit: "page")
            inst.counters = { g.counters() }
            inst.effect = { g.counters() }
            return inst
        }
    }

    /// unpin_user_pages of `n` pages pinned (pin_user_pages_fast) in prepare.
    static func unpin(_ l: Level, batch n: Int) -> BenchCase {
        BenchCase(id: "gup.\(l.rawValue).unpin",
                  title: "unpin per page, \(l.rawValue)-mapped, \(n) pages per call (unpin_user_pages -> gup_put_folio)",
                  group: .gup, floorTarget: pinTarget) {
            let g = try GupRig(l, pages: n)
            let floor = g.floor()
            let inst = Instance(port: Batch(ops: n, prepare: { g.grab([.write], pin: true, fast: true, perCall: n) },
                                            run: { g.release(pin: true) }),
                                floor: floor.unpinBatch(pages: n), unit: "page")
            inst.counters = { g.counters() }
            inst.effect = { g.counters() }
            return inst
        }
    }
}
