import CDaxMM
import DAXBase
import Foundation
import Testing
@testable import MMCore

/// Random sequences over anonymous memory: read and write faults (PTEs, and
/// THPs in a MADV_HUGEPAGE region), partial munmaps that split THPs,
/// mremap moves, mprotect, MADV_DONTNEED, make_device_exclusive (released
/// at once, so later CPU faults and GUPs restore the entries), pins and
/// unpins, with every invariant of MMCore/Invariants.swift checked after
/// each step over the whole kernel (rule 1 as an equality against the
/// ledger of pins the sequence holds, the global anon counters included).
///
/// Steps: DAXMM_PROPERTY_STEPS (default 1500); seed: DAXMM_PROPERTY_SEED.
@Suite("Property: random anon sequences keep the invariants")
struct AnonPropertyTests {
    struct Slot {
        var addr: UInt64?
        let length: UInt64
        let hugepage: Bool
    }

    struct Held {
        let page: UnsafeMutablePointer<dax_page>
        let headPfn: UInt64
        let weight: Int64
    }

    @Test("random anon sequences: faults, THPs, munmap, mremap, mprotect, MADV_DONTNEED, make_device_exclusive, pins")
    func randomAnonSequences() throws {
        let env = ProcessInfo.processInfo.environment
        let steps = Int(env["DAXMM_PROPERTY_STEPS"] ?? "") ?? 1500
        let seed = UInt64(env["DAXMM_PROPERTY_SEED"] ?? "") ?? 0xa_0de_5eed
        var rng = SplitMix64(seed: seed)
        let kernel = try makeKernel()
        let k = kernel.ref
        let mm = try MM(kernel: kernel)
        func map(_ s: Slot) throws -> UInt64 {
            var req = MMapRequest(length: s.length)
            req.shared = false
            req.alignment = UInt64(pmdSize)
            let a = try mm.mmap(req)
            if s.hugepage { try mm.madvise(a, s.length, .hugepage) }
            return a
        }
        var slots = [Slot(addr: nil, length: 4 * MiB, hugepage: true), Slot(addr: nil, length: 256 * KiB, hugepage: false)]
        for i in slots.indices { slots[i].addr = try map(slots[i]) }
        var moved: [(UInt64, UInt64)] = []   // ranges mremap moved out of the slots
        var held: [Held] = []
        var ledger: RefLedger = [:]
        let pages = PageArray.allocate(capacity: 16)
        defer { pages.deallocate() }

        func vmaFlags(_ a: UInt64) -> UInt64? {
            mm.lockRead(); defer { mm.unlockRead() }
            return mm.vmaList().first { $0.pointee.vm_start <= a && a < $0.pointee.vm_end }.map { $0.pointee.vm_flags }
        }
        func presentReadOnly(_ a: UInt64) -> Bool {
            let pmd = AnonFaultTests.pmd(mm, a)
            let e = entryLeaf(pmd) ? pmd : EntryKit.pte(mm, a)
            return entryPresent(e) && !entryWrite(e)
        }

        // What the sequence did, so a degenerate one fails.
        var exclusives = 0, pinned = 0, thps = 0, moves = 0, wpFaults = 0
        for step in 0..<steps {
            let s = Int.random(in: 0..<slots.count, using: &rng)
            let slot = slots[s]
            let op = Int.random(in: 0..<100, using: &rng)
            var what = ""
            guard let base = slot.addr else {
                what = "remap slot \(s)"
                slots[s].addr = try map(slot)
                if !stepHolds(kernel, mm, ledger, seed, step, what) { return }
                continue
            }
            let npages = slot.length / 4096
            let off = UInt64.random(in: 0..<npages, using: &rng) * 4096
            let addr = base + off
            let span = UInt64.random(in: 1...min(64, npages - off / 4096), using: &rng) * 4096
            switch op {
            case 0..<30:
                let write = Bool.random(using: &rng)
                what = "fault \(write ? "write" : "read") \(hex(addr))"
                let flags = vmaFlags(addr)
                let readOnly = write && presentReadOnly(addr)
                let ret = mm.handleFault(addr, write: write)
                if flags == nil || (write && flags! & DAX_VM_WRITE == 0) {
                    #expect(ret == DAX_VM_FAULT_SIGSEGV, "step \(step): \(what) -> \(hex(UInt64(ret)))")
                } else if readOnly {
                    // A write to a read-only entry of a writable private
                    // VMA: do_wp_page (or do_huge_pmd_wp_page) copies or
                    // reuses the page, and the entry is writable after it.
                    wpFaults += 1
                    #expect(ret == 0, "step \(step): \(what) -> \(hex(UInt64(ret)))")
                    let pmd = AnonFaultTests.pmd(mm, addr)
                    let e = entryLeaf(pmd) ? pmd : EntryKit.pte(mm, addr)
                    #expect(entryPresent(e) && entryWrite(e), "step \(step): \(what): no writable entry after it: \(hex(e))")
                } else {
                    #expect(ret & DAX_VM_FAULT_ERROR == 0, "step \(step): \(what) -> \(hex(UInt64(ret)))")
                }
                let pmd = AnonFaultTests.pmd(mm, addr)
                if entryLeaf(pmd) && !isHugeZeroPfn(k, entryPfn(pmd)) { thps += 1 }
            case 30..<38:
                what = "munmap \(hex(addr)) +\(hex(span))"
                try mm.munmap(addr, span)
            case 38..<44:
                what = "mremap \(hex(addr)) +\(hex(span))"
                guard vmaFlags(addr) != nil, vmaFlags(addr + span - 1) != nil else { break }
                // Fully inside mappings (no hole): grow by a page, moving
                // when the next page is in use.
                var covered = true
                var p = addr
                while p < addr + span { if vmaFlags(p) == nil { covered = false; break }; p += 4096 }
                guard covered else { break }
                if let b = try? mm.mremap(addr, oldLength: span, newLength: span + 4096, mayMove: true) {
                    moves += 1
                    if b != addr { moved.append((b, span + 4096)) }
                    else if !(addr + span + 4096 <= base + slot.length) { moved.append((addr + span, 4096)) }
                }
            case 44..<52:
                let prot: Prot = Bool.random(using: &rng) ? [.read] : [.read, .write]
                what = "mprotect \(hex(addr)) +\(hex(span)) \(prot)"
                var covered = true
                var p = addr
                while p < addr + span { if vmaFlags(p) == nil { covered = false; break }; p += 4096 }
                if covered { try mm.mprotect(addr, span, prot) }
            case 52..<62:
                what = "madvise DONTNEED \(hex(addr)) +\(hex(span))"
                var covered = true
                var p = addr
                while p < addr + span { if vmaFlags(p) == nil { covered = false; break }; p += 4096 }
                if covered { try mm.madvise(addr, span, .dontNeed) }
            case 62..<74:
                what = "make_device_exclusive \(hex(addr))"
                if let p = try? mm.makeDeviceExclusive(addr, owner: UnsafeMutableRawPointer(bitPattern: 0x5eed)) {
                    #expect(p.folio.isAnon && p.folio.isLocked)
                    mm.releaseDeviceExclusive(p)
                    exclusives += 1
                    #expect(isDeviceExclusiveEntry(pteToSwpEntry(EntryKit.pte(mm, addr))), "step \(step): \(what)")
                }
            case 74..<86:
                let n = Int.random(in: 1...min(16, Int(span / 4096)), using: &rng)
                let write = Bool.random(using: &rng)
                what = "pin \(n) at \(hex(addr))\(write ? " write" : "")"
                let got = pinUserPages(mm.ref, addr, n, write ? [.write] : [], pages)
                pinned += max(got, 0)
                for i in 0..<max(got, 0) {
                    let folio = Page(pages[i]!).folio
                    let w: Int64 = folio.hasPincount ? 1 : Int64(DAX_GUP_PIN_COUNTING_BIAS)
                    let head = pageToPfn(k, folio.head)
                    held.append(Held(page: pages[i]!, headPfn: head, weight: isZeroPfn(head) ? 0 : w))
                    ledger[head, default: 0] += isZeroPfn(head) ? 0 : w
                }
            default:
                guard !held.isEmpty else { break }
                let h = held.remove(at: Int.random(in: 0..<held.count, using: &rng))
                what = "unpin \(hex(h.headPfn))"
                unpinUserPage(k, Page(h.page))
                ledger[h.headPfn, default: 0] -= h.weight
            }
            if !stepHolds(kernel, mm, ledger, seed, step, what) { return }
            if Int.random(in: 0..<(slot.hugepage ? 40 : 200), using: &rng) == 0 {
                // Now and then a slot goes away whole, moved ranges too.
                try mm.munmap(base, slot.length)
                slots[s].addr = nil
                for (b, l) in moved { try mm.munmap(b, l) }
                moved.removeAll()
                if !stepHolds(kernel, mm, ledger, seed, step, "munmap slot \(s)") { return }
            }
        }
        if steps >= 1000 {
            #expect(exclusives > 20 && pinned > 20 && thps > 5 && moves > 5 && wpFaults > 5,
                    "exclusives \(exclusives) pins \(pinned) THP faults \(thps) mremaps \(moves) write faults on read-only entries \(wpFaults)")
        }
        for h in held { unpinUserPage(k, Page(h.page)) }
        for slot in slots { if let a = slot.addr { try mm.munmap(a, slot.length) } }
        for (b, l) in moved { try mm.munmap(b, l) }
        _ = stepHolds(kernel, mm, [:], seed, steps, "teardown")
        #expect(mm.rssAnonPages == 0 && kernel.stat(DAX_NR_ANON_MAPPED) == 0 && kernel.stat(DAX_NR_ANON_THPS) == 0)
        #expect(kernel.ramStats!.allocatedPages == 0, "every anon folio went back to the allocator")
    }

    /// The whole-kernel check after a step; records one issue naming the
    /// seed, the step and the operation, and returns false to stop.
    func stepHolds(_ kernel: Kernel, _ mm: MM, _ ledger: RefLedger, _ seed: UInt64, _ step: Int, _ what: String) -> Bool {
        let v = invariants(mms: [mm], pgmaps: [], ledger: ledger, complete: true)
        if !v.isEmpty {
            Issue.record("seed \(seed) step \(step) after \(what):\n\(v.prefix(3).map(\.description).joined(separator: "\n"))")
            return false
        }
        let reports = kernel.drainReports()
        if !reports.isEmpty {
            Issue.record("seed \(seed) step \(step) after \(what): unexpected report\n\(reports[0])")
            return false
        }
        return true
    }
}
