fn main() -> std::process::ExitCode {
    caxton::daemon::main()
}
