//! # moemla-cli
//!
//! The `moemla` command — `devices`, `conformance`, `bench` — over any list of backend
//! factories. moemla's own binary passes [`moemla::factories`]; a vendor's binary passes its
//! backend's factory and gets the same commands for it, with no edit to moemla:
//!
//! ```no_run
//! # mod acme { pub fn factory() -> moemla::core::BackendFactory { unimplemented!() } }
//! fn main() -> std::process::ExitCode {
//!     let mut factories = vec![acme::factory()];
//!     factories.extend(moemla::factories());
//!     moemla_cli::main_with(factories)
//! }
//! ```

mod commands;

pub use commands::devices::status_table;

use clap::{Parser, Subcommand};
use moemla::core::BackendFactory;
use moemla::Registry;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// DeepSeek MoE and MLA ops on every accelerator, with proof of parity.
#[derive(Parser)]
#[command(name = "moemla", version, about, after_help = EXIT_HELP)]
struct Cli {
    /// A backend built as a C plugin (include/moemla_plugin.h) to add (repeatable; env
    /// MOEMLA_PLUGIN_PATH lists more). Loading a library runs its code: trusted files only.
    #[arg(long = "plugin", value_name = "FILE", global = true)]
    plugins: Vec<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every backend of this build: available or not (and why), device, memory, dtypes,
    /// verification status.
    Devices(commands::devices::DevicesArgs),
    /// Run the golden conformance cases on every backend and print the parity matrix.
    #[command(after_help = moemla_conformance::EXIT_CODES)]
    Conformance(commands::conformance::ConformanceArgs),
    /// The golden set this binary was built with: `export DIR` copies it, for a binary
    /// run away from its source tree.
    Goldens(commands::goldens::GoldensArgs),
    /// Time the ops at DeepSeek shapes against ceilings measured in the same run.
    Bench(commands::bench::BenchArgs),
}

/// Runs the `moemla` command on this process's arguments over `factories` (in preference
/// order; see [`moemla::Registry`]).
pub fn main_with(factories: Vec<BackendFactory>) -> ExitCode {
    run(std::env::args_os(), factories)
}

/// The exit codes of every command, for `--help`.
const EXIT_HELP: &str = "Exit codes: 0 success; 2 usage error; `moemla conformance` also \
    1 numeric mismatch, 3 required backend unavailable or skipping, 4 malformed goldens or \
    empty selection, 5 report not written, 6 baseline regression (`moemla conformance \
    --help`).";

/// Runs the `moemla` command on `args` (the program name first) over `factories`, then the
/// plugins `--plugin` names: exit status 0 on success, 2 on a usage or run error, and for
/// `conformance` the codes of [`moemla_conformance::EXIT_CODES`] (1 numeric mismatch, 3
/// required backend, 4 goldens, 5 report, 6 baseline regression).
pub fn run<I, T>(args: I, mut factories: Vec<BackendFactory>) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are "errors" that go to stdout and exit 0.
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    factories.extend(
        cli.plugins
            .iter()
            .map(|file| moemla::plugin::factory_for(file)),
    );
    let registry = Registry::new(factories);
    let result = match cli.command {
        Command::Devices(args) => commands::devices::run(&args, &registry),
        Command::Conformance(args) => commands::conformance::run(&args, &registry),
        Command::Bench(args) => commands::bench::run(&args, &registry),
        Command::Goldens(args) => commands::goldens::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("moemla: {err}");
            ExitCode::from(2)
        }
    }
}
