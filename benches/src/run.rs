//! Runs one case on one backend and turns its time into a [`Row`].

use crate::case::BenchCase;
use crate::ceilings::Ceilings;
use crate::cost::cost;
use crate::inputs::BenchInputs;
use crate::report::Row;
use crate::timing::{median_time, Budget};
use moemla_core::{ops, Backend, DeviceTensor, ExpertsParams, Result};
use std::time::Duration;

/// The op of `case`, bound to its uploaded inputs, ready to be called repeatedly.
pub struct Prepared<'a> {
    backend: &'a dyn Backend,
    case: &'a BenchCase,
    args: Vec<DeviceTensor>,
}

impl<'a> Prepared<'a> {
    /// Uploads `inputs` to `backend`.
    pub fn new(
        backend: &'a dyn Backend,
        case: &'a BenchCase,
        inputs: &BenchInputs,
    ) -> Result<Self> {
        let args = inputs
            .tensors
            .iter()
            .map(|(_, t)| backend.upload(t))
            .collect::<Result<Vec<_>>>()?;
        Ok(Prepared {
            backend,
            case,
            args,
        })
    }

    /// Runs the op once (asynchronously where the backend is).
    pub fn call(&self) -> Result<()> {
        let b = self.backend;
        let a = &self.args;
        match self.case {
            BenchCase::Route { params, .. } => {
                ops::moe_route(b, &a[0], Some(&a[1]), params).map(drop)
            }
            BenchCase::Experts { .. } => ops::moe_experts(
                b,
                &a[0],
                &a[1],
                &a[2],
                &a[3],
                &a[4],
                &ExpertsParams::default(),
            )
            .map(drop),
            BenchCase::Mla { .. } => {
                ops::mla_decode(b, &a[0], &a[1], &a[2], &a[3], &BenchCase::mla_params()).map(drop)
            }
        }
    }

    /// Median time of the op under `budget`.
    pub fn time(&self, budget: Budget) -> Result<Duration> {
        median_time(self.backend, budget, || self.call())
    }
}

/// Times `case` on `backend` and relates the time to `ceilings`.
pub fn run_case(
    backend: &dyn Backend,
    case: &BenchCase,
    inputs: &BenchInputs,
    ceilings: Option<&Ceilings>,
    budget: Budget,
) -> Result<Row> {
    let time = Prepared::new(backend, case, inputs)?.time(budget)?;
    Ok(Row::new(
        backend.name(),
        case,
        cost(case, inputs.used_experts),
        time,
        ceilings,
    ))
}
