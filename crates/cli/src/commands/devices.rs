//! `moemla devices`: what is compiled in, what can run here, and how each was verified.

use super::CommandError;
use moemla::{BackendEntry, Registry};
use moemla_core::{BackendFactory, BackendInfo, DType, Format, Op, Verification};
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
    /// The device's identity, `backend:index` (`opencl:0`).
    id: String,
    /// The opened backend's name (`opencl` for device 0, `opencl:1` for device 1).
    name: String,
    /// The device's index among its backend's devices.
    device: usize,
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
        id: entry.id(),
        name: entry.name.clone(),
        device: entry.device,
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
        "{:<9} {:<11} {:<40} {:>10}  {:<14}  verification",
        "id", "status", "device", "memory", "dtypes"
    );
    for entry in entries {
        match &entry.backend {
            Ok(backend) => {
                let info = backend.info();
                println!(
                    "{:<9} {:<11} {:<40} {:>10}  {:<14}  {}",
                    entry.id(),
                    "available",
                    truncate(&info.device, 40),
                    info.memory_bytes
                        .map(format_bytes)
                        .unwrap_or_else(|| "-".into()),
                    dtypes(&info),
                    info.verification
                );
                println!(
                    "{:<9} {:<11} vendor: {}; device kind: {}",
                    "", "", info.vendor, info.device_kind
                );
                println!("{:<9} {:<11} contract v2: {}", "", "", v2_support(&info));
                for note in &info.notes {
                    println!("{:<9} {:<11} note: {note}", "", "");
                }
            }
            Err(err) => {
                println!("{:<9} {:<11} {err}", entry.id(), "unavailable");
                println!("{:<9} {:<11} verification: {}", "", "", entry.verification);
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

/// The float dtypes every v1 op supports, e.g. "F32,F16,BF16" (with "*" if some v1 op
/// lacks one).
fn dtypes(info: &BackendInfo) -> String {
    let full: Vec<&str> = DType::FLOATS
        .into_iter()
        .filter(|&d| Op::V1.iter().all(|&op| info.supports(op, d)))
        .map(DType::name)
        .collect();
    let v1 = (info.supported.iter())
        .filter(|s| s.format.is_none() && Op::V1.contains(&s.op))
        .count();
    let partial = v1 > full.len() * Op::V1.len();
    format!("{}{}", full.join(","), if partial { "*" } else { "" })
}

/// The contract-v2 (op, format) support with its dtypes, e.g. "mla_decode+fp8_ds_v32
/// F16,BF16; dsa_indexer_topk F32,F16,BF16", or "none".
fn v2_support(info: &BackendInfo) -> String {
    let mut groups: Vec<(Op, Option<Format>, Vec<&str>)> = Vec::new();
    for s in (info.supported.iter()).filter(|s| s.format.is_some() || !Op::V1.contains(&s.op)) {
        match groups.iter_mut().find(|g| (g.0, g.1) == (s.op, s.format)) {
            Some(g) => g.2.push(s.dtype.name()),
            None => groups.push((s.op, s.format, vec![s.dtype.name()])),
        }
    }
    if groups.is_empty() {
        return "none".into();
    }
    let items: Vec<String> = (groups.iter())
        .map(|(op, format, dtypes)| match format {
            Some(f) => format!("{op}+{f} {}", dtypes.join(",")),
            None => format!("{op} {}", dtypes.join(",")),
        })
        .collect();
    items.join("; ")
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

    fn info(supported: Vec<moemla_core::OpSupport>) -> BackendInfo {
        BackendInfo {
            name: "x".into(),
            vendor: "v".into(),
            device: "d".into(),
            device_kind: moemla_core::DeviceKind::Cpu,
            memory_bytes: None,
            supported,
            verification: Verification {
                kind: VerificationKind::Reference,
                detail: String::new(),
            },
            notes: vec![],
        }
    }

    #[test]
    fn dtypes_count_v1_ops_and_v2_support_is_listed_by_op_and_format() {
        use moemla_core::OpSupport;
        let v1 = info(OpSupport::all_v1());
        assert_eq!(dtypes(&v1), "F32,F16,BF16");
        assert_eq!(v2_support(&v1), "none");
        let v2 = info(OpSupport::all_v2());
        assert_eq!(dtypes(&v2), "F32,F16,BF16");
        let listed = v2_support(&v2);
        assert!(
            listed.contains("mla_decode+fp8_ds_v32 F16,BF16;")
                && listed.contains("moe_experts+fp8_activations F32,F16,BF16;")
                && listed.contains("dsa_indexer_topk F32,F16,BF16;")
                && listed.ends_with("mla_cache_write+fp8_ds_v32 F32,F16,BF16"),
            "{listed}"
        );
        let mut partial = OpSupport::all_v1();
        partial.retain(|s| !(s.op == Op::MlaDecode && s.dtype == DType::F32));
        assert_eq!(dtypes(&info(partial)), "F16,BF16*");
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

    #[test]
    fn delegated_and_plugin_claims_are_named_as_such_in_the_table_and_json() {
        let delegated = Verification::delegated("cpu", "Acme NPU driver stub");
        let plugin = Verification {
            kind: VerificationKind::Plugin,
            detail: "claimed by plugin libacme.so, not checked by moemla: silicon".into(),
        };
        let table = status_table(&[
            claimed("acme", delegated.kind, &delegated.detail),
            claimed("acme_c", plugin.kind, &plugin.detail),
        ]);
        assert_eq!(
            table,
            "| backend | claimed verification | detail |\n\
             |---|---|---|\n\
             | acme | delegated | to cpu: Acme NPU driver stub |\n\
             | acme_c | plugin's claim | claimed by plugin libacme.so, not checked by moemla: \
             silicon |\n"
        );
        let json = |v: &Verification| serde_json::to_value(v).unwrap()["kind"].clone();
        assert_eq!(json(&delegated), "delegated");
        assert_eq!(json(&plugin), "plugin");
    }
}
