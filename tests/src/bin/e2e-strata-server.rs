//! The server under test: the same entry point as `strata-server`, built with the tests.

fn main() -> std::process::ExitCode {
    strata_server::launch::main()
}
