// Write a pattern through a mapping and read it back: the short data check
// `daxmm check` runs on a device.
//
// Every 8-byte word gets a value derived from its device offset and a seed, so
// a page mapped at the wrong offset, a lost write or a stale page all show up
// as a mismatch naming the offset.

import DAXBase

public struct PatternCheckResult: Sendable {
    public var bytes: UInt64
    public var alignPages: Int
    /// First store to each align-sized page (the fault), in nanoseconds.
    public var firstTouchNanos: UInt64
    public var writeNanos: UInt64
    public var verifyNanos: UInt64
}

public struct PatternMismatch: Error, Sendable, CustomStringConvertible {
    public var device: String
    public var offset: UInt64
    public var expected: UInt64
    public var found: UInt64
    public var description: String {
        "\(device): data mismatch at device offset \(hex(offset)): expected \(hex(expected)), read \(hex(found))"
    }
}

public enum PatternCheck {
    @inline(__always)
    static func word(offset: UInt64, seed: UInt64) -> UInt64 {
        // The first splitmix64 output seeded with (offset ^ seed): cheap and
        // never constant across pages.
        var g = SplitMix64(seed: offset ^ seed)
        return g.next()
    }

    /// Runs the check over the first `bytes` of `mapping` (all of it if nil).
    public static func run(_ mapping: DeviceMapping, bytes: UInt64? = nil, seed: UInt64 = 0x6461_786d_6d00)
        throws(PatternMismatch) -> PatternCheckResult
    {
        let len = min(bytes ?? mapping.length, mapping.length)
        let step = UInt64(mapping.device.align.bytes)
        let words = Int(len / 8)
        let base = mapping.baseAddress.assumingMemoryBound(to: UInt64.self)
        let devOffset = mapping.offset

        // One store per align-sized page first: these are the faults.
        let t0 = monotonicNanos()
        var off: UInt64 = 0
        while off < len {
            base[Int(off / 8)] = 0
            off += step
        }
        let t1 = monotonicNanos()
        for i in 0..<words {
            base[i] = word(offset: devOffset + UInt64(i) * 8, seed: seed)
        }
        let t2 = monotonicNanos()
        try verify(mapping, bytes: len, seed: seed)
        let t3 = monotonicNanos()
        return PatternCheckResult(bytes: len, alignPages: Int((len + step - 1) / step),
                                  firstTouchNanos: t1 - t0, writeNanos: t2 - t1, verifyNanos: t3 - t2)
    }

    /// Reads back what `run` wrote; throws at the first word that differs.
    public static func verify(_ mapping: DeviceMapping, bytes: UInt64? = nil, seed: UInt64 = 0x6461_786d_6d00)
        throws(PatternMismatch)
    {
        let len = min(bytes ?? mapping.length, mapping.length)
        let base = mapping.baseAddress.assumingMemoryBound(to: UInt64.self)
        for i in 0..<Int(len / 8) {
            let offset = mapping.offset + UInt64(i) * 8
            let expect = word(offset: offset, seed: seed)
            let got = base[i]
            if got != expect {
                throw PatternMismatch(device: mapping.device.name, offset: offset, expected: expect, found: got)
            }
        }
    }
}
