enum DiffSuite {
    static let tests: [CheckTest] = []
}
