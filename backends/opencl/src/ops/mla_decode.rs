//! `mla_decode`: split-KV online softmax over the paged cache, then a combine of the
//! splits (kernels/opencl/mla_decode.cl). An `fp8_ds_v32` cache (contract v2) runs the
//! same kernels built over 656-byte rows.

use crate::device::{Arg, ClDevice, Module};
use crate::ops::{byte_len, int, int_product, need_len, need_local, pow2_at_most};
use crate::programs_v2::{program, Kernels};
use crate::ClBuffer;
use moemla_core::calls::MlaDecodeCall;
use moemla_core::{DType, Error, KvFormat, Op, Result};

/// Work-group tiling of `mla_split` (and of `mla_sparse_decode`'s `sparse_split`): QB query
/// rows share each tile of TN cache rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tiling {
    pub(super) qb: usize,
    pub(super) tn: usize,
}

impl Tiling {
    /// Local memory of `mla_split`: q rows, a cache tile, scores, rescale factors
    /// (saturating: a size that overflows fits no device).
    fn local_bytes(self, d_qk: usize) -> usize {
        let rows = (self.qb + self.tn).saturating_mul(d_qk);
        rows.saturating_add(self.qb * self.tn + self.qb)
            .saturating_mul(4)
    }

    /// The largest tiling up to 16 x 16 that fits the device (halving the larger side).
    /// It does not depend on the head count, so PoCL compiles few work-group variants.
    fn choose(d_qk: usize, local_mem: u64, max_work_group: usize) -> Option<Tiling> {
        Tiling::fit(local_mem, max_work_group, |t| t.local_bytes(d_qk))
    }

    /// The largest tiling up to 16 x 16 whose `local_bytes` (saturating) fit in
    /// `local_mem` less 1 KiB and whose work-group fits `max_work_group` (halving the
    /// larger side); `None` when not even 1 x 1 does.
    pub(super) fn fit(
        local_mem: u64,
        max_work_group: usize,
        local_bytes: impl Fn(Tiling) -> usize,
    ) -> Option<Tiling> {
        let mut t = Tiling { qb: 16, tn: 16 };
        let budget = usize::try_from(local_mem.saturating_sub(1024)).unwrap_or(usize::MAX);
        while local_bytes(t) > budget || t.qb * t.tn > max_work_group {
            if t.qb == 1 && t.tn == 1 {
                return None;
            }
            if t.tn >= t.qb {
                t.tn = t.tn.div_ceil(2);
            } else {
                t.qb = t.qb.div_ceil(2);
            }
        }
        Some(t)
    }
}

/// The `Unsupported` error of an attention op whose cache rows of `d_qk` fit no tiling.
pub(super) fn no_tiling(dev: &ClDevice, backend: &str, op: Op, d_qk: usize) -> Error {
    Error::Unsupported {
        backend: backend.to_string(),
        op,
        what: format!("Dqk = {d_qk}"),
        reason: format!(
            "a cache row does not fit in {} bytes of local memory",
            dev.facts.local_mem
        ),
    }
}

/// Enqueues the decode into `o` [B, Sq, Hq, Dv] (run dtype) and `lse` [B, Hq, Sq] (F32),
/// whose every element the kernels write. Bad `cache_seqlens` / `block_table` entries are
/// reported as the contract's `IndexOutOfRange` by the next synchronize or download.
pub fn run(
    dev: &ClDevice,
    backend: &str,
    call: &MlaDecodeCall<'_>,
    o: &ClBuffer,
    lse: &ClBuffer,
) -> Result<()> {
    let op = Op::MlaDecode;
    let (b, s_q, h_q, h_kv) = (call.batch, call.s_q, call.h_q, call.h_kv);
    let (d_qk, d_v) = (call.d_qk, call.d_v);
    let q = call.q.buffer::<ClBuffer>(backend, "mla_decode", "q")?;
    let kv = call
        .kv_cache
        .buffer::<ClBuffer>(backend, "mla_decode", "kv_cache")?;
    let table = call
        .block_table
        .buffer::<ClBuffer>(backend, "mla_decode", "block_table")?;
    let seqlens = call
        .cache_seqlens
        .buffer::<ClBuffer>(backend, "mla_decode", "cache_seqlens")?;
    for (arg, out, bytes) in [
        ("o", o, byte_len(&[b, s_q, h_q, d_v], call.dtype)?),
        ("lse", lse, byte_len(&[b, h_q, s_q], DType::F32)?),
    ] {
        need_len(op, arg, out, bytes)?;
    }
    let program = match call.params.kv_format {
        KvFormat::Dense => dev.program(Module::MlaDecode, call.dtype)?,
        // fp8_ds_v32 rows (Hkv 1, Dqk 576), dequantized as the tiles are loaded.
        KvFormat::Fp8DsV32 => program(dev, Kernels::MlaDecodeFp8, call.dtype)?,
    };

    // Kernel ints: every size, query rows per kv head, cache positions (a chunk past the
    // capacity), block-table entries, and the (b, i, h) rows of mla_combine.
    let rows = int_product(op, "(Hq / Hkv) * Sq", &[h_q / h_kv, s_q])? as usize;
    let capacity = int_product(
        op,
        "max_blocks * block_size",
        &[call.max_blocks, call.block_size],
    )? as usize;
    int_product(op, "B * max_blocks", &[b, call.max_blocks])?;
    int_product(op, "B * Sq * Hq", &[b, s_q, h_q])?;
    let tiling = Tiling::choose(d_qk, dev.facts.local_mem, dev.facts.max_work_group)
        .ok_or_else(|| no_tiling(dev, backend, op, d_qk))?;
    let wg = tiling.qb * tiling.tn;
    let q_blocks = rows.div_ceil(tiling.qb);
    // Enough splits along the sequence to give every compute unit a few work-groups.
    let target = 4 * dev.facts.compute_units as usize;
    let groups = b.saturating_mul(h_kv).saturating_mul(q_blocks);
    let wanted = target.div_ceil(groups).clamp(1, 64);
    let splits0 = wanted.min(capacity.div_ceil(tiling.tn)).max(1);
    let chunk = capacity.div_ceil(splits0).div_ceil(tiling.tn) * tiling.tn;
    let splits = capacity.div_ceil(chunk).max(1);
    int(op, "max_blocks * block_size + chunk", capacity + chunk)?;

    // Every (b, kv head, row, split) partial is written by mla_split, every o / lse
    // element by mla_combine: nothing is zero-filled.
    let ws_o = dev.alloc_workspace(
        "mla_decode partial o",
        byte_len(&[b, h_q, s_q, splits, d_v], DType::F32)?,
    )?;
    let ws_ml = dev.alloc_workspace(
        "mla_decode partial max and sum",
        byte_len(&[b, h_q, s_q, splits, 2], DType::F32)?,
    )?;
    let (sq32, hq32, hkv32, dv32) = (
        int(op, "Sq", s_q)?,
        int(op, "Hq", h_q)?,
        int(op, "Hkv", h_kv)?,
        int(op, "Dv", d_v)?,
    );
    let splits32 = int(op, "splits", splits)?;
    let local = [
        tiling.qb * d_qk * 4,
        tiling.tn * d_qk * 4,
        tiling.qb * tiling.tn * 4,
        tiling.qb * 4,
    ];
    need_local(dev, op, &format!("Dqk = {d_qk}"), local.iter().sum())?;

    // Sequence lengths are reported before the block table.
    let mut checks = dev.index_checks(op)?;
    let capacity_words = format!(
        "[0, {}] (max_blocks * block_size)",
        call.max_blocks.saturating_mul(call.block_size)
    );
    let seqlen_flag = checks.flag("cache_seqlens", call.cache_seqlens, capacity_words)?;
    let table_flag = checks.flag(
        "block_table",
        call.block_table,
        format!("[0, {}) (num_blocks)", call.num_blocks),
    )?;
    let split_args = [
        Arg::Buf(q),
        Arg::Buf(kv),
        Arg::Buf(table),
        Arg::Buf(seqlens),
        Arg::Buf(seqlen_flag.buffer()),
        Arg::I32(seqlen_flag.slot()),
        Arg::Buf(table_flag.buffer()),
        Arg::I32(table_flag.slot()),
        Arg::Buf(&ws_o),
        Arg::Buf(&ws_ml),
        Arg::I32(sq32),
        Arg::I32(hq32),
        Arg::I32(hkv32),
        Arg::I32(int(op, "Dqk", d_qk)?),
        Arg::I32(dv32),
        Arg::I32(int(op, "num_blocks", call.num_blocks)?),
        Arg::I32(int(op, "block_size", call.block_size)?),
        Arg::I32(int(op, "max_blocks", call.max_blocks)?),
        Arg::I32(call.params.causal as i32),
        Arg::F32(call.params.softmax_scale as f32),
        Arg::I32(int(op, "chunk", chunk)?),
        Arg::I32(splits32),
        Arg::I32(tiling.qb as i32),
        Arg::I32(tiling.tn as i32),
        Arg::Local(local[0]),
        Arg::Local(local[1]),
        Arg::Local(local[2]),
        Arg::Local(local[3]),
    ];
    let global = [wg * splits, q_blocks * h_kv, b];
    dev.launch(&program, "mla_split", &split_args, &global, &[wg, 1, 1])?;
    let combine_args = [
        Arg::Buf(&ws_o),
        Arg::Buf(&ws_ml),
        Arg::Buf(o),
        Arg::Buf(lse),
        Arg::I32(sq32),
        Arg::I32(hq32),
        Arg::I32(hkv32),
        Arg::I32(dv32),
        Arg::I32(splits32),
    ];
    let wg_c = pow2_at_most(64, dev.facts.max_work_group);
    dev.launch(
        &program,
        "mla_combine",
        &combine_args,
        &[wg_c * b * s_q * h_q], // B * Sq * Hq fits an int (checked above)
        &[wg_c],
    )?;

    checks.enqueued()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiling_shrinks_to_fit_local_memory() {
        let big = Tiling::choose(576, 1 << 20, 4096).unwrap();
        assert_eq!(big, Tiling { qb: 16, tn: 16 });
        let small = Tiling::choose(576, 32 * 1024, 1024).unwrap();
        assert!(small.local_bytes(576) <= 31 * 1024, "{small:?}");
        assert_eq!(
            Tiling::choose(64, 1 << 20, 64).unwrap(),
            Tiling { qb: 8, tn: 8 }
        );
        assert!(Tiling::choose(1 << 20, 32 * 1024, 1024).is_none());
        // A Dqk whose local memory overflows usize fits no device (no wrap to a small size).
        assert!(Tiling::choose(usize::MAX / 8, 1 << 20, 4096).is_none());
    }
}
