// NUMA facts from libnuma, for placing and describing device memory.

import CDaxSys

public struct NUMANode: Sendable, Equatable {
    public var id: Int
    /// Memory of the node in bytes (RAM online in it), and how much is free.
    public var size: Int64
    public var free: Int64
    /// numa_distance from every node, indexed by node id (0 where unknown).
    public var distances: [Int]
}

public enum NUMA {
    /// nil when the kernel has no NUMA support (numa_available() < 0).
    public static func nodes() -> [NUMANode]? {
        guard numa_available() >= 0 else { return nil }
        let maxNode = Int(numa_max_node())
        var nodes: [NUMANode] = []
        for n in 0...maxNode {
            var free: Int64 = 0
            let size = numa_node_size64(Int32(n), &free)
            guard size >= 0 else { continue }  // node not present
            let d = (0...maxNode).map { Int(numa_distance(Int32(n), Int32($0))) }
            nodes.append(NUMANode(id: n, size: size, free: free, distances: d))
        }
        return nodes
    }

    /// The node of the CPU this thread runs on, if known.
    public static func currentNode() -> Int? {
        guard numa_available() >= 0 else { return nil }
        let cpu = dax_sched_getcpu()
        guard cpu >= 0 else { return nil }
        let n = numa_node_of_cpu(cpu)
        return n >= 0 ? Int(n) : nil
    }
}

