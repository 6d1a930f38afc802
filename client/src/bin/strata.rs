//! `strata`: the command-line client of a strata server. See `strata --help`.

fn main() -> std::process::ExitCode {
    strata_client::cli::main()
}
