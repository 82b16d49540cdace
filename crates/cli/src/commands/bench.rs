//! `moemla bench`: op times at DeepSeek shapes as ratios of a roofline floor built from
//! ceilings measured in the same run (on a CPU the host's physical limits), optionally
//! side by side with a numpy or a PyTorch (CPU) peer.

mod plot;
pub(crate) mod progress;

use super::CommandError;
use moemla::Registry;
use moemla_benches::ceilings::{self, Ceilings};
use moemla_benches::host::{self, HostLimits};
use moemla_benches::inputs::generate;
use moemla_benches::peer::{self, Outcome, Peer};
use moemla_benches::report::{ceilings_text, table, Row};
use moemla_benches::run::run_case;
use moemla_benches::timing::Budget;
use moemla_benches::{BenchCase, Suite};
use moemla_core::{Backend, DType, DeviceKind, Error, Op};
use progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `moemla bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Backend to measure (default: every available backend).
    #[arg(long)]
    backend: Option<String>,
    /// Only these ops (moe_route, moe_experts, mla_decode, mla_sparse_decode,
    /// dsa_indexer_topk, mla_cache_write: the decode step with its append); repeatable.
    #[arg(long = "op")]
    ops: Vec<String>,
    /// Only cases whose text contains this (e.g. "fp8 w8a16 T=1 "); repeatable: a case
    /// runs when it contains any of them.
    #[arg(long = "filter")]
    filters: Vec<String>,
    /// Only these run dtypes (f32, bf16, f16); repeatable. Default: bf16 and f32.
    #[arg(long = "dtype", value_parser = run_dtype)]
    dtypes: Vec<DType>,
    /// Also time the same ops on the same inputs in numpy (`--peer numpy`) or in PyTorch
    /// on the CPU (`--peer torch`: checked against the committed goldens first; skipped
    /// with a note where torch cannot be imported). Cases the peer cannot run say n/a.
    /// The peer runs in `python3`, or the interpreter env MOEMLA_PYTHON names (a virtual
    /// environment's, say).
    #[arg(long)]
    peer: Option<String>,
    /// Tiny shapes and few repetitions: checks the harness, measures nothing meaningful.
    #[arg(long)]
    quick: bool,
    /// The accelerator shapes instead (FlashMLA's decode shapes at b=128, DeepSeek-V3's
    /// 256 experts at T=16 and 4096; ~25 GB of weights).
    #[arg(long, conflicts_with = "quick")]
    device_shapes: bool,
    /// Write every row and the ceilings as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a Markdown report (machine, date, command, ceilings, table).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write SVG plots (log-log: time and fraction of the limit against seqlen, T and E,
    /// per backend and peer) into this directory; `--markdown` embeds them.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Side of the square GEMM that measures the compute ceiling (1 to 2^24; its three
    /// matrices must also fit the device's and the host's memory).
    #[arg(long, default_value_t = 2048,
          value_parser = clap::value_parser!(u64).range(1..=ceilings::MAX_GEMM_SIZE))]
    gemm_size: u64,
    /// Size of the copy that measures the bandwidth ceiling, MiB (1 to 2^24; its two
    /// buffers must also fit the device's memory).
    #[arg(long, default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=ceilings::MAX_COPY_MIB))]
    copy_mib: u64,
    /// Print each case's phases on stderr as they end (inputs generated, on the device, a
    /// first call on its own with any kernel compilation, timed), with their wall times:
    /// where a long device run spends its minutes. Adds one call per case.
    #[arg(long)]
    trace: bool,
}

/// Parses `--dtype`: a float run dtype, or a usage error.
fn run_dtype(name: &str) -> Result<DType, String> {
    match DType::from_name(name) {
        Some(d) if d.is_float() => Ok(d),
        Some(d) => Err(format!("{d} is not a run dtype (f32, f16, bf16)")),
        None => Err(format!("unknown dtype `{name}` (f32, f16, bf16)")),
    }
}

/// The copy size in bytes and the GEMM side of the ceilings, with checked arithmetic.
fn ceiling_sizes(args: &BenchArgs) -> Result<(usize, usize), CommandError> {
    if args.quick {
        return Ok((8 << 20, 128));
    }
    let copy = (usize::try_from(args.copy_mib).ok()).and_then(|m| m.checked_mul(1 << 20));
    let copy =
        copy.ok_or_else(|| format!("--copy-mib {}: too large for this host", args.copy_mib))?;
    let gemm = usize::try_from(args.gemm_size)
        .map_err(|_| format!("--gemm-size {}: too large for this host", args.gemm_size))?;
    Ok((copy, gemm))
}

/// Runs `moemla bench`.
pub fn run(args: &BenchArgs, registry: &Registry) -> Result<ExitCode, CommandError> {
    let ops = parse_list(&args.ops, Op::from_name, "op")?;
    let ops = if ops.is_empty() {
        Op::ALL.to_vec()
    } else {
        ops
    };
    let dtypes = if args.dtypes.is_empty() {
        vec![DType::BF16, DType::F32]
    } else {
        args.dtypes.clone()
    };
    let (copy_bytes, gemm_size) = ceiling_sizes(args)?;
    let peer = match args.peer.as_deref() {
        None => None,
        Some(name) => Some(
            Peer::from_name(name)
                .ok_or_else(|| format!("unknown peer `{name}` (supported: numpy, torch)"))?,
        ),
    };
    let (suite, budget) = match (args.quick, args.device_shapes) {
        (true, _) => (Suite::Quick, Budget::QUICK),
        (_, true) => (Suite::Device, Budget::DEVICE),
        _ => (Suite::Standard, Budget::STANDARD),
    };
    let cases: Vec<BenchCase> = BenchCase::list(suite, &ops, &dtypes)
        .into_iter()
        .filter(|c| {
            let text = c.to_string();
            args.filters.is_empty() || args.filters.iter().any(|f| text.contains(f.as_str()))
        })
        .collect();
    let backends: Vec<_> = registry
        .discover()
        .into_iter()
        .filter(|e| args.backend.as_deref().is_none_or(|b| b == e.name))
        .collect();
    if backends.is_empty() {
        return Err(format!("no backend named {:?} is compiled in", args.backend).into());
    }
    // Ceiling sizes this machine cannot hold fail now, before anything is measured.
    for backend in backends.iter().filter_map(|e| e.backend.as_ref().ok()) {
        for &dtype in &dtypes {
            ceilings::check_fits(&**backend, dtype, copy_bytes, gemm_size)?;
        }
    }

    // The host's physical limits where a backend runs on this CPU: measured before the
    // first backend's rows and again after each such backend's rows (so between backends).
    let on_host = |b: &dyn Backend| b.info().device_kind == DeviceKind::Cpu;
    let mut hosts: Vec<HostLimits> = Vec::new();
    if (backends.iter().filter_map(|e| e.backend.as_ref().ok())).any(|b| on_host(&**b)) {
        hosts.push(host::measure(budget)?);
    }

    let mut all_rows = Vec::new();
    let mut all_ceilings = Vec::new();
    for entry in backends {
        let backend = match entry.backend {
            Ok(b) => b,
            Err(e) if args.backend.is_some() => return Err(e.into()),
            Err(e) => {
                println!("{}: skipped ({e})", entry.name);
                continue;
            }
        };
        let here = on_host(&*backend);
        let sizes = (copy_bytes, gemm_size);
        let host = hosts.last().filter(|_| here);
        let mut ceils = measure_ceilings(&*backend, &entry.name, &dtypes, sizes, budget, host)?;
        let bar = Progress::new(cases.len() as u64, &format!("{} cases", entry.name));
        let rows = bench_backend(&*backend, &cases, &ceils, budget, peer, &bar, args.trace);
        bar.finish();
        let mut rows = rows?;
        // Every ceiling again after the rows; each limit is the best of all its
        // measurements, so that a machine that was slower before the rows than during
        // them (a shared VM drifts) still bounds every row. A row still above a physical
        // limit means both measurements of it came out low (a neighbour held the machine
        // then, not during the rows): measured again, up to EXTRA_MEASUREMENTS times. The
        // rows are then related to those final ceilings.
        let mut measurements = 0;
        while !ceils.is_empty()
            && (measurements == 0
                || (measurements <= EXTRA_MEASUREMENTS && above(&rows, &ceils) > 0))
        {
            if here {
                hosts.push(host::measure(budget)?);
            }
            let host = hosts.last().filter(|_| here);
            let again = measure_ceilings(&*backend, &entry.name, &dtypes, sizes, budget, host)?;
            for c in &mut ceils {
                if let Some(a) = again.iter().find(|a| a.dtype == c.dtype) {
                    c.merge(a);
                }
            }
            measurements += 1;
        }
        for row in &mut rows {
            row.set_floor(ceils.iter().find(|c| c.dtype.name() == row.dtype));
        }
        let count = above(&rows, &ceils);
        if count > 0 {
            eprintln!("{}", above_note(&entry.name, count));
        }
        print!("{}", ceilings_text(&entry.name, &ceils));
        print!("{}", table(&rows, peer.map(Peer::name)));
        all_rows.extend(rows);
        all_ceilings.push((entry.name, ceils));
    }
    println!("{} cases measured", all_rows.len());

    if let Some(path) = &args.json {
        let ceilings: Vec<_> = all_ceilings
            .iter()
            .map(|(name, c)| serde_json::json!({"backend": name, "ceilings": c}))
            .collect();
        let doc = serde_json::json!({
            "host": HostLimits::best(&hosts),
            "host_measurements": hosts,
            "ceilings": ceilings,
            "rows": all_rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    let mut plots = Vec::new();
    if let Some(dir) = &args.plot {
        plots = plot::write(dir, &all_rows, peer.map_or("peer", Peer::name))?;
        for file in &plots {
            println!("plot: {}", file.display());
        }
    }
    if let Some(path) = &args.markdown {
        let mut doc = markdown(&all_ceilings, &all_rows, peer);
        doc += &plot_links(path, &plots);
        std::fs::write(path, doc)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Measurements of the ceilings after a backend's rows beyond the first, at most, while a
/// row comes out above a physical limit.
const EXTRA_MEASUREMENTS: usize = 3;

/// How many of `rows` came out above a physical limit among `ceils` (those of their dtype).
fn above<'r>(rows: impl IntoIterator<Item = &'r Row>, ceils: &[Ceilings]) -> usize {
    rows.into_iter()
        .filter(|r| {
            ceils
                .iter()
                .find(|c| c.dtype.name() == r.dtype)
                .is_some_and(|c| r.above_physical_limit(c))
        })
        .count()
}

/// What a report says of `count` rows of `backend` above a physical limit.
fn above_note(backend: &str, count: usize) -> String {
    format!(
        "warning: {count} {backend} row(s) came out above a physical limit (floor/time over \
         100%) after {} measurements of the ceilings: most likely none of them caught the \
         machine as quiet as the rows did (a neighbour on a shared host), so those limits \
         are low in this run (rerun at a quieter moment); else the row's byte or FLOP count \
         overstates what it moves or does",
        EXTRA_MEASUREMENTS + 2
    )
}

/// One measurement of `backend`'s ceilings for each of `dtypes` (with `host`: the floors
/// use the host's physical limits). Sizes this machine cannot hold are an error; any other
/// failure prints a note and returns no ceilings (the times still mean something, e.g.
/// without cuBLAS).
fn measure_ceilings(
    backend: &dyn Backend,
    name: &str,
    dtypes: &[DType],
    (copy_bytes, gemm_size): (usize, usize),
    budget: Budget,
    host: Option<&HostLimits>,
) -> Result<Vec<Ceilings>, CommandError> {
    let mut ceils = Vec::new();
    for &dtype in dtypes {
        match ceilings::measure(backend, dtype, copy_bytes, gemm_size, budget, host) {
            Ok(c) => ceils.push(c),
            // Sizes this machine cannot hold: the arguments are wrong, not the backend.
            Err(e @ (Error::OutOfMemory { .. } | Error::Size { .. })) => return Err(e.into()),
            Err(e) => {
                println!("{name}: no ceilings ({e}): times only");
                return Ok(Vec::new());
            }
        }
    }
    Ok(ceils)
}

/// Times every case on one backend (and in the peer, when asked: the cases it runs whose
/// inputs fit a file; the others' peer cell says n/a).
fn bench_backend(
    backend: &dyn Backend,
    cases: &[BenchCase],
    ceils: &[Ceilings],
    budget: Budget,
    peer: Option<Peer>,
    bar: &Progress,
    trace: bool,
) -> Result<Vec<Row>, CommandError> {
    let dir = std::env::temp_dir().join(format!("moemla-bench-{}", std::process::id()));
    if peer.is_some() {
        std::fs::create_dir_all(&dir)?;
    }
    let mut rows = Vec::new();
    // (row index, case file) of the cases the peer runs.
    let mut files: Vec<(usize, PathBuf)> = Vec::new();
    let info = backend.info();
    for (i, case) in cases.iter().enumerate() {
        bar.start(case.to_string());
        let _step = Step(bar);
        if !info.supports(case.op(), case.dtype()) {
            bar.suspend(|| println!("{}: {case}: not supported by this backend", backend.name()));
            continue;
        }
        let started = Instant::now();
        let inputs = generate(case)?;
        let traced = |phase: &str| {
            let s = started.elapsed().as_secs_f64();
            bar.suspend(|| eprintln!("trace: {case}: {phase} at {s:.2} s"));
        };
        let trace = trace.then_some(&traced as &dyn Fn(&str));
        if let Some(t) = trace {
            t("inputs generated");
        }
        let ceiling = ceils.iter().find(|c| c.dtype == case.dtype());
        match run_case(backend, case, &inputs, ceiling, budget, trace) {
            Ok(row) => rows.push(row),
            Err(Error::Unsupported { reason, .. }) => {
                bar.suspend(|| println!("{}: {case}: unsupported: {reason}", backend.name()));
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(p) = peer.filter(|p| p.runs(case)) {
            let file = dir.join(format!("case{i:03}.safetensors"));
            if peer::write_case(&file, case, &inputs)? {
                files.push((rows.len() - 1, file));
            } else {
                bar.suspend(|| {
                    println!("{case}: inputs too large for a {} case file: n/a", p.name())
                });
            }
        }
    }
    if let Some(p) = peer {
        bar.start(format!("{} peer", p.name()));
        let paths: Vec<PathBuf> = files.iter().map(|(_, f)| f.clone()).collect();
        let result = if paths.is_empty() {
            Ok(Outcome::Times(Vec::new()))
        } else {
            peer::run(p, &paths, budget)
        };
        std::fs::remove_dir_all(&dir)?;
        match result? {
            Outcome::Times(times) => {
                for ((row, _), time) in files.iter().zip(times) {
                    rows[*row].peer_time_s = Some(time);
                }
            }
            Outcome::Unavailable(why) => {
                bar.suspend(|| println!("{} peer skipped: {why}", p.name()));
            }
        }
    }
    Ok(rows)
}

/// Counts one progress step when dropped (a case done, skipped or failed).
struct Step<'a>(&'a Progress);

impl Drop for Step<'_> {
    fn drop(&mut self) {
        self.0.step();
    }
}

fn parse_list<T>(
    names: &[String],
    parse: fn(&str) -> Option<T>,
    what: &str,
) -> Result<Vec<T>, CommandError> {
    names
        .iter()
        .map(|n| parse(n).ok_or_else(|| format!("unknown {what} `{n}`").into()))
        .collect()
}

/// The Markdown report: machine, date, exact command, ceilings, table.
fn markdown(ceilings: &[(String, Vec<Ceilings>)], rows: &[Row], peer: Option<Peer>) -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut s = String::from("# moemla benchmarks\n\n");
    s += CEILINGS_EXPLAINED;
    s += "\n";
    s += &format!("- date: {}\n", utc_date());
    s += &format!("- machine: {}\n", machine());
    s += &format!("- command: `cargo run --release -- {}`\n\n", args.join(" "));
    for (name, c) in ceilings {
        s += &format!("```\n{}```\n\n", ceilings_text(name, c));
    }
    s += &table(rows, peer.map(Peer::name));
    for (name, c) in ceilings {
        let count = above(rows.iter().filter(|r| &r.backend == name), c);
        if count > 0 {
            s += &format!("\n{}\n", above_note(name, count));
        }
    }
    s += "\n";
    s += READING;
    s
}

/// The plots as Markdown images, linked relative to the report at `report` where they lie
/// under its directory (as given otherwise); empty without plots.
fn plot_links(report: &std::path::Path, plots: &[PathBuf]) -> String {
    if plots.is_empty() {
        return String::new();
    }
    let base = report.parent().unwrap_or(std::path::Path::new(""));
    let mut s = String::from("\n## Plots\n\n");
    for file in plots {
        let rel = file.strip_prefix(base).unwrap_or(file);
        let name = file
            .file_stem()
            .map_or("plot".into(), |n| n.to_string_lossy());
        s += &format!("![{name}]({})\n", rel.display());
    }
    s
}

/// The head of the Markdown report: what every ratio is against.
const CEILINGS_EXPLAINED: &str = "\
Regenerate with the command below. Every ratio is against ceilings measured by the same
command in the same run, before and after the backend's rows, and taken as the best of
those measurements (a measurement on a shared machine can only come out below the limit,
so the best is the tightest true limit the run knows; the ceilings below list them all).
Where a row still came out above a physical limit, both measurements caught the machine
busier than the rows did: the limits are measured again, up to three more times, and a
row that stays above one is flagged under the table:
`floor = max(bytes / memory limit, FLOPs / compute limit)`,
`floor/time` = 100% means at the limit, and the `of limit` column names the limit that sets
the floor. `vs numpy` / `vs torch` = our time / the peer's time on the same inputs (below
1.00x: faster; n/a: the peer does not run that case, or its inputs are too large for a file).

On the CPU the limits are physical, measured directly on every hardware thread: the memory
limit is the read bandwidth (a parallel read-only reduction over a buffer at least 8x the
last-level cache, every thread reading the part it wrote first, 2 MiB pages where the OS
gives them, the best of many passes; for rows whose data fits in the last-level cache, and
so stays there from one repetition to the next, the read bandwidth of a buffer in cache: the
largest of 4, 16, 64, ... MiB, up to the cache, that is at most the row's bytes, every
thread re-reading its part of it, and below 4 MiB (or a cache under 4 MiB) every thread
re-reading a 256 KiB buffer of its own; reading more bytes is never faster, so where a
larger buffer's rate, or memory's, came out higher, that is the limit; a cache of unknown
size holds no row), the compute limit the f32 FMA peak (a register-resident FMA
loop in the widest vector ISA the CPU has, enough independent accumulators to cover the
FMA latency) or, for bf16 rows, the larger of that and the native bf16 dot peak
where the CPU has one (AVX512-BF16 `VDPBF16PS`, or AMX-BF16 `TDPBF16PS` on four accumulator
tiles where the process may use AMX, the faster of the two): a bf16 product is exact in f32,
so any of these instructions computes it (AMD Zen 4/5 run `VDPBF16PS` at twice the FMA's
FLOP rate, Intel's AVX512-BF16 cores at half, and Intel's AMX tiles at about 14 times the
FMA's). No op can exceed them. The copy bandwidth and the `gemm`
crate's dense GEMM are measured too and shown as reference rates: achievable, not limits.
OpenCL measures the same two limits with its own kernels (a read-only reduction over a large
device buffer, a register-resident FMA kernel): on a GPU they are its floors, on a CPU
(PoCL) they are shown beside the host's as `device read BW` and `device f32 FMA peak`, and
the floors take the best of theirs and the host's (the same limits of the same cores).
Where a GPU backend has no such kernels (CUDA, HIP) the device copy and the backend's GEMM
are the ceilings, labelled achievable.
";

/// The tail of the Markdown report.
const READING: &str = "\
Reading the numbers:
- Each row's memory term uses the read bandwidth (decode and few-token experts read their
  weights or cache once); its compute term the peak of its dtype (FP8 rows run in bf16:
  the bf16 limit). The bytes and FLOPs are the minimum an op must move and do
  (FlashMLA's counts for MLA decode, 656 bytes per FP8 cache row, and its sparse decode
  counts; FP8 experts: one byte per weight of the routed experts plus their block scales).
- A decode step row (`mla_cache_write` of one token per sequence into the pool, then
  `mla_decode`) shows the decode alone beside its time: the step should cost the decode
  plus the write.
- Only backends available on the machine that ran the command appear. GPU numbers
  come from `scripts/device-check.sh` on the GPU (CUDA: FlashMLA's shapes included).
";

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{model}, {cpus} hardware threads")
}

/// Today's date in UTC (YYYY-MM-DD), from the system clock.
fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil-from-days (Howard Hinnant's algorithm, public domain description).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
