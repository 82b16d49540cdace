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
    /// The budget of a real benchmark run.
    pub const STANDARD: Budget = Budget {
        warmup: 1,
        min_reps: 3,
        max_reps: 30,
        target: Duration::from_millis(1500),
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
