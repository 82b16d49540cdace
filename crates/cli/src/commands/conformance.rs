//! `moemla conformance`: run the golden cases on every selected backend and print the
//! parity matrix; exit non-zero iff a case failed on an available backend or a required
//! backend was unavailable or skipped anything (unless `--allow-unsupported` names it,
//! for cases it declares unsupported).

use super::CommandError;
use moemla::Registry;
use moemla_conformance::{filter, golden, load_cases, render, run_unavailable, to_junit, Report};
use moemla_core::{Backend, Error};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// Arguments of `moemla conformance`.
#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// Backends to run: names (comma-separated or repeated) or `all`, every backend
    /// available here. A named backend that cannot run shows as `n/a`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    backend: Vec<String>,

    /// Golden directory or case file (repeatable). Default: $MOEMLA_GOLDEN, else
    /// ./conformance/golden, else the committed set this binary was built from.
    #[arg(long)]
    golden: Vec<PathBuf>,

    /// Write the JSON report (one object per case x backend) to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Write a JUnit XML report to this file.
    #[arg(long)]
    junit: Option<PathBuf>,

    /// Backends that must be available and skip nothing (comma-separated); they are run
    /// even if --backend does not name them.
    #[arg(long, env = "MOEMLA_REQUIRE", value_delimiter = ',')]
    require: Vec<String>,

    /// Required backends that may leave cases unsupported (comma-separated): a vendor op
    /// library that cannot do some shapes or dtypes. Their unsupported cases are listed
    /// with the reason and counted as skipped; everything else they run must pass.
    #[arg(long, env = "MOEMLA_ALLOW_UNSUPPORTED", value_delimiter = ',')]
    allow_unsupported: Vec<String>,

    /// Only cases of this op (`mla_decode`) or whose relative path matches this glob
    /// (`*` and `?`; e.g. `moe_route/bf16/*`).
    #[arg(long)]
    filter: Option<String>,
}

/// Runs `moemla conformance`.
pub fn run(args: &ConformanceArgs, registry: &Registry) -> Result<ExitCode, CommandError> {
    let start = Instant::now();
    let required: Vec<String> = clean(&args.require);
    let (columns, idle) = open_backends(registry, &clean(&args.backend), &required);

    let dirs = if args.golden.is_empty() {
        golden::default_dirs()?
    } else {
        args.golden.clone()
    };
    let mut cases = load_cases(&dirs);
    if let Some(pattern) = &args.filter {
        cases = filter::filter_cases(cases, pattern);
    }

    let mut report = Report::default();
    for (name, backend) in &columns {
        report.extend(match backend {
            Ok(backend) => moemla_conformance::run(backend.as_ref(), &cases),
            Err(err) => run_unavailable(name, &reason(err), &cases),
        });
    }

    println!(
        "golden: {} ({} case files)",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        cases.len()
    );
    print!("{}", render(&report));
    if !idle.is_empty() {
        println!(
            "not run, unavailable here: {} (why: `moemla devices`; name one with --backend \
             to show it as n/a)",
            idle.join(", ")
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, to_junit(&report))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }

    let mut verdict = report.verdict_allowing(&required, &clean(&args.allow_unsupported));
    if cases.is_empty() {
        verdict.ok = false;
        verdict.reasons.push(match &args.filter {
            Some(f) => format!("no case matches --filter {f}"),
            None => "no cases to run".to_string(),
        });
    }
    if columns.is_empty() {
        verdict.ok = false;
        verdict
            .reasons
            .push("no backend selected or available".to_string());
    }
    println!("\ntime: {:.2} s", start.elapsed().as_secs_f64());
    for reason in &verdict.reasons {
        println!("FAILED: {reason}");
    }
    println!("{}", report.counts(None).line());
    Ok(if verdict.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Names without blanks or duplicates, in order.
fn clean(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if !out.iter().any(|o| o == n) {
            out.push(n.to_string());
        }
    }
    out
}

/// A backend to run: its name, and the opened backend or why it cannot run here.
type Column = (String, Result<Arc<dyn Backend>, Error>);

/// Opens the backends to run: `all` is every available backend in preference order (the
/// only case that probes every compiled-in backend); named and required backends are
/// always run, as `n/a` if they cannot open. Also returns the unavailable backends `all`
/// left out.
fn open_backends(
    registry: &Registry,
    wanted: &[String],
    required: &[String],
) -> (Vec<Column>, Vec<String>) {
    let names = clean(&[wanted, required].concat());
    let entries = if names.iter().any(|n| n == "all") {
        registry.discover()
    } else {
        Vec::new()
    };
    let mut columns: Vec<Column> = Vec::new();
    for name in &names {
        let fresh = |n: &str, cols: &[Column]| !cols.iter().any(|(c, _)| c == n);
        if name == "all" {
            for e in entries.iter().filter(|e| e.backend.is_ok()) {
                if fresh(&e.name, &columns) {
                    columns.push((e.name.to_string(), e.backend.clone()));
                }
            }
        } else if fresh(name, &columns) {
            let opened = match entries.iter().find(|e| e.name == *name) {
                Some(e) => e.backend.clone(),
                None => registry.select(Some(name)),
            };
            columns.push((name.clone(), opened));
        }
    }
    let idle = (entries.iter())
        .filter(|e| e.backend.is_err() && !columns.iter().any(|(c, _)| *c == e.name))
        .map(|e| e.name.clone())
        .collect();
    (columns, idle)
}

/// Why a backend cannot run, without the "backend `x` is unavailable" prefix.
fn reason(err: &Error) -> String {
    match err {
        Error::Unavailable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}
