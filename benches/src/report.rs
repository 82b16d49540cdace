//! Result rows and their text, JSON and Markdown forms.

use crate::case::BenchCase;
use crate::ceilings::{Ceilings, Limit};
use crate::cost::Cost;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// One case's measurement against the roofline.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Backend name.
    pub backend: String,
    /// Op name.
    pub op: String,
    /// Run dtype.
    pub dtype: String,
    /// Human-readable case (op, dtype, shape).
    pub case: String,
    /// What sets the case apart from a plain one of its op and dtype ("fp8 w8a16", "fp8
    /// cache", "append dense"; empty for none).
    pub variant: String,
    /// The case's dims by name (`T`, `E`, `sk`, ...: [`BenchCase::dims`]).
    pub dims: BTreeMap<&'static str, usize>,
    /// Median time, seconds.
    pub time_s: f64,
    /// Bytes moved (minimum traffic).
    pub bytes: f64,
    /// FLOPs.
    pub flops: f64,
    /// Achieved GB/s (bytes / time).
    pub gb_per_s: f64,
    /// Achieved GFLOP/s.
    pub gflop_per_s: f64,
    /// Roofline floor: max(bytes / memory rate, flops / compute rate), seconds (None when
    /// the backend provides no ceilings).
    pub floor_s: Option<f64>,
    /// "memory" or "compute": which term sets the floor.
    pub bound: Option<&'static str>,
    /// floor / time: 1.0 means at the roofline.
    pub roofline_ratio: Option<f64>,
    /// The ceiling `roofline_ratio` is against (the one that sets the floor), e.g.
    /// "read BW" or "bf16 dot peak"; "(achievable)" in the name marks a rate that is not
    /// a physical limit.
    pub limit: Option<String>,
    /// The memory ceiling of the floor's memory term.
    pub memory_limit: Option<String>,
    /// The compute ceiling of the floor's compute term.
    pub compute_limit: Option<String>,
    /// The peer's median time on the same inputs, seconds (`None`: the peer was not run
    /// or cannot run this case).
    pub peer_time_s: Option<f64>,
    /// Times of parts of the case measured beside it, seconds (a decode step: the decode
    /// alone).
    pub parts: Vec<(String, f64)>,
}

impl Row {
    /// A row from a measured time and the run's ceilings.
    pub fn new(
        backend: &str,
        case: &BenchCase,
        cost: Cost,
        time: Duration,
        ceilings: Option<&Ceilings>,
    ) -> Row {
        let t = time.as_secs_f64();
        let mut row = Row {
            backend: backend.to_string(),
            op: case.op().name().to_string(),
            dtype: case.dtype().name().to_string(),
            case: case.to_string(),
            variant: case.variant().to_string(),
            dims: case.dims(),
            time_s: t,
            bytes: cost.bytes,
            flops: cost.flops,
            gb_per_s: cost.bytes / t / 1e9,
            gflop_per_s: cost.flops / t / 1e9,
            floor_s: None,
            bound: None,
            roofline_ratio: None,
            limit: None,
            memory_limit: None,
            compute_limit: None,
            peer_time_s: None,
            parts: Vec::new(),
        };
        row.set_floor(ceilings);
        row
    }

    /// Relates the row to `ceilings` (none: no floor): the floor, which term sets it, the
    /// ratio and the names of the limits. The bench calls it again once the run's last
    /// ceilings are measured, so every row is against the best of all of them.
    pub fn set_floor(&mut self, ceilings: Option<&Ceilings>) {
        let memory = ceilings.map(|c| c.memory_limit_for(self.bytes));
        let terms = ceilings
            .zip(memory)
            .map(|(c, m)| (self.bytes / m.rate, self.flops / c.compute.rate));
        let floor = terms.map(|(mem, compute)| mem.max(compute));
        let memory_bound = terms.map(|(mem, compute)| mem >= compute);
        self.floor_s = floor;
        self.bound = memory_bound.map(|m| if m { "memory" } else { "compute" });
        self.roofline_ratio = floor.map(|f| f / self.time_s);
        self.limit = ceilings.zip(memory).zip(memory_bound).map(|((c, mem), m)| {
            if m {
                mem.name.clone()
            } else {
                c.compute.name.clone()
            }
        });
        self.memory_limit = memory.map(|m| m.name.clone());
        self.compute_limit = ceilings.map(|c| c.compute.name.clone());
    }

    /// Whether the row moved its bytes or did its FLOPs faster than a physical limit among
    /// `ceilings` allows: no op can, so a measurement of that limit came out low (the
    /// machine was busier then than during the row: a neighbour on a shared host).
    pub fn above_physical_limit(&self, ceilings: &Ceilings) -> bool {
        let memory = ceilings.memory_limit_for(self.bytes);
        let over = |limit: &Limit, amount: f64| limit.physical && amount / self.time_s > limit.rate;
        over(memory, self.bytes) || over(&ceilings.compute, self.flops)
    }

    /// Our time / the peer's time (below 1: we are faster).
    pub fn vs_peer(&self) -> Option<f64> {
        self.peer_time_s.map(|p| self.time_s / p)
    }
}

/// The ceilings as a short text block: the two each floor uses, then the reference rates.
pub fn ceilings_text(backend: &str, ceilings: &[Ceilings]) -> String {
    let mut s = String::new();
    for c in ceilings {
        let _ = writeln!(
            s,
            "ceilings [{backend}, {}]: memory {} ; compute {}",
            c.dtype,
            limit_text(&c.memory),
            limit_text(&c.compute)
        );
        if let (Some(l), Some(fits)) = (&c.memory_in_cache, c.cache_bytes.filter(|&b| b > 0)) {
            let _ = match c.cache_steps.first() {
                Some(first) => writeln!(
                    s,
                    "  rows moving less than {} MiB: memory {}",
                    mib(first.from_bytes),
                    limit_text(l)
                ),
                None => writeln!(
                    s,
                    "  rows moving at most {} MiB (the last-level cache): memory {}",
                    mib(fits),
                    limit_text(l)
                ),
            };
            for (i, step) in c.cache_steps.iter().enumerate() {
                let to = match c.cache_steps.get(i + 1) {
                    Some(next) => format!("to {} MiB", mib(next.from_bytes)),
                    None => format!("up to the last-level cache ({} MiB)", mib(fits)),
                };
                let _ = writeln!(
                    s,
                    "  rows moving {} MiB {to}: memory {}",
                    mib(step.from_bytes),
                    limit_text(&step.limit)
                );
            }
        }
        for r in &c.reference {
            let _ = writeln!(s, "  reference, no floor uses it: {}", limit_text(r));
        }
    }
    s
}

/// `bytes` in MiB: whole, or with one decimal.
fn mib(bytes: usize) -> String {
    let m = bytes as f64 / (1 << 20) as f64;
    if m.fract() == 0.0 {
        format!("{m}")
    } else {
        format!("{m:.1}")
    }
}

/// "read BW 61.2 GB/s (physical limit; how; best of 58.0, 61.2 measured before and after
/// the rows)".
fn limit_text(l: &Limit) -> String {
    let kind = if l.physical {
        "physical limit"
    } else {
        "achievable rate, not a limit"
    };
    let mut s = format!(
        "{} {:.1} G{} ({kind}; {}",
        l.name,
        l.rate / 1e9,
        l.unit,
        l.how
    );
    if l.measured.len() > 1 {
        let all: Vec<String> = l
            .measured
            .iter()
            .map(|r| format!("{:.1}", r / 1e9))
            .collect();
        let when = match l.measured.len() {
            2 => "before and after the rows",
            _ => "before the rows, after them and again (a row had come out above a limit)",
        };
        let _ = write!(s, "; best of {} measured {when}", all.join(", "));
    }
    s + ")"
}

/// The rows as an aligned text table (also valid Markdown); the last column compares with
/// `peer` ("numpy", "torch"): our time / the peer's, "n/a" where the peer ran but cannot
/// run the case.
pub fn table(rows: &[Row], peer: Option<&str>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| backend | case | time | GB/s | GFLOP/s | floor | floor/time | of limit | vs {} |",
        peer.unwrap_or("peer")
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {:.1} | {} | {} | {} | {} |",
            r.backend,
            r.case,
            time_text(r),
            r.gb_per_s,
            r.gflop_per_s,
            r.floor_s.map_or("-".into(), fmt_time),
            r.roofline_ratio
                .map_or("-".into(), |x| format!("{:.0}%", 100.0 * x)),
            r.limit.as_deref().unwrap_or("-"),
            r.vs_peer()
                .map(|v| format!("{v:.2}x ({})", fmt_time(r.peer_time_s.unwrap_or(0.0))))
                .unwrap_or_else(|| if peer.is_some() { "n/a" } else { "-" }.into()),
        );
    }
    s
}

/// The time cell: the median, then any parts ("4.10 ms (decode alone 4.00 ms)").
fn time_text(r: &Row) -> String {
    let mut s = fmt_time(r.time_s);
    for (name, t) in &r.parts {
        let _ = write!(s, " ({name} {})", fmt_time(*t));
    }
    s
}

/// Seconds in the most readable unit.
pub fn fmt_time(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2} s")
    } else if seconds >= 1e-3 {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        format!("{:.1} us", seconds * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::DType;

    fn ceilings() -> Ceilings {
        let limit = |name: &str, rate, unit| Limit::new(name, rate, unit, true, "test".into());
        Ceilings {
            dtype: DType::F32,
            memory: limit("read BW", 10e9, "B/s"),
            memory_in_cache: Some(limit("cache read BW", 100e9, "B/s")),
            cache_steps: vec![crate::ceilings::CacheLimit {
                from_bytes: 256 << 10,
                limit: limit("read BW at 0 MiB", 50e9, "B/s"),
            }],
            cache_bytes: Some(1 << 20),
            compute: limit("f32 FMA peak", 100e9, "FLOP/s"),
            reference: vec![limit("copy BW", 1e12, "B/s")],
        }
    }

    #[test]
    fn floor_is_the_larger_of_memory_and_compute_time() {
        let case = BenchCase::Route {
            tokens: 1,
            experts: 256,
            params: moemla_core::RouteParams::deepseek_v3(),
        };
        let row_at = |bytes, flops, time| {
            let cost = Cost { bytes, flops };
            Row::new("cpu", &case, cost, time, Some(&ceilings()))
        };
        // 1 GB at 10 GB/s = 0.1 s; 1 GFLOP at 100 GFLOP/s = 0.01 s -> memory bound.
        let row = row_at(1e9, 1e9, Duration::from_millis(200));
        assert_eq!(row.bound, Some("memory"));
        assert_eq!(row.limit.as_deref(), Some("read BW"));
        assert!((row.floor_s.unwrap() - 0.1).abs() < 1e-12);
        assert!((row.roofline_ratio.unwrap() - 0.5).abs() < 1e-9);
        let row = row_at(1e6, 1e11, Duration::from_secs(4));
        assert_eq!(row.bound, Some("compute"));
        assert_eq!(row.limit.as_deref(), Some("f32 FMA peak"));
        assert!((row.roofline_ratio.unwrap() - 0.25).abs() < 1e-9);
        // 100 kB fits in the (1 MiB) cache: against the cache read bandwidth.
        let row = row_at(1e5, 1e3, Duration::from_micros(4));
        assert_eq!(row.limit.as_deref(), Some("cache read BW"));
        assert!((row.floor_s.unwrap() - 1e-6).abs() < 1e-15);
        // 500 kB: at least the cache step's 256 KiB, at most the cache: the step's rate.
        let row = row_at(5e5, 1e3, Duration::from_micros(20));
        assert_eq!(row.limit.as_deref(), Some("read BW at 0 MiB"));
        assert!((row.floor_s.unwrap() - 1e-5).abs() < 1e-15);
        let cost = Cost {
            bytes: 5e5,
            flops: 1e3,
        };
        let mut row = Row::new("cpu", &case, cost, Duration::from_secs(4), None);
        assert_eq!((row.floor_s, row.roofline_ratio), (None, None));
        assert_eq!(row.limit, None);
        // Parts follow the time; a peer that could not run the case says n/a.
        row.parts.push(("decode alone".into(), 0.002));
        let text = table(&[row.clone()], Some("torch"));
        assert!(text.contains("| 4.00 s (decode alone 2.00 ms) |"), "{text}");
        assert!(
            text.contains("vs torch |") && text.trim_end().ends_with("| n/a |"),
            "{text}"
        );
        row.peer_time_s = Some(2.0);
        let text = table(&[row], None);
        assert!(text.trim_end().ends_with("| 2.00x (2.00 s) |"), "{text}");
    }

    #[test]
    fn a_row_faster_than_a_physical_limit_is_told_apart() {
        let case = BenchCase::Route {
            tokens: 1,
            experts: 256,
            params: moemla_core::RouteParams::deepseek_v3(),
        };
        let row = |bytes: f64, flops: f64, ms: u64| {
            let cost = Cost { bytes, flops };
            Row::new("cpu", &case, cost, Duration::from_millis(ms), None)
        };
        let c = ceilings();
        // 1 GB in 200 ms (5 GB/s) and 1 GFLOP: within both limits.
        assert!(!row(1e9, 1e9, 200).above_physical_limit(&c));
        // 1 GB in 80 ms: 12.5 GB/s, above the 10 GB/s read BW.
        assert!(row(1e9, 1e6, 80).above_physical_limit(&c));
        // 100 GFLOP in 500 ms: 200 GFLOP/s, above the 100 GFLOP/s FMA peak.
        assert!(row(1e6, 1e11, 500).above_physical_limit(&c));
        // 100 kB in 2 us (50 GB/s) fits in the cache: against its 100 GB/s, within.
        let small = Row::new(
            "cpu",
            &case,
            Cost {
                bytes: 1e5,
                flops: 1e3,
            },
            Duration::from_micros(2),
            None,
        );
        assert!(!small.above_physical_limit(&c));
        // Above an achievable rate is no contradiction: a good op may beat a device copy.
        let mut achievable = c.clone();
        achievable.memory.physical = false;
        assert!(!row(1e9, 1e6, 80).above_physical_limit(&achievable));
    }

    #[test]
    fn a_row_is_related_again_to_the_final_ceilings() {
        let case = BenchCase::Route {
            tokens: 1,
            experts: 256,
            params: moemla_core::RouteParams::deepseek_v3(),
        };
        // 1 GB in 80 ms is 12.5 GB/s: above the 10 GB/s read BW measured before the rows.
        let cost = Cost {
            bytes: 1e9,
            flops: 1e6,
        };
        let before = ceilings();
        let mut row = Row::new("cpu", &case, cost, Duration::from_millis(80), Some(&before));
        assert!((row.roofline_ratio.unwrap() - 1.25).abs() < 1e-9);
        // Measured again after the rows at 20 GB/s: the best of the two is the limit.
        let mut after = ceilings();
        after.memory = Limit::new("read BW", 20e9, "B/s", true, "test".into());
        let mut best = before.clone();
        best.merge(&after);
        row.set_floor(Some(&best));
        assert!((row.roofline_ratio.unwrap() - 0.625).abs() < 1e-9);
        assert!((row.floor_s.unwrap() - 0.05).abs() < 1e-12);
        assert_eq!(row.limit.as_deref(), Some("read BW"));
        let text = ceilings_text("cpu", &[best]);
        assert!(
            text.contains("read BW 20.0 GB/s (physical limit; test; best of 10.0, 20.0 measured before and after the rows)"),
            "{text}"
        );
        // A limit measured once says nothing of a best.
        let once = ceilings_text("cpu", &[before]);
        assert!(
            once.contains("read BW 10.0 GB/s (physical limit; test) ") && !once.contains("best"),
            "{once}"
        );
        row.set_floor(None);
        assert_eq!(
            (row.floor_s, row.roofline_ratio, row.limit),
            (None, None, None)
        );
    }

    #[test]
    fn ceilings_text_names_the_bytes_each_cache_limit_covers() {
        let mut c = ceilings();
        let step = |from_bytes, rate| crate::ceilings::CacheLimit {
            from_bytes,
            limit: Limit::new("step", rate, "B/s", true, "test".into()),
        };
        c.cache_steps = vec![step(256 << 10, 50e9), step(512 << 10, 40e9)];
        c.cache_bytes = Some(3 << 19);
        let text = ceilings_text("cpu", &[c.clone()]);
        for line in [
            "  rows moving less than 0.2 MiB: memory cache read BW",
            "  rows moving 0.2 MiB to 0.5 MiB: memory step 50.0 GB/s",
            "  rows moving 0.5 MiB up to the last-level cache (1.5 MiB): memory step 40.0 GB/s",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        // No steps: one line for the whole cache; a cache of unknown size (0): none.
        c.cache_steps.clear();
        let text = ceilings_text("cpu", &[c.clone()]);
        assert!(
            text.contains("  rows moving at most 1.5 MiB (the last-level cache): memory cache"),
            "{text}"
        );
        c.cache_bytes = Some(0);
        assert!(!ceilings_text("cpu", &[c]).contains("rows moving"));
    }
}
