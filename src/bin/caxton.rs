fn main() -> std::process::ExitCode {
    caxton::cli::main()
}
