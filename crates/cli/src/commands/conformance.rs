//! `moemla conformance`: run the golden cases on every selected backend and print the
//! parity matrix; exit non-zero iff a case failed on an available backend or a required
//! backend was unavailable or skipped anything.

use super::CommandError;
use moemla::{discover, BackendEntry};
use moemla_conformance::{filter, golden, load_cases, render, run_unavailable, to_junit, Report};
use std::path::PathBuf;
use std::process::ExitCode;
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

    /// Only cases of this op (`mla_decode`) or whose relative path matches this glob
    /// (`*` and `?`; e.g. `moe_route/bf16/*`).
    #[arg(long)]
    filter: Option<String>,
}

/// Runs `moemla conformance`.
pub fn run(args: &ConformanceArgs) -> Result<ExitCode, CommandError> {
    let start = Instant::now();
    let required: Vec<String> = clean(&args.require);
    let entries = discover();
    let selected = selection(&clean(&args.backend), &required, &entries);

    let dirs = if args.golden.is_empty() {
        golden::default_dirs()
    } else {
        args.golden.clone()
    };
    let mut cases = load_cases(&dirs);
    if let Some(pattern) = &args.filter {
        cases = filter::filter_cases(cases, pattern);
    }

    let mut report = Report::default();
    for name in &selected {
        let part = match entries.iter().find(|e| e.name == name) {
            Some(BackendEntry {
                backend: Ok(backend),
                ..
            }) => moemla_conformance::run(backend.as_ref(), &cases),
            Some(BackendEntry {
                backend: Err(err), ..
            }) => run_unavailable(name, &err.to_string(), &cases),
            None => {
                let compiled: Vec<&str> = entries.iter().map(|e| e.name).collect();
                let why = format!(
                    "not compiled into this build (compiled in: {})",
                    compiled.join(", ")
                );
                run_unavailable(name, &why, &cases)
            }
        };
        report.extend(part);
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
    let idle: Vec<&str> = (entries.iter())
        .filter(|e| e.backend.is_err() && !selected.iter().any(|s| s == e.name))
        .map(|e| e.name)
        .collect();
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

    let mut verdict = report.verdict(&required);
    if cases.is_empty() {
        verdict.ok = false;
        verdict.reasons.push(match &args.filter {
            Some(f) => format!("no case matches --filter {f}"),
            None => "no cases to run".to_string(),
        });
    }
    if selected.is_empty() {
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

/// The backends to run, in preference order: `all` expands to every available backend;
/// required backends are always included.
fn selection(wanted: &[String], required: &[String], entries: &[BackendEntry]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for w in wanted.iter().chain(required) {
        if w == "all" {
            let available = entries.iter().filter(|e| e.backend.is_ok());
            names.extend(available.map(|e| e.name.to_string()));
        } else {
            names.push(w.clone());
        }
    }
    clean(&names)
}
