// swift-tools-version: 6.1
import PackageDescription

// Release-only codegen flags for the modules that carry hot paths. unsafeFlags are
// accepted in a root package (and its path dependencies such as Benchmarks/).
let hotPathSwiftSettings: [SwiftSetting] = [
    .unsafeFlags(["-enforce-exclusivity=unchecked", "-cross-module-optimization"], .when(configuration: .release)),
]

// daxmm supports Linux on x86-64 only: the port's page tables use the x86-64
// entry layout, the shims use x86 atomics, and the devices are Linux's
// device-dax. CDaxMM refuses to compile elsewhere; CDaxSys is empty off Linux.
#if !os(Linux)
#warning("daxmm builds and runs on Linux x86-64 only")
#endif

let package = Package(
    name: "daxmm",
    products: [
        .library(name: "DAXBase", targets: ["DAXBase"]),
        .library(name: "MMCore", targets: ["MMCore"]),
        .library(name: "MMTestSupport", targets: ["MMTestSupport"]),
        .library(name: "DAXCore", targets: ["DAXCore"]),
        .library(name: "DAXDevice", targets: ["DAXDevice"]),
        .library(name: "DAXRuntime", targets: ["DAXRuntime"]),
        .library(name: "DAXChecks", targets: ["DAXChecks"]),
        .library(name: "DAXBench", targets: ["DAXBench"]),
        .executable(name: "daxmm", targets: ["daxmm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
    ],
    targets: [
        // C records of the mm port: struct dax_page, the mm records, atomics and
        // futex locks. Links nothing.
        .target(
            name: "CDaxMM",
            path: "CShims/CDaxMM"
        ),
        // The floors the port's hot paths are measured against (the
        // unavoidable atomics and stores of each path, on the port's record
        // types and locks) and the benchmark clock. Built optimised always.
        .target(
            name: "CDaxBench",
            dependencies: ["CDaxMM"],
            path: "CShims/CDaxBench",
            cSettings: [.unsafeFlags(["-O2"])]
        ),
        // The system side: libdaxctl/libndctl/libnuma/liburing headers in an order
        // that keeps the Swift importer happy, and constants it cannot see.
        .target(
            name: "CDaxSys",
            path: "CShims/CDaxSys",
            linkerSettings: [
                .linkedLibrary("daxctl"),
                .linkedLibrary("ndctl"),
                .linkedLibrary("numa"),
                .linkedLibrary("uring"),
            ]
        ),
        // The host side of the port's page tables over real memory: managed
        // windows, the SIGSEGV handler that serves their faults from the port,
        // and the arch hook that mirrors the port's entries onto host mappings
        // of the device. Links nothing.
        .target(
            name: "CDaxWindow",
            dependencies: ["CDaxMM"],
            path: "CShims/CDaxWindow"
        ),
        // What every module shares: the physical-range type, the hex
        // formatter, the monotonic clock, the seeded generator and the errno
        // names (errnoName). Pure Swift over the C library, no dependencies.
        .target(
            name: "DAXBase",
            swiftSettings: hotPathSwiftSettings
        ),
        // mm/ ported: memremap, page tables, inserts, rmap, zap, faults, GUP.
        // Knows nothing of devices.
        .target(
            name: "MMCore",
            dependencies: ["DAXBase", "CDaxMM"],
            swiftSettings: hotPathSwiftSettings
        ),
        // For tests and benchmarks of MMCore: a linear pfn-mapping "driver",
        // FaultRig and vmaFixture, waiting helpers. No Swift Testing, so the
        // benchmarks link it without the test runtime. A product only because
        // the Benchmarks/ package needs it: not an API for other packages.
        .target(
            name: "MMTestSupport",
            dependencies: ["DAXBase", "MMCore", "CDaxMM"],
            swiftSettings: hotPathSwiftSettings
        ),
        // The rigs' invariant checks, as Swift Testing expectations: for the
        // test targets only.
        .target(
            name: "MMTestChecks",
            dependencies: ["MMCore", "MMTestSupport"]
        ),
        // drivers/dax/device.c and fs/dax.c ported, on MMCore.
        .target(
            name: "DAXCore",
            dependencies: ["DAXBase", "MMCore", "CDaxMM"],
            swiftSettings: hotPathSwiftSettings
        ),
        // Devices: libdaxctl discovery, /dev/daxX.Y and the emulated memfd device.
        .target(
            name: "DAXDevice",
            dependencies: [
                "DAXBase",
                "CDaxSys",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: hotPathSwiftSettings
        ),
        // Where the port meets real memory: a device (real /dev/dax or the
        // emulated one) bound to a port Kernel in device-dax or fs-dax mode,
        // CPU faults in managed windows served by the port, and the
        // cross-checks against the real kernel.
        .target(
            name: "DAXRuntime",
            dependencies: ["DAXBase", "MMCore", "DAXCore", "DAXDevice", "CDaxMM", "CDaxWindow", "CDaxSys"],
            swiftSettings: hotPathSwiftSettings
        ),
        // The named checks `daxmm test` runs (suites mm, dax, fsdax, diff, vm):
        // each a value with its gates and a body, run one per child process by
        // the runner (timeouts, meson-style lines, TAP, a log), and by the
        // DAXChecksTests target in process.
        .target(
            name: "DAXChecks",
            dependencies: ["DAXBase", "MMCore", "MMTestSupport", "DAXCore", "DAXDevice", "DAXRuntime",
                           "CDaxMM", "CDaxWindow", "CDaxSys"]
        ),
        // The benchmark cases and their harness: the port's hot paths, each
        // with its floor, timed into HdrHistograms; used by `daxmm bench`
        // and by the package benchmarks under Benchmarks/.
        .target(
            name: "DAXBench",
            dependencies: ["DAXBase", "MMCore", "MMTestSupport", "DAXCore", "DAXDevice", "DAXRuntime",
                           "CDaxMM", "CDaxBench", "CDaxWindow", "CDaxSys",
                           .product(name: "Histogram", package: "hdrhistogram-swift")],
            swiftSettings: hotPathSwiftSettings
        ),
        .executableTarget(
            name: "daxmm",
            dependencies: [
                "DAXBase",
                "DAXDevice",
                "DAXRuntime",
                "DAXChecks",
                "DAXBench",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .testTarget(
            name: "DAXDeviceTests",
            dependencies: ["DAXBase", "DAXDevice", "CDaxSys"]
        ),
        .testTarget(
            name: "DAXCoreTests",
            dependencies: ["DAXBase", "DAXCore", "MMCore", "MMTestSupport", "MMTestChecks", "CDaxMM"]
        ),
        .testTarget(
            name: "DAXRuntimeTests",
            dependencies: ["DAXBase", "DAXRuntime", "DAXDevice", "DAXCore", "MMCore", "MMTestChecks", "CDaxMM", "CDaxWindow"]
        ),
        .testTarget(
            name: "DAXChecksTests",
            dependencies: ["DAXBase", "DAXChecks", "DAXDevice", "MMCore", "CDaxMM"]
        ),
        // Every port benchmark case runs a few batches of the port and of its
        // floor, and leaves the counters it touched as it found them.
        .testTarget(
            name: "DAXBenchTests",
            dependencies: ["DAXBench", "DAXCore", "DAXDevice", "DAXChecks", "MMCore", "MMTestSupport", "CDaxMM", "CDaxBench"]
        ),
        .testTarget(
            name: "MMCoreTests",
            dependencies: ["DAXBase", "MMCore", "MMTestSupport", "MMTestChecks", "CDaxMM"]
        ),
    ]
)
