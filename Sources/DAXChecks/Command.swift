import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What a program run by a test printed and how it ended.
public struct CommandResult: Sendable, CustomStringConvertible {
    public var argv: [String]
    public var status: Int32
    /// Killed by this signal (status is then 128 + signal).
    public var signal: Int32?
    public var stdout: String
    public var stderr: String
    public var timedOut: Bool

    public var succeeded: Bool { status == 0 && signal == nil && !timedOut }

    public var description: String {
        let how = timedOut ? "timed out" : signal.map { "killed by signal \($0)" } ?? "exit \(status)"
        let err = stderr.split(separator: "\n").last.map { ": \($0)" } ?? ""
        return "`\(argv.joined(separator: " "))` \(how)\(err)"
    }
}

public struct CommandError: Error, CustomStringConvertible {
    public var result: CommandResult
    public var description: String { result.description }
}

public enum Command {
    /// Runs `argv` (argv[0] looked up on PATH unless absolute), stdin from
    /// /dev/null or `input`, with a timeout after which it is killed.
    public static func run(_ argv: [String], input: String? = nil, environment: [String: String]? = nil,
                           timeout: Double = 300) throws -> CommandResult {
        let p = Process()
        if argv[0].hasPrefix("/") {
            p.executableURL = URL(fileURLWithPath: argv[0])
            p.arguments = Array(argv.dropFirst())
        } else {
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = argv
        }
        if let environment {
            p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let outURL = tempFile("out"), errURL = tempFile("err")
        defer { unlink(outURL.path); unlink(errURL.path) }
        p.standardOutput = try FileHandle(forWritingTo: outURL)
        p.standardError = try FileHandle(forWritingTo: errURL)
        let inPipe = Pipe()
        p.standardInput = input == nil ? FileHandle(forReadingAtPath: "/dev/null") : inPipe
        try p.run()
        if let input {
            inPipe.fileHandleForWriting.write(Data(input.utf8))
            try? inPipe.fileHandleForWriting.close()
        }
        let deadline = Date().addingTimeInterval(timeout)
        var timedOut = false
        while p.isRunning {
            if Date() > deadline {
                timedOut = true
                kill(p.processIdentifier, SIGKILL)
                break
            }
            usleep(2000)
        }
        p.waitUntilExit()
        let out = (try? String(contentsOf: outURL, encoding: .utf8)) ?? ""
        let err = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
        let signalled = p.terminationReason == .uncaughtSignal
        return CommandResult(argv: argv, status: signalled ? 128 + p.terminationStatus : p.terminationStatus,
                             signal: signalled ? p.terminationStatus : nil,
                             stdout: out, stderr: err, timedOut: timedOut)
    }

    private static func tempFile(_ tag: String) -> URL {
        let dir = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        let path = "\(dir)/daxmm-cmd-\(getpid())-\(UInt64.random(in: 0...UInt64.max))-\(tag)"
        FileManager.default.createFile(atPath: path, contents: nil)
        return URL(fileURLWithPath: path)
    }
}

extension TestContext {
    /// Runs a program, logs its command line and output, and returns the
    /// result whatever its status.
    @discardableResult
    public func command(_ argv: [String], input: String? = nil, timeout: Double = 300) throws -> CommandResult {
        log("$ \(argv.joined(separator: " "))")
        let r = try Command.run(argv, input: input, timeout: timeout)
        if !r.stdout.isEmpty { log(r.stdout.hasSuffix("\n") ? String(r.stdout.dropLast()) : r.stdout) }
        if !r.stderr.isEmpty { log(r.stderr.hasSuffix("\n") ? String(r.stderr.dropLast()) : r.stderr) }
        if !r.succeeded { log("(\(r.timedOut ? "timed out" : r.signal.map { "signal \($0)" } ?? "exit \(r.status)"))") }
        return r
    }

    /// Runs a program that must succeed (a setup step): a failure ends the
    /// body with the command and its last error line. Not counted as a
    /// check: a test made only of setup steps checked nothing.
    @discardableResult
    public func mustRun(_ argv: [String], input: String? = nil, timeout: Double = 300) throws -> CommandResult {
        let r = try command(argv, input: input, timeout: timeout)
        if !r.succeeded { throw CheckAbort(message: r.description) }
        return r
    }
}
