enum FSDaxSuite {
    static let tests: [CheckTest] = []
}
