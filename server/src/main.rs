//! `strata-server`: the store engine behind its QUIC service. See `strata-server --help`.

fn main() -> std::process::ExitCode {
    strata_server::launch::main()
}
