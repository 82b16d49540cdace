//! Runs one case on one backend and turns its time into a [`Row`].

use crate::case::BenchCase;
use crate::ceilings::Ceilings;
use crate::cost::cost;
use crate::inputs::BenchInputs;
use crate::report::Row;
use crate::timing::{median_time, Budget};
use moemla_core::ops::{self, ExpertsInputs, SparseDecodeInputs};
use moemla_core::{Backend, CacheWriteParams, DeviceTensor, ExpertWeight, Result};
use std::time::Duration;

/// The op of `case`, bound to its uploaded inputs, ready to be called repeatedly.
pub struct Prepared<'a> {
    backend: &'a dyn Backend,
    case: &'a BenchCase,
    args: Vec<DeviceTensor>,
}

impl<'a> Prepared<'a> {
    /// Uploads `inputs` to `backend` (large generated tensors are filled on the device
    /// side, outside any timed region).
    pub fn new(
        backend: &'a dyn Backend,
        case: &'a BenchCase,
        inputs: &BenchInputs,
    ) -> Result<Self> {
        let mut args = inputs
            .tensors
            .iter()
            .map(|(_, t)| t.upload(backend))
            .collect::<Result<Vec<_>>>()?;
        // Expert weights laid out for the backend once, as an engine loads them.
        if matches!(
            case,
            BenchCase::Experts { .. } | BenchCase::Fp8Experts { .. }
        ) {
            args[1] = ops::pack_expert_weights(backend, &args[1], ExpertWeight::GateUp)?;
            args[2] = ops::pack_expert_weights(backend, &args[2], ExpertWeight::Down)?;
        }
        Ok(Prepared {
            backend,
            case,
            args,
        })
    }

    /// Runs the op once (asynchronously where the backend is). A decode step writes its
    /// tokens into the cache pool (the same slots every time), then decodes.
    pub fn call(&mut self) -> Result<()> {
        let b = self.backend;
        let case = self.case;
        let a = &mut self.args;
        match case {
            BenchCase::Route { params, .. } => {
                ops::moe_route(b, &a[0], Some(&a[1]), params).map(drop)
            }
            BenchCase::Experts { .. } => {
                ops::moe_experts(b, &a[0], &a[1], &a[2], &a[3], &a[4], &case.experts_params())
                    .map(drop)
            }
            BenchCase::Fp8Experts { .. } => {
                let inputs =
                    ExpertsInputs::new(&a[0], &a[1], &a[2], &a[3], &a[4]).with_scales(&a[5], &a[6]);
                ops::moe_experts_with(b, inputs, &case.experts_params()).map(drop)
            }
            BenchCase::Mla { .. } | BenchCase::MlaFp8 { .. } => {
                ops::mla_decode(b, &a[0], &a[1], &a[2], &a[3], &case.decode_params()).map(drop)
            }
            BenchCase::Sparse { .. } => ops::mla_sparse_decode(
                b,
                SparseDecodeInputs::new(&a[0], &a[1], &a[2]),
                &BenchCase::sparse_params(),
            )
            .map(drop),
            BenchCase::Indexer { .. } => {
                ops::dsa_indexer_topk(b, &a[0], &a[1], &a[2], &a[3], &a[4], &case.indexer_params())
                    .map(drop)
            }
            BenchCase::Step { .. } => {
                let params = CacheWriteParams {
                    kv_format: case.decode_params().kv_format,
                };
                let (head, rest) = a.split_at_mut(4);
                ops::mla_cache_write(b, &rest[0], &rest[1], &mut head[1], &params)?;
                self.decode()
            }
        }
    }

    /// A decode step's decode alone (the other cases: nothing).
    fn decode(&self) -> Result<()> {
        let a = &self.args;
        match self.case {
            BenchCase::Step { .. } => {
                let params = self.case.decode_params();
                ops::mla_decode(self.backend, &a[0], &a[1], &a[2], &a[3], &params).map(drop)
            }
            _ => Ok(()),
        }
    }

    /// Median time of the op under `budget`.
    pub fn time(&mut self, budget: Budget) -> Result<Duration> {
        let backend = self.backend;
        median_time(backend, budget, || self.call())
    }
}

/// Times `case` on `backend` and relates the time to `ceilings`. A decode step's row also
/// carries the time of its decode alone, on the same pool. With `trace`, each phase is
/// told as it ends: inputs on the device, a first call on its own (kernel compilation
/// included; one call more than the budget's), timed.
pub fn run_case(
    backend: &dyn Backend,
    case: &BenchCase,
    inputs: &BenchInputs,
    ceilings: Option<&Ceilings>,
    budget: Budget,
    trace: Option<&dyn Fn(&str)>,
) -> Result<Row> {
    let mut prepared = Prepared::new(backend, case, inputs)?;
    if let Some(trace) = trace {
        backend.synchronize()?;
        trace(&format!(
            "inputs on the device (large ones generated on {} host threads)",
            crate::inputs::generator_threads()
        ));
        prepared.call()?;
        backend.synchronize()?;
        trace("first call (kernel compilation included)");
    }
    let time = prepared.time(budget)?;
    if let Some(trace) = trace {
        trace("timed");
    }
    let mut row = Row::new(
        backend.name(),
        case,
        cost(case, inputs.used_experts, inputs.distinct_rows),
        time,
        ceilings,
    );
    if let BenchCase::Step { .. } = case {
        let alone = median_time(backend, budget, || prepared.decode())?;
        row.parts.push(("decode alone".into(), alone.as_secs_f64()));
    }
    Ok(row)
}
