//! One module per `moemla` subcommand. Each exposes its clap args and
//! `run(&Args) -> Result<ExitCode, Box<dyn Error>>`.

pub mod bench;
pub mod conformance;
pub mod devices;
pub mod goldens;

/// The error type subcommands return for failures outside their normal report.
pub type CommandError = Box<dyn std::error::Error>;
