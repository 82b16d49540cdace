//! `mla_sparse_decode`: split online softmax over the listed cache rows, then a combine of
//! the splits with the attention sink (kernels/opencl/mla_sparse_decode.cl); the dense or
//! `fp8_ds_v32` cache is a build variant of the same kernels. With one split (prefill, or
//! any call with enough rows to fill the device) the split kernel writes `o` and `lse`
//! itself: no f32 partials (1 GiB at Sq 4096 x 128 heads x Dv 512) and no combine. Bad
//! `topk_length` / `indices` entries are index errors reported at the next synchronize or
//! download.

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

/// Local memory of `sparse_split` writing the output itself: [`local_bytes`] plus the
/// accumulator of QB heads (QB * Dv sums, then each head's sum of weights and sink factor).
fn direct_local_bytes(t: Tiling, d_qk: usize, d_v: usize) -> usize {
    let acc = t.qb.saturating_mul(d_v.saturating_add(2)).saturating_mul(4);
    local_bytes(t, d_qk).saturating_add(acc)
}

/// The largest tiling of `sparse_split` up to 16 x 16 that fits the device.
fn choose(d_qk: usize, local_mem: u64, max_work_group: usize) -> Option<Tiling> {
    Tiling::fit(local_mem, max_work_group, |t| local_bytes(t, d_qk))
}

/// The sizes a plan depends on: query rows (B * Sq), heads, head dims and list length.
#[derive(Debug, Clone, Copy)]
struct Dims {
    rows: usize,
    h_q: usize,
    d_qk: usize,
    d_v: usize,
    topk: usize,
}

/// The device facts a plan depends on.
#[derive(Debug, Clone, Copy)]
struct Facts {
    local_mem: u64,
    max_work_group: usize,
    compute_units: u32,
}

/// How `sparse_split` runs: its tiling, `splits` chunks of `chunk` list entries each, and
/// whether it writes `o` and `lse` itself (`direct`, one split) or partials that
/// `sparse_combine` merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    tiling: Tiling,
    splits: usize,
    chunk: usize,
    direct: bool,
}

impl Plan {
    /// Enough splits along the lists to give every compute unit a few work-groups; one
    /// split runs direct when its accumulator fits local memory. `None`: no tiling fits.
    fn new(d: Dims, f: Facts) -> Option<Plan> {
        let tiling = choose(d.d_qk, f.local_mem, f.max_work_group)?;
        let head_blocks = d.h_q.div_ceil(tiling.qb);
        let target = 4 * f.compute_units as usize;
        let groups = d.rows.saturating_mul(head_blocks).max(1);
        let wanted = target.div_ceil(groups).clamp(1, 64);
        let splits0 = wanted.min(d.topk.div_ceil(tiling.tn)).max(1);
        let chunk = d.topk.div_ceil(splits0).div_ceil(tiling.tn).max(1) * tiling.tn;
        let splits = d.topk.div_ceil(chunk).max(1);
        let direct = (splits == 1)
            .then(|| {
                Tiling::fit(f.local_mem, f.max_work_group, |t| {
                    direct_local_bytes(t, d.d_qk, d.d_v)
                })
            })
            .flatten();
        Some(match direct {
            Some(t) => Plan {
                tiling: t,
                splits: 1,
                chunk: d.topk.div_ceil(t.tn).max(1) * t.tn,
                direct: true,
            },
            None => Plan {
                tiling,
                splits,
                chunk,
                direct: false,
            },
        })
    }

    /// Dynamic local memory of `sparse_split`'s arguments `qs, ks, sc, alpha, valid, acc`
    /// (`acc` one unused float when not direct).
    fn local(&self, d: Dims) -> [usize; 6] {
        let Tiling { qb, tn } = self.tiling;
        let acc = if self.direct { qb * (d.d_v + 2) } else { 1 };
        [qb * d.d_qk, tn * d.d_qk, qb * tn, qb, tn, acc].map(|n| n * 4)
    }

    /// Bytes of the f32 partial o [rows, Hq, splits, Dv] and partial (max, sum)
    /// [rows, Hq, splits, 2]: none when direct; checked products.
    fn workspace_bytes(&self, d: Dims) -> Result<Option<[usize; 2]>> {
        if self.direct {
            return Ok(None);
        }
        let parts = [d.rows, d.h_q, self.splits];
        Ok(Some([
            byte_len(&[parts[0], parts[1], parts[2], d.d_v], DType::F32)?,
            byte_len(&[parts[0], parts[1], parts[2], 2], DType::F32)?,
        ]))
    }
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
    let dims = Dims {
        rows,
        h_q,
        d_qk,
        d_v,
        topk,
    };
    let facts = Facts {
        local_mem: dev.facts.local_mem,
        max_work_group: dev.facts.max_work_group,
        compute_units: dev.facts.compute_units,
    };
    let plan = Plan::new(dims, facts).ok_or_else(|| no_tiling(dev, backend, op, d_qk))?;
    let Plan {
        tiling,
        splits,
        chunk,
        direct,
    } = plan;
    let wg = tiling.qb * tiling.tn;
    need_work_group(dev, op, wg)?;
    let local = plan.local(dims);
    need_local(dev, op, &format!("Dqk = {d_qk}"), local.iter().sum())?;
    let head_blocks = h_q.div_ceil(tiling.qb);
    int(op, "topk + chunk", topk + chunk)?;

    // Partials only with several splits (an allocation past the device's largest buffer
    // is an OutOfMemory error).
    let workspace = match plan.workspace_bytes(dims)? {
        Some([o_bytes, ml_bytes]) => Some((
            dev.alloc_workspace("mla_sparse_decode partial o", o_bytes)?,
            dev.alloc_workspace("mla_sparse_decode partial max and sum", ml_bytes)?,
        )),
        None => None,
    };
    // Direct: the kernel never touches the workspace arguments.
    let (ws_o, ws_ml): (&ClBuffer, &ClBuffer) = match &workspace {
        Some((o, ml)) => (o, ml),
        None => (lse, lse),
    };
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
        Arg::Buf(ws_o),
        Arg::Buf(ws_ml),
        Arg::I32(direct as i32),
        Arg::Buf(o),
        Arg::Buf(lse),
        Arg::Buf(sink.unwrap_or(lse)), // never read when has_sink = 0
        Arg::I32(sink.is_some() as i32),
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
        Arg::Local(local[5]),
    ];
    let global = [wg * splits, head_blocks, rows];
    dev.launch(&program, "sparse_split", &split_args, &global, &[wg, 1, 1])?;
    if direct {
        return checks.enqueued();
    }
    let combine_args = [
        Arg::Buf(ws_o),
        Arg::Buf(ws_ml),
        Arg::Buf(sink.unwrap_or(ws_ml)), // never read when has_sink = 0
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
#[path = "mla_sparse_decode_tests.rs"]
mod device_tests;

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

    /// PoCL on this host's CPU: 1 MiB of local memory, 2 compute units.
    const POCL: Facts = Facts {
        local_mem: 1 << 20,
        max_work_group: 4096,
        compute_units: 2,
    };
    /// A GPU's OpenCL: 48 KiB of local memory, 132 compute units.
    const GPU: Facts = Facts {
        local_mem: 48 << 10,
        max_work_group: 1024,
        compute_units: 132,
    };

    fn dims(rows: usize, h_q: usize, topk: usize) -> Dims {
        Dims {
            rows,
            h_q,
            d_qk: 576,
            d_v: 512,
            topk,
        }
    }

    #[test]
    fn prefill_writes_the_output_directly_without_partials() {
        // B 1, Sq 4096, 128 heads, topk 2048: one split of partials would be 1 GiB.
        let d = dims(4096, 128, 2048);
        for facts in [POCL, GPU] {
            let plan = Plan::new(d, facts).unwrap();
            assert!(plan.direct, "{plan:?}");
            assert_eq!((plan.splits, plan.workspace_bytes(d).unwrap()), (1, None));
            // One chunk covers every list entry, in whole tiles.
            assert!(plan.chunk >= 2048 && plan.chunk < 2048 + plan.tiling.tn);
            let local: usize = plan.local(d).iter().sum();
            assert_eq!(local, direct_local_bytes(plan.tiling, 576, 512));
            assert!(local as u64 <= facts.local_mem - 1024, "{plan:?}");
        }
        let gpu = Plan::new(d, GPU).unwrap();
        // In 47 KiB: 8 x 8 needs 37,184 + 16,448 bytes; 8 x 4 needs 27,824 + 16,448.
        assert_eq!(gpu.tiling, Tiling { qb: 8, tn: 4 });
    }

    #[test]
    fn few_rows_split_the_lists_and_size_partials_by_the_splits() {
        // B 1, Sq 1, 16 heads on 132 compute units: 64 splits of 32 entries.
        let d = dims(1, 16, 2048);
        let plan = Plan::new(d, GPU).unwrap();
        assert_eq!(
            plan,
            Plan {
                tiling: Tiling { qb: 8, tn: 8 },
                splits: 64,
                chunk: 32,
                direct: false,
            }
        );
        let o_bytes = 16 * 64 * 512 * 4;
        let ml_bytes = 16 * 64 * 2 * 4;
        assert_eq!(plan.workspace_bytes(d).unwrap(), Some([o_bytes, ml_bytes]));
        let local: usize = plan.local(d).iter().sum();
        assert_eq!(local, local_bytes(plan.tiling, 576) + 4);
    }

    #[test]
    fn one_split_keeps_partials_when_the_accumulator_does_not_fit() {
        // Dqk 8192, Dv 8000 in 79 KiB: a 1 x 1 tile fits (65,548 bytes), the
        // accumulator's 32,008 more do not; 1024 work-groups fill 132 compute units.
        let d = Dims {
            rows: 512,
            h_q: 2,
            d_qk: 8192,
            d_v: 8000,
            topk: 4,
        };
        let facts = Facts {
            local_mem: 80 << 10,
            ..GPU
        };
        let plan = Plan::new(d, facts).unwrap();
        assert_eq!((plan.direct, plan.splits), (false, 1));
        assert_eq!(plan.tiling, Tiling { qb: 1, tn: 1 });
        let want = [512 * 2 * 8000 * 4, 512 * 2 * 2 * 4];
        assert_eq!(plan.workspace_bytes(d).unwrap(), Some(want));
    }

    #[test]
    fn partials_past_usize_are_an_error_not_a_wrapped_size() {
        let d = Dims {
            rows: usize::MAX / 4,
            h_q: 2,
            d_qk: 8192,
            d_v: 8000,
            topk: 4,
        };
        let plan = Plan {
            tiling: Tiling { qb: 1, tn: 1 },
            splits: 1,
            chunk: 4,
            direct: false,
        };
        assert!(plan.workspace_bytes(d).is_err());
    }
}
