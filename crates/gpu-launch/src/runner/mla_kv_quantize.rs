//! `mla_kv_quantize`: one launch of `moemla_mla_kv_quantize_<DT>` (kernels/README.md,
//! mla_kv_quantize.cu); a non-finite input is flagged on the device and reported, naming
//! its row, by the next synchronize.

use super::GpuRunner;
use crate::args::Arg;
use crate::device::{GpuBuffer, GpuDevice};
use crate::flags::{FlagCheck, FlagKind};
use crate::module::Module;
use moemla_core::calls::MlaKvQuantizeCall;
use moemla_core::{DeviceTensor, Op, Result};
use moemla_kernel_plan::kv_quantize;

const CALL: &str = "mla_kv_quantize";

/// Enqueues the quantization into `out` (`kv_fp8` [N, 656] U8: the caller's or a fresh
/// tensor). The device is current.
pub(super) fn run<D: GpuDevice>(
    g: &GpuRunner<D>,
    call: &MlaKvQuantizeCall<'_>,
    out: &DeviceTensor,
) -> Result<()> {
    let op = Op::MlaKvQuantize;
    let kv = g.buffer(call.kv, CALL, "kv")?;
    let out = g.out_buffer(out, CALL, "kv_fp8")?;
    let limits = g.dev.limits(op)?;
    let launch = kv_quantize::plan(call.rows, call.dtype, &limits).map_err(|e| g.plan_error(e))?;
    let mut stream = g.lock();
    let flag = stream.flags.reserve(
        &g.dev,
        op,
        vec![FlagCheck {
            arg: "kv",
            shape: call.kv.shape().clone(),
            valid: "finite values".into(),
            kind: FlagKind::NonFinite,
        }],
    )?[0];
    g.launch(
        Module::MlaKvQuantize,
        &launch,
        &[
            Arg::Ptr(kv.address()),
            Arg::Ptr(out.address()),
            Arg::Ptr(flag),
        ],
    )?;
    drop(stream);
    Ok(())
}
