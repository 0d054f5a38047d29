/// How this binary was compiled.
enum BuildInfo {
    /// False in a -Onone (debug) build: SwiftPM builds every module of the
    /// package in the same configuration, so the pattern check's loops in
    /// DAXDevice are unoptimised too, and a time they take measures the
    /// compiler's output, not the device.
    static var optimized: Bool { !_isDebugAssertConfiguration() }

    /// What a command appends to a line that reports a time: nothing in an
    /// optimised build.
    static var timingNote: String { optimized ? "" : " (debug build: timings are not meaningful)" }
}
