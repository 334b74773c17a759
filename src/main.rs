//! The `myflask` binary: a thin shell over the library's CLI.

fn main() -> std::process::ExitCode {
    myflask::cli::main()
}
