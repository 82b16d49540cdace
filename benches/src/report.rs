//! Result rows and their text, JSON and Markdown forms.

use crate::case::BenchCase;
use crate::ceilings::Ceilings;
use crate::cost::Cost;
use serde::Serialize;
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
    /// Roofline floor: max(bytes / bandwidth, flops / GEMM rate), seconds (None when the
    /// backend provides no ceilings).
    pub floor_s: Option<f64>,
    /// "memory" or "compute": which term sets the floor.
    pub bound: Option<&'static str>,
    /// floor / time: 1.0 means at the roofline.
    pub roofline_ratio: Option<f64>,
    /// The peer's (numpy's) median time on the same inputs, seconds.
    pub peer_time_s: Option<f64>,
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
        let terms = ceilings.map(|c| (cost.bytes / c.bandwidth, cost.flops / c.gemm_rate));
        let floor = terms.map(|(mem, compute)| mem.max(compute));
        Row {
            backend: backend.to_string(),
            op: case.op().name().to_string(),
            dtype: case.dtype().name().to_string(),
            case: case.to_string(),
            time_s: t,
            bytes: cost.bytes,
            flops: cost.flops,
            gb_per_s: cost.bytes / t / 1e9,
            gflop_per_s: cost.flops / t / 1e9,
            floor_s: floor,
            bound: terms.map(|(mem, compute)| if mem >= compute { "memory" } else { "compute" }),
            roofline_ratio: floor.map(|f| f / t),
            peer_time_s: None,
        }
    }

    /// Our time / the peer's time (below 1: we are faster).
    pub fn vs_peer(&self) -> Option<f64> {
        self.peer_time_s.map(|p| self.time_s / p)
    }
}

/// The ceilings as a short text block.
pub fn ceilings_text(backend: &str, ceilings: &[Ceilings]) -> String {
    let mut s = String::new();
    for c in ceilings {
        let _ = writeln!(
            s,
            "ceilings [{backend}, {}]: copy {:.1} GB/s ({} MiB buffer, read+write); dense GEMM {:.1} GFLOP/s ({n}x{n}x{n}, {})",
            c.dtype,
            c.bandwidth / 1e9,
            c.copy_bytes >> 20,
            c.gemm_rate / 1e9,
            c.gemm_impl,
            n = c.gemm_size,
        );
    }
    s
}

/// The rows as an aligned text table (also valid Markdown).
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| backend | case | time | GB/s | GFLOP/s | floor | bound | floor/time | vs numpy |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {:.1} | {} | {} | {} | {} |",
            r.backend,
            r.case,
            fmt_time(r.time_s),
            r.gb_per_s,
            r.gflop_per_s,
            r.floor_s.map_or("-".into(), fmt_time),
            r.bound.unwrap_or("-"),
            r.roofline_ratio
                .map_or("-".into(), |x| format!("{:.0}%", 100.0 * x)),
            r.vs_peer()
                .map(|v| format!("{v:.2}x ({})", fmt_time(r.peer_time_s.unwrap_or(0.0))))
                .unwrap_or_else(|| "-".into()),
        );
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
        Ceilings {
            dtype: DType::F32,
            bandwidth: 10e9,
            copy_bytes: 1 << 20,
            gemm_rate: 100e9,
            gemm_size: 512,
            gemm_impl: "test".into(),
        }
    }

    #[test]
    fn floor_is_the_larger_of_memory_and_compute_time() {
        let case = BenchCase::Route {
            tokens: 1,
            experts: 256,
            params: moemla_core::RouteParams::deepseek_v3(),
        };
        // 1 GB at 10 GB/s = 0.1 s; 1 GFLOP at 100 GFLOP/s = 0.01 s -> memory bound.
        let cost = Cost {
            bytes: 1e9,
            flops: 1e9,
        };
        let row = Row::new(
            "cpu",
            &case,
            cost,
            Duration::from_millis(200),
            Some(&ceilings()),
        );
        assert_eq!(row.bound, Some("memory"));
        assert!((row.floor_s.unwrap() - 0.1).abs() < 1e-12);
        assert!((row.roofline_ratio.unwrap() - 0.5).abs() < 1e-9);
        let cost = Cost {
            bytes: 1e6,
            flops: 1e11,
        };
        let row = Row::new(
            "cpu",
            &case,
            cost,
            Duration::from_secs(4),
            Some(&ceilings()),
        );
        assert_eq!(row.bound, Some("compute"));
        assert!((row.roofline_ratio.unwrap() - 0.25).abs() < 1e-9);
        let row = Row::new("cpu", &case, cost, Duration::from_secs(4), None);
        assert_eq!((row.floor_s, row.roofline_ratio), (None, None));
    }
}
