// swift-tools-version: 6.1
// Benchmarks live in their own package so that `swift build`/`swift test` of the
// root never resolve or build package-benchmark. Run them with
//   cd Benchmarks && swift package benchmark --scale
// (the port's matrix alone: --target PortBenchmarks). A fault, zap or GUP batch
// that allocates fails the run (non-zero exit).
import PackageDescription

let package = Package(
    name: "daxmm-benchmarks",
    dependencies: [
        .package(name: "daxmm", path: "../"),
        // MallocInterposer only: the default RuntimeInterposer trait pulls a package
        // this machine's mirror lacks.
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.0", traits: ["MallocInterposer"]),
        // The interposer's counters, read around each hot-path batch.
        .package(url: "https://github.com/ordo-one/malloc-interposer.git", from: "1.6.0"),
    ],
    targets: [
        .executableTarget(
            name: "PageBenchmarks",
            dependencies: [
                .product(name: "MMCore", package: "daxmm"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/PageBenchmarks",
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // Every case of DAXBench's PortCases.all, with its floor ratio.
        .executableTarget(
            name: "PortBenchmarks",
            dependencies: [
                .product(name: "DAXBase", package: "daxmm"),
                .product(name: "DAXBench", package: "daxmm"),
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "MallocInterposerSwift", package: "malloc-interposer"),
            ],
            path: "Benchmarks/PortBenchmarks",
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "MMBenchmarks",
            dependencies: [
                .product(name: "DAXBase", package: "daxmm"),
                .product(name: "MMCore", package: "daxmm"),
                .product(name: "MMTestSupport", package: "daxmm"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/MMBenchmarks",
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
