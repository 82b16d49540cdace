//! `moemla conformance`: run the golden cases on every selected backend, print the parity
//! matrix and exit with a code that says what happened
//! ([`moemla_conformance::EXIT_CODES`]): a numeric mismatch, a required backend missing or
//! skipping, broken goldens, an unwritable report or a baseline regression each have their
//! own.

use super::CommandError;
use moemla::Registry;
use moemla_conformance::filter::{Selection, Shard};
use moemla_conformance::{
    baseline, golden, load_roots, render, run_unavailable, to_junit, ExitStatus, Report, RunInfo,
};
use moemla_core::{Backend, Error};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// Arguments of `moemla conformance`.
#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// Backends to run: names (comma-separated or repeated) or `all`, every backend of
    /// this build (those that cannot run here show as `n/a`, skipped with the reason). An
    /// unknown name is a usage error.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    backend: Vec<String>,

    /// Golden root: a directory (walked recursively) or a case file; repeatable (e.g. the
    /// committed set plus a private folder: case IDs then start with the root's name and
    /// `:`). Default: $MOEMLA_GOLDEN, else ./conformance/golden, else the committed set
    /// this binary was built from (`moemla goldens export` copies it).
    #[arg(long)]
    golden: Vec<PathBuf>,

    /// Write the JSON report (schema_version, outcome, exit code, run, backends with their
    /// device, one result per case x backend) to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Write a JUnit XML report (Jenkins xUnit junit-10.xsd) to this file.
    #[arg(long)]
    junit: Option<PathBuf>,

    /// Write one self-contained HTML page (no external assets): the provenance, the
    /// backends and the case x backend matrix with each cell's worst ratio and first
    /// mismatch, filterable by op, dtype and backend; the JSON report embedded.
    #[arg(long)]
    html: Option<PathBuf>,

    /// Backends that must be available and skip nothing (comma-separated); they are run
    /// even if --backend does not name them.
    #[arg(long, env = "MOEMLA_REQUIRE", value_delimiter = ',')]
    require: Vec<String>,

    /// Required backends that may leave cases unsupported (comma-separated): a vendor op
    /// library that cannot do some shapes or dtypes. Their unsupported cases are listed
    /// with the reason and counted as skipped; everything else they run must pass.
    #[arg(long, env = "MOEMLA_ALLOW_UNSUPPORTED", value_delimiter = ',')]
    allow_unsupported: Vec<String>,

    /// Only cases of this op (`mla_decode`) or whose case ID matches this glob (`*` and
    /// `?`; e.g. `moe_route/bf16/*`). Repeatable: a case matching any is kept.
    #[arg(long)]
    filter: Vec<String>,

    /// Leave out cases of this op or matching this glob (as --filter). Repeatable.
    #[arg(long)]
    exclude: Vec<String>,

    /// Run shard I of N (`2/4`): a stable split of the selected cases by a hash of their
    /// IDs; the N shards together run every case once.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,

    /// Print the selected case IDs, one per line, and exit (0, or 4 if none).
    #[arg(long)]
    list: bool,

    /// JSON report(s) of an earlier run (repeatable: e.g. the reports of its shards) to
    /// compare with, per (case, backend, device): new failures, new skips and worst-ratio
    /// growth beyond --max-ratio-growth fail the run with exit code 6.
    #[arg(long, value_name = "OLD.json")]
    baseline: Vec<PathBuf>,

    /// How many times a passing cell's worst error ratio may grow over the baseline's
    /// (ratios under 0.01 count as 0.01).
    #[arg(long, default_value_t = baseline::DEFAULT_MAX_RATIO_GROWTH)]
    max_ratio_growth: f64,

    /// Check a published JSON report instead of running: its schema version is known, its
    /// golden files' SHA-256 (and the set's) match the local golden set (--golden, as for
    /// a run), its counts, statuses, ratios and outcome agree with its cells. Prints the
    /// first discrepancy and exits 7 if anything does not check out (2 if unreadable).
    #[arg(long, value_name = "REPORT.json")]
    verify: Option<PathBuf>,
}

/// A usage error (exit code 2).
fn usage(message: String) -> CommandError {
    message.into()
}

/// Runs `moemla conformance`.
pub fn run(args: &ConformanceArgs, registry: &Registry) -> Result<ExitCode, CommandError> {
    let start = Instant::now();
    let mut info = RunInfo::now();
    let wanted = canonical(registry, "--backend", &clean(&args.backend))?;
    let required = canonical(
        registry,
        "--require (MOEMLA_REQUIRE)",
        &clean(&args.require),
    )?;
    let allowed = canonical(
        registry,
        "--allow-unsupported (MOEMLA_ALLOW_UNSUPPORTED)",
        &clean(&args.allow_unsupported),
    )?;
    if let Some(report) = &args.verify {
        return verify(report, args);
    }
    let shard = args.shard.as_deref().map(Shard::parse).transpose()?;
    if !(args.max_ratio_growth.is_finite() && args.max_ratio_growth >= 1.0) {
        return Err(usage(format!(
            "--max-ratio-growth {}: expected a finite factor >= 1",
            args.max_ratio_growth
        )));
    }
    let baselines = (args.baseline.iter())
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .map_err(|e| usage(format!("cannot read baseline {}: {e}", p.display())))?;
            Ok((p.display().to_string(), text))
        })
        .collect::<Result<Vec<_>, CommandError>>()?;

    let defaulted = args.golden.is_empty();
    let dirs = if defaulted {
        golden::default_dirs()?
    } else {
        args.golden.clone()
    };
    if defaulted && dirs == [golden::committed_dir()] && !dirs[0].exists() {
        eprintln!(
            "moemla: the golden set this binary was built with ({}) is not on this machine: \
             run `moemla goldens export DIR` where it was built, copy DIR here and pass \
             --golden DIR (or set {})",
            dirs[0].display(),
            golden::GOLDEN_ENV
        );
    }
    let selection = Selection {
        filters: args.filter.clone(),
        excludes: args.exclude.clone(),
        shard,
    };
    let loaded = load_roots(&dirs);
    let found = loaded.len();
    let cases = selection.apply(loaded);

    if args.list {
        for case in &cases {
            println!("{}", moemla_conformance::filter::case_id(case));
        }
        if cases.is_empty() {
            eprintln!("moemla: {}", empty_selection(args, found));
            return Ok(ExitCode::from(ExitStatus::Goldens.code()));
        }
        return Ok(ExitCode::SUCCESS);
    }

    let columns = open_backends(registry, &wanted, &required);
    let mut report = Report::default();
    // A bar over the backends, on stderr only when it is a terminal.
    let bar = super::bench::progress::Progress::new(columns.len() as u64, "backends");
    for (name, backend) in &columns {
        bar.start(format!("{name}: {} cases", cases.len()));
        report.extend(match backend {
            Ok(backend) => moemla_conformance::run(backend.as_ref(), &cases),
            Err(err) => run_unavailable(name, &reason(err), &cases),
        });
        bar.step();
    }
    bar.finish();
    let mut verdict = report.finish(&required, &allowed);
    if cases.is_empty() {
        verdict.fail(ExitStatus::Goldens, empty_selection(args, found));
    }
    if !columns.iter().any(|(_, b)| b.is_ok()) {
        verdict.fail(
            ExitStatus::RequiredBackend,
            "no selected backend is available here".to_string(),
        );
    }
    if !baselines.is_empty() {
        let compared =
            baseline::compare(&report, &baselines, args.max_ratio_growth).map_err(usage)?;
        for r in &compared.regressions {
            verdict.fail(
                ExitStatus::Regression,
                format!(
                    "baseline: {} of {} on `{}`",
                    r.kind.label(),
                    r.case,
                    r.backend
                ),
            );
        }
        report.baseline = Some(compared);
    }

    info.golden_roots = dirs.iter().map(|d| d.display().to_string()).collect();
    info.golden = moemla_conformance::provenance::GoldenSet::of(&cases);
    info.filters = args.filter.clone();
    info.excludes = args.exclude.clone();
    info.shard = shard.map(|s| s.to_string());
    info.required = required;
    info.allow_unsupported = allowed;
    info.seconds = start.elapsed().as_secs_f64();
    report.run = info;
    report.verdict = Some(verdict.clone());

    println!(
        "golden: {} ({} case files{})",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        cases.len(),
        shard.map_or(String::new(), |s| format!(", shard {s}"))
    );
    print!("{}", render(&report));
    if let Some(b) = &report.baseline {
        print!("\n{}", b.table());
    }

    let mut exit = verdict.exit;
    let writes = [
        (&args.json, report.to_json()),
        (&args.junit, to_junit(&report)),
        (&args.html, moemla_conformance::html::to_html(&report)),
    ];
    for (path, text) in writes {
        if let Some(path) = path {
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("moemla: cannot write report {}: {e}", path.display());
                println!("FAILED: cannot write report {}: {e}", path.display());
                exit = exit.max(ExitStatus::ReportWrite);
            }
        }
    }

    println!("\ntime: {:.2} s", start.elapsed().as_secs_f64());
    for reason in &verdict.reasons {
        println!("FAILED: {reason}");
    }
    if exit != ExitStatus::Pass {
        println!("exit code {} ({})", exit.code(), exit.name());
    }
    // The counts line stays last: CI scripts read it.
    println!("{}", report.counts(None).line());
    Ok(ExitCode::from(exit.code()))
}

/// `--verify REPORT.json`: checks a published report against the local golden set.
fn verify(path: &Path, args: &ConformanceArgs) -> Result<ExitCode, CommandError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read report {}: {e}", path.display())))?;
    let dirs = if args.golden.is_empty() {
        golden::default_dirs()?
    } else {
        args.golden.clone()
    };
    let local = load_roots(&dirs);
    let shown = |d: &[PathBuf]| {
        (d.iter().map(|d| d.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match moemla_conformance::verify(&text, &local) {
        Ok(v) => {
            println!(
                "verified {}: schema {}, {} cells, {} golden files matching {} \
                 (set sha256 {}), outcome {}",
                path.display(),
                v.schema_version,
                v.cells,
                v.golden_files,
                shown(&dirs),
                v.set_sha256,
                v.outcome
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(d) => {
            println!("NOT VERIFIED {}: {d}", path.display());
            eprintln!("moemla: {} does not verify: {d}", path.display());
            let code = ExitStatus::Verify;
            println!("exit code {} ({})", code.code(), code.name());
            Ok(ExitCode::from(code.code()))
        }
    }
}

/// Why nothing was selected.
fn empty_selection(args: &ConformanceArgs, found: usize) -> String {
    if found == 0 {
        return "no cases to run".to_string();
    }
    let mut how: Vec<String> = (args.filter.iter())
        .map(|f| format!("--filter {f}"))
        .collect();
    how.extend(args.exclude.iter().map(|e| format!("--exclude {e}")));
    how.extend(args.shard.iter().map(|s| format!("--shard {s}")));
    format!(
        "no case selected: {found} case files, none kept by {}",
        how.join(" ")
    )
}

/// The backends `names` (given with `flag`) as this build spells them (names ignore ASCII
/// case; `all` stays in --backend): an unknown name is a usage error, never a skipped
/// column.
fn canonical(
    registry: &Registry,
    flag: &str,
    names: &[String],
) -> Result<Vec<String>, CommandError> {
    let known = registry.names();
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let spelled = if flag == "--backend" && name == "all" {
            Some("all".to_string())
        } else {
            // `name` or `name:index` (its device `index`), as the opened backend is named.
            registry.backend_name(name)
        };
        match spelled {
            Some(n) if out.contains(&n) => {}
            Some(n) => out.push(n),
            None => {
                return Err(usage(format!(
                    "{flag}: unknown backend `{name}` (backends of this build: {})",
                    known.join(", ")
                )))
            }
        }
    }
    Ok(out)
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

/// Opens the backends to run: `all` is every backend of the registry in preference order
/// (those that cannot open are columns of skipped cells with the reason); named and
/// required backends are always run, as `n/a` if they cannot open.
fn open_backends(registry: &Registry, wanted: &[String], required: &[String]) -> Vec<Column> {
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
            for e in &entries {
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
    columns
}

/// Why a backend cannot run, without the "backend `x` is unavailable" prefix.
fn reason(err: &Error) -> String {
    match err {
        Error::Unavailable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}
