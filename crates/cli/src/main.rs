//! `moemla`: list backends, run the conformance suite, run benchmarks.

mod commands;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// DeepSeek MoE and MLA ops on every accelerator, with proof of parity.
#[derive(Parser)]
#[command(name = "moemla", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every compiled-in backend: available or not (and why), device, memory, dtypes,
    /// verification status.
    Devices(commands::devices::DevicesArgs),
    /// Run the golden conformance cases on every backend and print the parity matrix.
    Conformance(commands::conformance::ConformanceArgs),
    /// Time the ops at DeepSeek shapes against ceilings measured in the same run.
    Bench(commands::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices(args) => commands::devices::run(&args),
        Command::Conformance(args) => commands::conformance::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("moemla: {err}");
            ExitCode::from(2)
        }
    }
}
