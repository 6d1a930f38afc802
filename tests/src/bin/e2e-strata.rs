//! The command-line client under test: the same entry point as `strata`.

fn main() -> std::process::ExitCode {
    strata_client::cli::main()
}
