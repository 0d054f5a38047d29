enum VMSuite {
    static let tests: [CheckTest] = []
}
