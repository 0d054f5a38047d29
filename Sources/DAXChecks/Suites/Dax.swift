enum DaxSuite {
    static let tests: [CheckTest] = []
}
