import ArgumentParser
import DAXDevice

#if canImport(Glibc)
import Glibc
#endif

@main
struct Daxmm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daxmm",
        abstract: "The Linux mm and DAX core, in userspace, over real device-dax namespaces.",
        discussion: """
            Devices: --device /dev/daxX.Y (a real device-dax instance), or \
            --device emulated[:size=1G,align=2M,base=0x...,node=N] (the embedded memfd-backed \
            device). Without --device, the first real device found is used, else the emulated one.
            """,
        subcommands: [Run.self, List.self, Check.self, Exercise.self, Test.self, Bench.self, VM.self])
}

/// Prints "daxmm: msg" to stderr.
func note(_ message: String) {
    fflush(nil)  // keep stdout and stderr in order on a terminal
    var line = "daxmm: " + message + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// Reports a failure on stderr and gives the exit code for it.
func failure(_ message: String) -> ExitCode {
    note(message)
    return ExitCode(1)
}

struct DeviceOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Device: /dev/daxX.Y, daxX.Y, or emulated[:size=S,align=4K|2M|1G,base=B,node=N].",
        valueName: "device"))
    var device: String?

    /// Opens the chosen device and says which one it is.
    func open() throws -> any DaxDevice {
        do {
            let spec = try device.map { s throws(DeviceError) in try DeviceSpec(parsing: s) } ?? DeviceSpec.defaultSpec()
            let dev = try spec.open()
            let why = device == nil ? (dev.kind == .emulated ? " (default: no real device-dax found)" : " (default: first device-dax found)") : ""
            note("using device \(dev.summary)\(why)")
            return dev
        } catch let e as DeviceError {
            throw failure(e.description)
        }
    }
}
