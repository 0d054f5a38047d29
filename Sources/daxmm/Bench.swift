import ArgumentParser
import DAXBench
import DAXDevice
import Foundation

#if canImport(Glibc)
import Glibc
#endif

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "The port and the real kernel side by side on one device: fault and pin costs, the port's own matrix.",
        discussion: """
            fault: the kernel's first touch of each extent of a MAP_SHARED mapping of the device (the \
            emulated device: its memfd, shmem), the port's CPU-fault window end to end (SIGSEGV -> \
            handle_mm_fault -> host mapping -> retry) and the port's bare handle_mm_fault with its floor. \
            pin: io_uring buffer registration (FOLL_LONGTERM) and an O_DIRECT read (FOLL_PIN) into the \
            mapped device, and the port's pin_user_pages(FOLL_LONGTERM) of the same range with its floor. \
            port: the port's case matrix against its floors. all: fault, pin and port, and fio's dev-dax \
            engine on a real device when fio is installed (fio's write job overwrites the first 256 MiB \
            of the device; the other cases keep its data). Figures are p50/p99/max of HdrHistograms; \
            ratios are p50 over p50 within the run. Build with -c release for figures.
            """)

    @OptionGroup var deviceOptions: DeviceOptions

    @Argument(help: "What to measure: fault, pin, port (the port's own matrix, no device), device (fault + pin + fio) or all (device + port).")
    var what: String = "all"

    @Flag(help: "Print the report as JSON.")
    var json = false

    @Option(help: ArgumentHelp("Also draw the report as an SVG into this file.", valueName: "file.svg"))
    var plot: String?

    @Option(name: .long, help: "Only cases whose key contains this (fault.2M.read, pin.64M, port.<case id>, fio).")
    var filter: String?

    @Flag(name: .long, help: "Fewer samples per case.")
    var quick = false

    @Option(help: ArgumentHelp("Measure nothing: print (with --plot, draw) the report a --json run saved.", valueName: "report.json"))
    var from: String?

    func run() throws {
        let modes: Set<String>
        switch what {
        case "fault", "pin", "port": modes = [what]
        case "device": modes = ["fault", "pin"]
        case "all": modes = ["fault", "pin", "port"]
        default: throw failure("unknown bench mode '\(what)' (use fault, pin, port, device or all)")
        }
        // The plot file is opened before anything runs, so a bad path costs
        // nothing.
        var plotFile: FileHandle? = nil
        if let p = plot {
            guard p.hasSuffix(".svg") else { throw failure("--plot \(p): the file name must end in .svg") }
            guard FileManager.default.createFile(atPath: p, contents: nil), let h = FileHandle(forWritingAtPath: p) else {
                throw failure("--plot \(p): cannot create the file: \(String(cString: strerror(errno)))")
            }
            plotFile = h
        }
        do { try measureAndPrint(modes, plotFile) } catch {
            // A run that failed leaves no empty plot behind.
            if let p = plot { try? plotFile?.close(); unlink(p) }
            throw error
        }
    }

    private func measureAndPrint(_ modes: Set<String>, _ plotFile: FileHandle?) throws {
        var o = DeviceBenchOptions()
        o.fault = modes.contains("fault")
        o.pin = modes.contains("pin")
        o.port = modes.contains("port")
        o.fio = what == "all" || what == "device"
        o.quick = quick
        o.filter = filter
        o.commit = ProcessInfo.processInfo.environment["DAXMM_COMMIT"].flatMap { $0.isEmpty ? nil : $0 }
        o.optimized = BuildInfo.optimized
        o.timingNote = BuildInfo.optimized ? nil : "debug build: timings are not meaningful"
        o.progress = !json && isatty(2) != 0

        let report: BenchReport
        if let path = from {
            do { report = try BenchReport.decode(String(contentsOfFile: path, encoding: .utf8)) } catch {
                throw failure("--from \(path): not a daxmm bench JSON report: \(error.localizedDescription)")
            }
        } else if o.fault || o.pin || o.fio {
            let dev = try deviceOptions.open()
            if !BuildInfo.optimized && !json { note("debug build: timings are not meaningful") }
            do { report = try runDeviceBench(device: dev, options: o) } catch { throw failure(error.description) }
        } else {
            // port alone: the port's rigs need no device.
            if !BuildInfo.optimized && !json { note("debug build: timings are not meaningful") }
            do { report = try runDeviceBench(device: nil, options: o) } catch { throw failure(error.description) }
        }
        if json {
            print(try report.json())
        } else {
            print(report.table(), terminator: "")
        }
        if let h = plotFile {
            h.write(Data(Plot.svg(report).utf8))
            try? h.close()
            if !json { print("plot: \(plot!)") }
        }
        fflush(nil)
    }
}
