//! Median wall-clock time of a device operation, after warm-up.

use moemla_core::{Backend, Result};
use std::time::{Duration, Instant};

/// How long and how often to repeat a measurement.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Untimed runs first (kernel compilation, caches, page faults).
    pub warmup: usize,
    /// At least this many timed runs...
    pub min_reps: usize,
    /// ...and at most this many...
    pub max_reps: usize,
    /// ...stopping once this much time has been spent on timed runs.
    pub target: Duration,
}

impl Budget {
    /// The budget of a real benchmark run: its timed runs span the target time, however
    /// short the op. With at most 30 runs, a 0.4 ms decode was timed over 12 ms, and a
    /// stretch of ~20 ms at half speed right after a large case (one of a 2-core guest's
    /// cores busy elsewhere: measured in one process, 24 calls in a row at 0.73-1.00 ms
    /// between calls at 0.37-0.47 ms) set the median: the bench's h_q 16 decodes right
    /// after an experts case came out up to 2x slower than alone.
    pub const STANDARD: Budget = Budget {
        warmup: 1,
        min_reps: 3,
        max_reps: 10_000,
        target: Duration::from_millis(1500),
    };
    /// The budget of `--device-shapes` on an accelerator: at most 30 timed runs, as sized
    /// for the lent GPU's counted minutes (docs/gpu-notes.md), where the timing is the
    /// device's own work.
    pub const DEVICE: Budget = Budget {
        max_reps: 30,
        ..Budget::STANDARD
    };
    /// The budget of the CI smoke run (harness correctness only).
    pub const QUICK: Budget = Budget {
        warmup: 1,
        min_reps: 2,
        max_reps: 3,
        target: Duration::from_millis(50),
    };
}

/// Runs `op` (followed by `backend.synchronize()`) under `budget`; returns the median time
/// of the timed runs.
pub fn median_time(
    backend: &dyn Backend,
    budget: Budget,
    mut op: impl FnMut() -> Result<()>,
) -> Result<Duration> {
    for _ in 0..budget.warmup {
        op()?;
        backend.synchronize()?;
    }
    let mut times = Vec::with_capacity(budget.max_reps);
    let started = Instant::now();
    while times.len() < budget.min_reps
        || (times.len() < budget.max_reps && started.elapsed() < budget.target)
    {
        let t0 = Instant::now();
        op()?;
        backend.synchronize()?;
        times.push(t0.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}
