//! The `ringcast` binary: the command line lives in the library
//! (`ringcast::cli`, src/cli/).

fn main() -> std::process::ExitCode {
    ringcast::cli::main()
}
