import Testing
@testable import DAXDevice

/// The JSON shape of `daxctl list -R -D` (ndctl daxctl/json.c), on synthetic
/// discovery results; the VM suite compares against daxctl itself.
@Suite("daxctl list JSON shape")
struct DaxctlListTests {
    static let dev2M = DaxDeviceInfo(
        devname: "dax0.0", id: 0, major: 252, minor: 0, size: 526_385_152, align: 2 << 20,
        resource: 0x1_4220_0000, targetNode: 0, mode: "devdax", enabled: true,
        mappings: [DaxMappingInfo(pageOffset: 0, start: 0x1_4220_0000, end: 0x1_61bf_ffff)], regionID: 0)

    static let region = DaxRegionInfo(
        id: 0, path: "/sys/devices/LNXSYSTM:00/LNXSYBUS:00/ACPI0012:00/ndbus0/region0/dax0.0",
        size: 526_385_152, availableSize: 0, align: 2 << 20, devices: [dev2M])

    @Test func regionAndDeviceKeysInDaxctlOrder() {
        let json = DaxctlList.regionsJSON([Self.region])
        guard case .array(let regions) = json, case .object(let r) = regions.first else {
            Issue.record("not an array of objects"); return
        }
        // available_size is omitted when 0; the /sys/devices prefix is trimmed.
        #expect(r.map(\.0) == ["path", "id", "size", "align", "devices"])
        #expect(r[0].1 == .string("/LNXSYSTM:00/LNXSYBUS:00/ACPI0012:00/ndbus0/region0/dax0.0"))
        guard case .array(let devs) = r[4].1, case .object(let d) = devs.first else {
            Issue.record("no devices"); return
        }
        #expect(d.map(\.0) == ["chardev", "size", "target_node", "align", "mode"])
        #expect(d[0].1 == .string("dax0.0"))
        #expect(d[1].1 == .uint(526_385_152))
    }

    @Test func optionalKeysFollowDaxctlRules() {
        var dev = Self.dev2M
        dev.targetNode = nil
        dev.align = 0
        dev.enabled = false
        var idle = Self.dev2M
        idle.devname = "dax0.1"
        idle.size = 0
        var region = Self.region
        region.size = nil
        region.align = nil
        region.availableSize = 4096
        region.devices = [dev, idle]
        guard case .array(let rs) = DaxctlList.regionsJSON([region]), case .object(let r) = rs[0],
              case .array(let devs) = r.last!.1, case .object(let d) = devs[0] else {
            Issue.record("bad shape"); return
        }
        #expect(r.map(\.0) == ["path", "id", "available_size", "devices"])
        #expect(devs.count == 1, "idle (size 0) devices are listed only with -i")
        #expect(d.map(\.0) == ["chardev", "size", "mode", "state"])
        #expect(d.last!.1 == .string("disabled"))

        guard case .array(let rsIdle) = DaxctlList.regionsJSON([region], options: ListOptions(idle: true)),
              case .object(let ri) = rsIdle[0], case .array(let devsIdle) = ri.last!.1 else {
            Issue.record("bad shape"); return
        }
        #expect(devsIdle.count == 2)
    }

    @Test func mappingsWithM() {
        let json = DaxctlList.regionsJSON([Self.region], options: ListOptions(mappings: true))
        let text = json.rendered()
        #expect(text.contains("\"mappings\":["))
        #expect(text.contains("\"page_offset\":0"))
        #expect(text.contains("\"start\":\(0x1_4220_0000)"))
        #expect(text.contains("\"size\":526385152"))
        #expect(!DaxctlList.regionsJSON([Self.region]).rendered().contains("mappings"))
    }

    @Test func emptyListIsAnEmptyArray() {
        #expect(DaxctlList.regionsJSON([]).rendered() == "[]")
    }

    @Test func stringsAreEscaped() {
        #expect(JSONValue.string("a\"b\\c\n\u{1}").rendered() == #""a\"b\\c\n\u0001""#)
    }
}
