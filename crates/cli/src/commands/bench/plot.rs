//! `moemla bench --plot DIR`: SVG plots, log-log, of each op's time and fraction of its
//! limit against seqlen (`sk`), tokens (`T`) and experts (`E`), one series per backend,
//! dtype and the other dims, and one per peer.

use moemla_benches::report::Row;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a plot shows on its y axis.
#[derive(Clone, Copy)]
enum Measure {
    Time,
    OfLimit,
}

impl Measure {
    fn file_part(self) -> &'static str {
        match self {
            Measure::Time => "time",
            Measure::OfLimit => "of_limit",
        }
    }

    fn axis(self) -> &'static str {
        match self {
            Measure::Time => "time (s)",
            Measure::OfLimit => "floor / time (fraction of the limit)",
        }
    }

    /// The value of `row` (ours) and of its peer, where known.
    fn values(self, row: &Row) -> (Option<f64>, Option<f64>) {
        match self {
            Measure::Time => (Some(row.time_s), row.peer_time_s),
            Measure::OfLimit => (
                row.roofline_ratio,
                row.floor_s.zip(row.peer_time_s).map(|(f, p)| f / p),
            ),
        }
    }
}

/// One line: its name and its (x, y) points, sorted by x.
type Series = (String, Vec<(f64, f64)>);

/// The x dims plotted: seqlen, tokens, experts.
const X_DIMS: [&str; 3] = ["sk", "T", "E"];

/// Writes the plots of `rows` into `dir` (created if missing); returns the files written.
/// An op is plotted against each x dim its rows carry, where that dim varies or is the
/// op's first x dim (so that a single-shape run still gets one plot per op). The peer is
/// named `peer`.
pub fn write(dir: &Path, rows: &[Row], peer: &str) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--plot {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    let mut ops: Vec<&str> = rows.iter().map(|r| r.op.as_str()).collect();
    ops.dedup();
    ops.sort_unstable();
    ops.dedup();
    for op in ops {
        let of_op: Vec<&Row> = rows.iter().filter(|r| r.op == op).collect();
        let dims: Vec<&str> = X_DIMS
            .iter()
            .copied()
            .filter(|d| of_op.iter().all(|r| r.dims.contains_key(d)))
            .collect();
        for (i, &x) in dims.iter().enumerate() {
            let varies = of_op.windows(2).any(|w| w[0].dims[x] != w[1].dims[x]);
            if !varies && i > 0 {
                continue;
            }
            for measure in [Measure::Time, Measure::OfLimit] {
                let series = series(&of_op, x, measure, peer);
                if series.is_empty() {
                    continue;
                }
                let file = dir.join(format!("{op}_{}_vs_{x}.svg", measure.file_part()));
                let title = format!("{op}: {} vs {x}", measure.file_part());
                draw(&file, &title, x, measure.axis(), &series)
                    .map_err(|e| format!("plot {}: {e}", file.display()))?;
                files.push(file);
            }
        }
    }
    Ok(files)
}

/// The series of `rows` against dim `x`: rows grouped by backend, dtype and every other
/// dim; the peer's values as series of their own.
fn series(rows: &[&Row], x: &str, measure: Measure, peer: &str) -> Vec<Series> {
    let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut peers: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows {
        let rest: Vec<String> = (r.dims.iter())
            .filter(|(k, _)| **k != x)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let kind = match r.variant.as_str() {
            "" => r.dtype.to_lowercase(),
            v => format!("{} {v}", r.dtype.to_lowercase()),
        };
        let label = format!("{kind} {}", rest.join(" "));
        let xv = r.dims[x] as f64;
        let (ours, theirs) = measure.values(r);
        if let Some(y) = ours.filter(|y| *y > 0.0 && y.is_finite()) {
            let name = format!("{} {}", r.backend, label);
            groups.entry(name).or_default().push((xv, y));
        }
        if let Some(y) = theirs.filter(|y| *y > 0.0 && y.is_finite()) {
            // The same inputs ran in the peer once per backend: keep the first.
            let name = format!("{peer} {}", label);
            let points = peers.entry(name).or_default();
            if !points.iter().any(|p| p.0 == xv) {
                points.push((xv, y));
            }
        }
    }
    let mut out: Vec<Series> = groups.into_iter().chain(peers).collect();
    for (_, points) in &mut out {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// A log-log range around `values` (a factor 2 of room; a single value gets one too).
fn range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() && hi > 0.0 {
        lo / 2.0..hi * 2.0
    } else {
        1.0..10.0
    }
}

/// Draws `series` as lines with point markers into the SVG file `file`.
fn draw(
    file: &Path,
    title: &str,
    x: &str,
    y_axis: &str,
    series: &[Series],
) -> Result<(), Box<dyn std::error::Error>> {
    let points = || series.iter().flat_map(|s| s.1.iter().copied());
    let (xs, ys) = (range(points().map(|p| p.0)), range(points().map(|p| p.1)));
    let root = SVGBackend::new(file, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(xs.log_scale(), ys.log_scale())?;
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc(y_axis)
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)).point_size(3))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_benches::cost::Cost;
    use moemla_benches::BenchCase;
    use moemla_core::DType;
    use std::time::Duration;

    fn mla(seqlen: usize, time_ms: u64) -> Row {
        let case = BenchCase::Mla {
            dtype: DType::BF16,
            batch: 4,
            s_q: 1,
            h_q: 16,
            seqlen,
            block_size: 64,
        };
        let cost = Cost {
            bytes: 1e6 * seqlen as f64,
            flops: 1e6,
        };
        let mut row = Row::new("cpu", &case, cost, Duration::from_millis(time_ms), None);
        row.peer_time_s = Some(time_ms as f64 * 2e-3);
        row
    }

    #[test]
    fn writes_valid_svg_with_one_series_per_backend_and_peer() {
        let dir = std::env::temp_dir().join(format!("moemla-plot-test-{}", std::process::id()));
        let rows = vec![mla(1024, 2), mla(4096, 8)];
        let files = write(&dir, &rows, "numpy").unwrap();
        // No floor (no ceilings): the time plot only, against seqlen.
        assert_eq!(files, vec![dir.join("mla_decode_time_vs_sk.svg")]);
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        assert!(svg.contains("cpu bf16 b=4 blk=64 h_q=16 s_q=1"), "{svg}");
        assert!(svg.contains("numpy bf16 b=4 blk=64 h_q=16 s_q=1"), "{svg}");
        assert!(svg.contains("mla_decode: time vs sk"), "{svg}");
        // Two series of two points: each a 2-wide polyline and two point markers.
        let lines = svg
            .lines()
            .filter(|l| l.starts_with("<polyline") && l.contains("stroke-width=\"2\""));
        assert_eq!(lines.count(), 2, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 4, "{svg}");
    }
}
