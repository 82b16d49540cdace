//! `moemla`: list backends, run the conformance suite, run benchmarks, on every backend of
//! this build.

fn main() -> std::process::ExitCode {
    moemla_cli::main_with(moemla::factories())
}
