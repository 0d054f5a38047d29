enum MMSuite {
    static let tests: [CheckTest] = []
}
