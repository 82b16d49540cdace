//! `mla_sparse_decode`: split online softmax over the listed cache rows, then a combine of
//! the splits with the attention sink (kernels/opencl/mla_sparse_decode.cl); the dense or
//! `fp8_ds_v32` cache is a build variant of the same kernels. Bad `topk_length` / `indices`
//! entries are index errors reported at the next synchronize or download.

use crate::device::{Arg, ClDevice};
use crate::ops::mla_decode::{no_tiling, Tiling};
use crate::ops::{byte_len, int, int_product, need_local, need_work_group, pow2_at_most};
use crate::programs_v2::{program, Kernels};
use crate::ClBuffer;
use moemla_core::calls::MlaSparseDecodeCall;
use moemla_core::{DType, KvFormat, Op, Result};

/// Local memory of `sparse_split` (QB heads share each tile of TN listed rows): q rows, a
/// row tile, scores, rescale factors, slots (saturating: a size that overflows fits no
/// device).
fn local_bytes(t: Tiling, d_qk: usize) -> usize {
    let rows = (t.qb + t.tn).saturating_mul(d_qk);
    rows.saturating_add(t.qb * t.tn + t.qb + t.tn)
        .saturating_mul(4)
}

/// The largest tiling of `sparse_split` up to 16 x 16 that fits the device.
fn choose(d_qk: usize, local_mem: u64, max_work_group: usize) -> Option<Tiling> {
    Tiling::fit(local_mem, max_work_group, |t| local_bytes(t, d_qk))
}

/// Enqueues the sparse attention into `o` [B, Sq, Hq, Dv] (run dtype) and `lse`
/// [B, Hq, Sq] (F32), whose every element the kernels write.
pub fn run(
    dev: &ClDevice,
    backend: &str,
    call: &MlaSparseDecodeCall<'_>,
    o: &ClBuffer,
    lse: &ClBuffer,
) -> Result<()> {
    let op = Op::MlaSparseDecode;
    let (b, s_q, h_q, d_qk, d_v, topk) = (
        call.batch, call.s_q, call.h_q, call.d_qk, call.d_v, call.topk,
    );
    let name = "mla_sparse_decode";
    let q = call.q.buffer::<ClBuffer>(backend, name, "q")?;
    let kv = call
        .kv_cache
        .buffer::<ClBuffer>(backend, name, "kv_cache")?;
    let indices = call.indices.buffer::<ClBuffer>(backend, name, "indices")?;
    let lengths = match call.topk_length {
        Some(t) => Some(t.buffer::<ClBuffer>(backend, name, "topk_length")?),
        None => None,
    };
    let sink = match call.attn_sink {
        Some(t) => Some(t.buffer::<ClBuffer>(backend, name, "attn_sink")?),
        None => None,
    };
    let fp8 = call.params.kv_format == KvFormat::Fp8DsV32;
    let program = program(dev, Kernels::MlaSparseDecode { fp8 }, call.dtype)?;

    // Kernel ints: sizes, index positions, query rows and (row, head) pairs.
    let rows = b * s_q; // B * Sq * topk fits an int (checked next), so this does too
    int_product(op, "B * Sq * topk", &[b, s_q, topk.max(1)])?;
    int_product(op, "B * Sq * Hq", &[b, s_q, h_q])?;
    let slots = int(op, "num_blocks * block_size", call.slots())?;
    let tiling = choose(d_qk, dev.facts.local_mem, dev.facts.max_work_group)
        .ok_or_else(|| no_tiling(dev, backend, op, d_qk))?;
    let wg = tiling.qb * tiling.tn;
    need_work_group(dev, op, wg)?;
    let local = [
        tiling.qb * d_qk * 4,
        tiling.tn * d_qk * 4,
        tiling.qb * tiling.tn * 4,
        tiling.qb * 4,
        tiling.tn * 4,
    ];
    need_local(dev, op, &format!("Dqk = {d_qk}"), local.iter().sum())?;
    let head_blocks = h_q.div_ceil(tiling.qb);
    // Enough splits along the lists to give every compute unit a few work-groups.
    let target = 4 * dev.facts.compute_units as usize;
    let groups = rows.saturating_mul(head_blocks).max(1);
    let wanted = target.div_ceil(groups).clamp(1, 64);
    let splits0 = wanted.min(topk.div_ceil(tiling.tn)).max(1);
    let chunk = topk.div_ceil(splits0).div_ceil(tiling.tn).max(1) * tiling.tn;
    let splits = topk.div_ceil(chunk).max(1);
    int(op, "topk + chunk", topk + chunk)?;

    let ws_o = dev.alloc_workspace(
        "mla_sparse_decode partial o",
        byte_len(&[rows, h_q, splits, d_v], DType::F32)?,
    )?;
    let ws_ml = dev.alloc_workspace(
        "mla_sparse_decode partial max and sum",
        byte_len(&[rows, h_q, splits, 2], DType::F32)?,
    )?;
    let mut checks = dev.index_checks(op)?;
    let len_flag = match call.topk_length {
        Some(t) => Some(checks.flag("topk_length", t, format!("[0, {topk}] (topk)"))?),
        None => None,
    };
    let idx_flag = checks.flag(
        "indices",
        call.indices,
        format!("-1 or [0, {}) (num_blocks * block_size)", call.slots()),
    )?;
    let (len_buf, len_slot) = match &len_flag {
        Some(f) => (f.buffer(), f.slot()),
        None => (idx_flag.buffer(), 0), // never written when has_length = 0
    };
    let (sq32, hq32, dv32, splits32) = (
        int(op, "Sq", s_q)?,
        int(op, "Hq", h_q)?,
        int(op, "Dv", d_v)?,
        int(op, "splits", splits)?,
    );
    let split_args = [
        Arg::Buf(q),
        Arg::Buf(kv),
        Arg::Buf(indices),
        Arg::Buf(lengths.unwrap_or(indices)), // never read when has_length = 0
        Arg::I32(lengths.is_some() as i32),
        Arg::Buf(len_buf),
        Arg::I32(len_slot),
        Arg::Buf(idx_flag.buffer()),
        Arg::I32(idx_flag.slot()),
        Arg::Buf(&ws_o),
        Arg::Buf(&ws_ml),
        Arg::I32(sq32),
        Arg::I32(hq32),
        Arg::I32(int(op, "Dqk", d_qk)?),
        Arg::I32(dv32),
        Arg::I32(slots),
        Arg::I32(int(op, "topk", topk)?),
        Arg::F32(call.params.softmax_scale as f32),
        Arg::I32(int(op, "chunk", chunk)?),
        Arg::I32(splits32),
        Arg::I32(tiling.qb as i32),
        Arg::I32(tiling.tn as i32),
        Arg::Local(local[0]),
        Arg::Local(local[1]),
        Arg::Local(local[2]),
        Arg::Local(local[3]),
        Arg::Local(local[4]),
    ];
    let global = [wg * splits, head_blocks, rows];
    dev.launch(&program, "sparse_split", &split_args, &global, &[wg, 1, 1])?;
    let combine_args = [
        Arg::Buf(&ws_o),
        Arg::Buf(&ws_ml),
        Arg::Buf(sink.unwrap_or(&ws_ml)), // never read when has_sink = 0
        Arg::I32(sink.is_some() as i32),
        Arg::Buf(o),
        Arg::Buf(lse),
        Arg::I32(sq32),
        Arg::I32(hq32),
        Arg::I32(dv32),
        Arg::I32(splits32),
    ];
    let wg_c = pow2_at_most(64, dev.facts.max_work_group);
    dev.launch(
        &program,
        "sparse_combine",
        &combine_args,
        &[wg_c * rows * h_q],
        &[wg_c],
    )?;
    checks.enqueued()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiling_shrinks_to_fit_local_memory() {
        assert_eq!(
            choose(576, 1 << 20, 4096).unwrap(),
            Tiling { qb: 16, tn: 16 }
        );
        let small = choose(576, 32 * 1024, 1024).unwrap();
        assert!(local_bytes(small, 576) <= 31 * 1024, "{small:?}");
        assert!(choose(1 << 20, 32 * 1024, 1024).is_none());
        assert!(choose(usize::MAX / 8, 1 << 20, 4096).is_none());
    }
}
