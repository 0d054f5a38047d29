// swift-tools-version: 6.1
import PackageDescription

// Release-only codegen flags for the modules that carry hot paths. unsafeFlags are
// accepted in a root package (and its path dependencies such as Benchmarks/).
let hotPathSwiftSettings: [SwiftSetting] = [
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "daxmm",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "MMCore", targets: ["MMCore"]),
        .library(name: "MMTestSupport", targets: ["MMTestSupport"]),
        .library(name: "DAXCore", targets: ["DAXCore"]),
        .library(name: "DAXDevice", targets: ["DAXDevice"]),
        .executable(name: "daxmm", targets: ["daxmm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.0"),
    ],
    targets: [
        // C shim: struct dax_page, atomics on it, and the libdaxctl/libndctl/libnuma/
        // liburing headers in an order that keeps the Swift importer happy.
        .target(
            name: "CDax",
            path: "CShims/CDax",
            linkerSettings: [
                .linkedLibrary("daxctl"),
                .linkedLibrary("ndctl"),
                .linkedLibrary("numa"),
                .linkedLibrary("uring"),
            ]
        ),
        // mm/ ported: memremap, page tables, inserts, rmap, zap, faults, GUP.
        // Knows nothing of devices.
        .target(
            name: "MMCore",
            dependencies: ["CDax"],
            swiftSettings: hotPathSwiftSettings
        ),
        // A linear pfn-mapping "driver" for tests and benchmarks of MMCore.
        .target(
            name: "MMTestSupport",
            dependencies: ["MMCore", "CDax"],
            swiftSettings: hotPathSwiftSettings
        ),
        // drivers/dax/device.c and fs/dax.c ported, on MMCore.
        .target(
            name: "DAXCore",
            dependencies: ["MMCore", "CDax"],
            swiftSettings: hotPathSwiftSettings
        ),
        // Devices: libdaxctl discovery, /dev/daxX.Y and the emulated memfd device.
        .target(
            name: "DAXDevice",
            dependencies: [
                "CDax",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: hotPathSwiftSettings
        ),
        .executableTarget(
            name: "daxmm",
            dependencies: [
                "DAXDevice",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .testTarget(
            name: "DAXDeviceTests",
            dependencies: ["DAXDevice", "CDax"]
        ),
        .testTarget(
            name: "DAXCoreTests",
            dependencies: ["DAXCore", "MMCore", "MMTestSupport", "CDax"]
        ),
        .testTarget(
            name: "MMCoreTests",
            dependencies: ["MMCore", "MMTestSupport", "CDax"]
        ),
    ]
)
