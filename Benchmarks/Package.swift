// swift-tools-version: 6.1
// Benchmarks live in their own package so that `swift build`/`swift test` of the
// root never resolve or build package-benchmark. Run them with
//   cd Benchmarks && swift package benchmark
import PackageDescription

let package = Package(
    name: "daxmm-benchmarks",
    dependencies: [
        .package(name: "daxmm", path: "../"),
        // MallocInterposer only: the default RuntimeInterposer trait pulls a package
        // this machine's mirror lacks.
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.0", traits: ["MallocInterposer"]),
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
        .executableTarget(
            name: "DAXBenchmarks",
            dependencies: [
                .product(name: "DAXBase", package: "daxmm"),
                .product(name: "DAXCore", package: "daxmm"),
                .product(name: "MMCore", package: "daxmm"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/DAXBenchmarks",
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
