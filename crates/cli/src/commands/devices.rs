//! `moemla devices`: what is compiled in, what can run here, and how each was verified.

use super::CommandError;
use moemla::{BackendEntry, Registry};
use moemla_core::{BackendFactory, BackendInfo, DType, Op, Verification};
use serde::Serialize;
use std::process::ExitCode;

/// Arguments of `moemla devices`.
#[derive(clap::Args)]
pub struct DevicesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,

    /// Print README.md's backend-status table (every backend's claimed verification), as
    /// it goes between `<!-- backend-status:begin -->` and `<!-- backend-status:end -->`.
    #[arg(long, conflicts_with = "json")]
    readme_table: bool,
}

/// One backend as `--json` prints it.
#[derive(Serialize)]
struct DeviceRecord {
    name: String,
    available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// How the backend has been verified (present whether or not it can run here).
    verification: Verification,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<BackendInfo>,
}

/// Runs `moemla devices`.
pub fn run(args: &DevicesArgs, registry: &Registry) -> Result<ExitCode, CommandError> {
    if args.readme_table {
        print!("{}", status_table(registry.factories()));
        return Ok(ExitCode::SUCCESS);
    }
    let entries = registry.discover();
    if args.json {
        let records: Vec<DeviceRecord> = entries.iter().map(record).collect();
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        print_table(&entries);
    }
    Ok(ExitCode::SUCCESS)
}

fn record(entry: &BackendEntry) -> DeviceRecord {
    let info = entry.backend.as_ref().ok().map(|b| b.info());
    DeviceRecord {
        name: entry.name.clone(),
        available: info.is_some(),
        reason: entry.backend.as_ref().err().map(ToString::to_string),
        // The device in hand's status where there is one, else the backend's general one.
        verification: info
            .as_ref()
            .map_or_else(|| entry.verification.clone(), |i| i.verification.clone()),
        info,
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
                println!(
                    "{:<8} {:<11} vendor: {}; device kind: {}",
                    "", "", info.vendor, info.device_kind
                );
                for note in &info.notes {
                    println!("{:<8} {:<11} note: {note}", "", "");
                }
            }
            Err(err) => {
                println!("{:<8} {:<11} {err}", entry.name, "unavailable");
                println!("{:<8} {:<11} verification: {}", "", "", entry.verification);
            }
        }
    }
}

/// The Markdown table of every backend's claimed verification, one row per factory in
/// order: README.md's backend-status table for moemla's compiled-in backends.
pub fn status_table(factories: &[BackendFactory]) -> String {
    let mut table = String::from("| backend | claimed verification | detail |\n|---|---|---|\n");
    for factory in factories {
        let claim = factory.claimed_verification();
        // The kind as `Verification`'s Display names it ("compile-only", "emulated", ...).
        let kind = Verification {
            kind: claim.kind,
            detail: String::new(),
        };
        table += &format!(
            "| {} | {kind} | {} |\n",
            cell(factory.name()),
            cell(&claim.detail)
        );
    }
    table
}

/// Text as one Markdown table cell: `|` escaped, line breaks as spaces.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
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

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::{Error, VerificationKind};

    fn claimed(name: &str, kind: VerificationKind, detail: &str) -> BackendFactory {
        let verification = Verification {
            kind,
            detail: detail.to_string(),
        };
        let backend = name.to_string();
        BackendFactory::new(name, verification, move || {
            Err(Error::Unavailable {
                backend: backend.clone(),
                reason: "never opened by the table".into(),
            })
        })
    }

    #[test]
    fn status_table_has_a_row_per_factory_in_order_with_cells_escaped() {
        let table = status_table(&[
            claimed("zeta", VerificationKind::Emulator, "on a | emulator\nin CI"),
            claimed("alpha", VerificationKind::CompileOnly, "NVRTC"),
        ]);
        assert_eq!(
            table,
            "| backend | claimed verification | detail |\n\
             |---|---|---|\n\
             | zeta | emulated | on a \\| emulator in CI |\n\
             | alpha | compile-only | NVRTC |\n"
        );
    }
}
