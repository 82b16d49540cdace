//! `moe_route` hash routing (contract v2): one work-item per token reads its `tid2eid` row
//! (kernels/opencl/moe_route_hash.cl). Bad `input_ids` / `tid2eid` entries are index errors
//! reported at the next synchronize or download: input ids first, then the first bad table
//! entry in token order (as `moemla_core::indices::check_hash_routing` finds it).

use crate::device::{Arg, ClDevice};
use crate::ops::moe_route::score_func_code;
use crate::ops::{int, int_product};
use crate::programs_v2::{program, Kernels};
use crate::ClBuffer;
use moemla_core::calls::{HashRouting, MoeRouteCall};
use moemla_core::{Op, Result};

/// Work-group size.
const LS: usize = 64;

/// Enqueues hash routing into `ids` (`topk_ids` [T, k] I32) and `weights` (`topk_weights`
/// [T, k] F32), whose every element the kernel writes (sizes checked by the caller).
pub fn run(
    dev: &ClDevice,
    backend: &str,
    call: &MoeRouteCall<'_>,
    hash: HashRouting<'_>,
    ids: &ClBuffer,
    weights: &ClBuffer,
) -> Result<()> {
    let op = Op::MoeRoute;
    let p = call.params;
    let (t, e, k) = (call.tokens, call.experts, p.top_k);
    let score_func = score_func_code(p.score_func);
    let logits = call
        .logits
        .buffer::<ClBuffer>(backend, "moe_route", "logits")?;
    let input_ids = hash
        .input_ids
        .buffer::<ClBuffer>(backend, "moe_route", "input_ids")?;
    let tid2eid = hash
        .tid2eid
        .buffer::<ClBuffer>(backend, "moe_route", "tid2eid")?;
    // Kernel ints: sizes and the row-major positions of tid2eid.
    let t32 = int(op, "T", t)?;
    let (e32, k32) = (int(op, "E", e)?, int(op, "top_k", k)?);
    let vocab = int(op, "vocab", hash.vocab)?;
    int_product(op, "vocab * top_k", &[hash.vocab, k])?;
    int_product(op, "T * top_k", &[t, k])?;
    let program = program(dev, Kernels::MoeRouteHash, call.logits.dtype())?;
    let mut checks = dev.index_checks(op)?;
    let ids_flag = checks.flag(
        "input_ids",
        hash.input_ids,
        format!("[0, {}) (rows of tid2eid)", hash.vocab),
    )?;
    let range_flag = checks.flag("tid2eid", hash.tid2eid, format!("[0, {e}) (E)"))?;
    let repeat_flag = checks.flag(
        "tid2eid",
        hash.tid2eid,
        format!("[0, {e}), distinct within the row"),
    )?;
    // The first bad (token, column), in token order (INT_MAX: none).
    let first_bad = dev.alloc_filled("moe_route first bad table entry", 4, i32::MAX as u32)?;
    let args = [
        Arg::Buf(logits),
        Arg::I32(t32),
        Arg::I32(e32),
        Arg::I32(k32),
        Arg::I32(score_func),
        Arg::Buf(input_ids),
        Arg::I32(vocab),
        Arg::Buf(tid2eid),
        Arg::I32(p.renormalize as i32),
        Arg::F32(p.routed_scaling_factor as f32),
        Arg::Buf(ids),
        Arg::Buf(weights),
        Arg::Buf(ids_flag.buffer()),
        Arg::I32(ids_flag.slot()),
        Arg::Buf(&first_bad),
    ];
    dev.launch(&program, "route_hash", &args, &[t.div_ceil(LS) * LS], &[LS])?;
    let resolve = [
        Arg::Buf(&first_bad),
        Arg::Buf(input_ids),
        Arg::Buf(tid2eid),
        Arg::I32(k32),
        Arg::I32(e32),
        Arg::Buf(range_flag.buffer()),
        Arg::I32(range_flag.slot()),
        Arg::Buf(repeat_flag.buffer()),
        Arg::I32(repeat_flag.slot()),
    ];
    dev.launch(&program, "route_hash_resolve", &resolve, &[1], &[1])?;
    checks.enqueued()?;
    Ok(())
}
