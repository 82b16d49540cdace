//! What `mla_decode` and `mla_sparse_decode` (one kernel template in mla_decode.cu) do
//! alike: take the stream, reserve the workspace and the two
//! error flags, and launch check, decode and combine with the shared arguments around
//! each op's own.

use super::{at, GpuRunner};
use crate::args::Arg;
use crate::device::{GpuBuffer, GpuDevice};
use crate::flags::FlagCheck;
use crate::module::Module;
use moemla_core::{Op, Result};
use moemla_kernel_plan::mla::MlaPlan;

/// The sizes both ops pass their kernels, as `int` arguments.
#[derive(Clone, Copy)]
pub(super) struct Sizes {
    /// B.
    pub(super) batch: Arg,
    /// Sq.
    pub(super) s_q: Arg,
    /// Hq.
    pub(super) h_q: Arg,
    /// Dv.
    pub(super) d_v: Arg,
}

/// One op's own kernel arguments; [`run`] adds the workspace, flag, output and shared
/// ones around them.
pub(super) struct OpArgs {
    /// The check kernel's arguments before its flag pointer.
    pub(super) check: Vec<Arg>,
    /// The decode kernel's pointers before the workspace.
    pub(super) decode_inputs: [Arg; 4],
    /// The decode kernel's arguments after the workspace, up to the softmax scale.
    pub(super) decode_sizes: Vec<Arg>,
    /// The combine kernel's pointers between the workspace and the outputs.
    pub(super) combine_inputs: Vec<Arg>,
}

/// Enqueues a planned split-K MLA call of `op` into `o` [B, Sq, Hq, Dv] (run dtype) and
/// `lse` [B, Hq, Sq] F32 (the caller's or fresh tensors): the error flags `checks` (the
/// check kernel's in order), and the three launches with the arguments `args` gives for
/// the shared sizes.
#[allow(clippy::too_many_arguments)]
pub(super) fn run<D: GpuDevice>(
    g: &GpuRunner<D>,
    op: Op,
    [batch, s_q, h_q, d_v]: [usize; 4],
    plan: &MlaPlan,
    checks: Vec<FlagCheck>,
    [o, lse]: [&D::Buffer; 2],
    args: impl FnOnce(Sizes) -> Result<OpArgs>,
) -> Result<()> {
    let int = |what, v| g.int(op, what, v);
    let sizes = Sizes {
        batch: int("B", batch)?,
        s_q: int("Sq", s_q)?,
        h_q: int("Hq", h_q)?,
        d_v: int("Dv", d_v)?,
    };
    let own = args(sizes)?;
    let num_splits = int("num_splits", plan.num_splits)?;
    let tile = [int("block_q", plan.block_q)?, int("block_n", plan.block_n)?];

    let mut stream = g.lock();
    let ws = stream.workspace(&g.dev, plan.workspace.bytes)?;
    let flags = stream.flags.reserve(&g.dev, op, checks)?;
    let w = plan.workspace;
    let [check_launch, decode, combine] = &plan.launches;
    let m = Module::MlaDecode;
    let mut check_args = own.check;
    check_args.push(Arg::Ptr(flags[0]));
    g.launch(m, check_launch, &check_args)?;
    let mut decode_args = own.decode_inputs.to_vec();
    decode_args.extend([at(ws, w.o_part), at(ws, w.lse_part)]);
    decode_args.extend(own.decode_sizes);
    decode_args.push(num_splits);
    decode_args.extend(tile);
    g.launch(m, decode, &decode_args)?;
    let mut combine_args = vec![at(ws, w.o_part), at(ws, w.lse_part)];
    combine_args.extend(own.combine_inputs);
    combine_args.extend([
        Arg::Ptr(o.address()),
        Arg::Ptr(lse.address()),
        sizes.batch,
        sizes.s_q,
        sizes.h_q,
        sizes.d_v,
        num_splits,
    ]);
    g.launch(m, combine, &combine_args)?;
    drop(stream);
    Ok(())
}
