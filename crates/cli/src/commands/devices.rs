//! `moemla devices`: what is compiled in, what can run here, and how each was verified.

use super::CommandError;
use moemla::{discover, BackendEntry};
use moemla_core::{BackendInfo, DType, Op};
use serde::Serialize;
use std::process::ExitCode;

/// Arguments of `moemla devices`.
#[derive(clap::Args)]
pub struct DevicesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One backend as `--json` prints it.
#[derive(Serialize)]
struct DeviceRecord {
    name: &'static str,
    available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<BackendInfo>,
}

/// Runs `moemla devices`.
pub fn run(args: &DevicesArgs) -> Result<ExitCode, CommandError> {
    let entries = discover();
    if args.json {
        let records: Vec<DeviceRecord> = entries.iter().map(record).collect();
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        print_table(&entries);
    }
    Ok(ExitCode::SUCCESS)
}

fn record(entry: &BackendEntry) -> DeviceRecord {
    match &entry.backend {
        Ok(backend) => DeviceRecord {
            name: entry.name,
            available: true,
            reason: None,
            info: Some(backend.info()),
        },
        Err(err) => DeviceRecord {
            name: entry.name,
            available: false,
            reason: Some(err.to_string()),
            info: None,
        },
    }
}

fn print_table(entries: &[BackendEntry]) {
    println!(
        "{:<8} {:<11} {:<40} {:>10}  {:<14}  verification",
        "backend", "status", "device", "memory", "dtypes"
    );
    for entry in entries {
        match &entry.backend {
            Ok(backend) => {
                let info = backend.info();
                println!(
                    "{:<8} {:<11} {:<40} {:>10}  {:<14}  {}",
                    entry.name,
                    "available",
                    truncate(&info.device, 40),
                    info.memory_bytes
                        .map(format_bytes)
                        .unwrap_or_else(|| "-".into()),
                    dtypes(&info),
                    info.verification
                );
                for note in &info.notes {
                    println!("{:<8} {:<11} note: {note}", "", "");
                }
            }
            Err(err) => {
                println!("{:<8} {:<11} {err}", entry.name, "unavailable");
            }
        }
    }
}

/// The float dtypes every op supports, e.g. "F32,F16,BF16" (with "*" if some op lacks one).
fn dtypes(info: &BackendInfo) -> String {
    let full: Vec<&str> = DType::FLOATS
        .into_iter()
        .filter(|&d| Op::ALL.iter().all(|&op| info.supports(op, d)))
        .map(DType::name)
        .collect();
    let partial = info.supported.len() > full.len() * Op::ALL.len();
    format!("{}{}", full.join(","), if partial { "*" } else { "" })
}

fn format_bytes(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let cut: String = s.chars().take(width - 1).collect();
        format!("{cut}…")
    }
}
