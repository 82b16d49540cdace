//! `mla_kv_quantize`: one launch of `moemla_mla_kv_quantize_<DT>` (kernels/README.md,
//! mla_kv_quantize.cu); a non-finite input is flagged on the device and reported, naming
//! its row, by the next synchronize.

use super::GpuRunner;
use crate::args::Arg;
use crate::device::{GpuBuffer, GpuDevice};
use crate::flags::{FlagCheck, FlagKind};
use crate::module::Module;
use moemla_core::calls::MlaKvQuantizeCall;
use moemla_core::fp8::DS_V32_ROW_BYTES;
use moemla_core::{DType, DeviceTensor, Op, Result};
use moemla_kernel_plan::kv_quantize;

const CALL: &str = "mla_kv_quantize";

/// Enqueues the quantization; returns `kv_fp8` [N, 656] U8.
pub(super) fn run<D: GpuDevice>(
    g: &GpuRunner<D>,
    call: &MlaKvQuantizeCall<'_>,
) -> Result<DeviceTensor> {
    let op = Op::MlaKvQuantize;
    let kv = g.buffer(call.kv, CALL, "kv")?;
    g.dev.enter()?;
    let limits = g.dev.limits(op)?;
    let launch = kv_quantize::plan(call.rows, call.dtype, &limits).map_err(|e| g.plan_error(e))?;
    let dims = [call.rows, DS_V32_ROW_BYTES];
    let bytes = moemla_core::Shape::new(dims.to_vec()).byte_len(DType::U8)?;
    let (out, shape) = g.output(&dims, DType::U8, bytes)?;
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
    Ok(g.tensor(out, shape, DType::U8))
}
