//! mla_sparse_decode through CANN's fused aclnnSparseFlashAttention (SFA), for the calls its
//! documented limits and semantics cover exactly; every other call runs the composed path
//! (`mla_sparse_decode::attend`). Sources, all in hicann/ops-transformer
//! `attention/sparse_flash_attention/`:
//! \[doc\] `docs/aclnnSparseFlashAttention.md`,
//! \[tiling\] `op_host/sparse_flash_attention_tiling.cpp`,
//! \[kernel\] `op_kernel/sparse_flash_attention_kernel_mla.h` (CalcSinnerTopKBegin),
//! \[golden\] `tests/pytest/sparse_flash_attention_golden.py` (gatherKV, softmax).
//!
//! When SFA serves a call ([`ineligible`] is `None`):
//! - q F16/BF16 and a dense cache of the same dtype (\[doc\]/\[tiling\] FLOAT16, BFLOAT16);
//!   Dqk 576 = D 512 + Dr 64, Dv 512 (\[doc\] "D ... 512, Dr ... 64", MLA-absorb
//!   attentionMode 2); Hq in {1, 2, 4, ..., 128} with one kv head (\[doc\] N1 on Atlas A2/A3,
//!   N2 1); no attn_sink (the aclnnSparseFlashAttention signature has no sink input).
//! - Layout: SFA's indices are positions in a sequence, ours flat cache slots, and the
//!   contract has no causal limit. So every query is one row of a single batch: query
//!   BSND [1, B*Sq, Hq, 512] (+ queryRope [1, B*Sq, Hq, 64]), key = value BSND
//!   [1, S2, 1, 512] (+ keyRope [1, S2, 1, 64]) holding the distinct slots the call attends
//!   (gathered by aclnnIndexSelect, split by aclnnInplaceCopy: SFA takes no
//!   non-contiguous tensor, \[doc\] "非连续Tensor x"), sparseMode 0 ("全部计算"), indices
//!   rewritten on the host to positions in that key. BSND rather than PA_BSND because only
//!   a non-paged key returns softmaxMax / softmaxSum, and those give lse. \[doc\]
//!   returnSoftmaxLse: "该参数仅在训练且layout_kv不为PA_BSND场景支持" — only in training
//!   and with a key other than PA_BSND. This is not training: asking for the lse here
//!   relies on undocumented behaviour (the \[kernel\] writes both outputs whenever asked).
//!   The safety net: a CANN whose first phase refuses the call (GetWorkspaceSize returns
//!   an error) gets it on the composed path instead ([`run`] returns `Ok(None)` before
//!   anything is written to the outputs; `Paths::sparse_attention_fallback` counts it).
//! - SFA reads a row's indices up to the first -1 and at most min(sparse_size, S2) of them
//!   (\[kernel\] `validCount`, `sparseIndices == -1 ... break`; \[golden\] gatherKV), so each
//!   row's attended entries (-1 dropped, entries past topk_length dropped, duplicates kept)
//!   are written first, then -1; S2 is at least the longest row (padding rows repeat the
//!   first gathered slot and are never named). Duplicates attend twice (\[golden\] gatherKV
//!   extends the position list once per entry).
//! - lse = softmaxMax + ln(softmaxSum) (\[golden\] softmax: max of the scaled scores, sum of
//!   exp(s - max)), computed on the host from the two F32 [1, 1, B*Sq, Hq] outputs and
//!   uploaded as [B, Hq, Sq]; a row with no entry has sum 0 (\[kernel\]/\[golden\]), so
//!   lse = -inf, and o = 0 (\[kernel\] DealActSeqLenIsZero).

use crate::acl::{acl_dtype, ACL_FLOAT};
use crate::buffer::DevMem;
use crate::device::Launch;
use crate::loader::OpApi;
use crate::ops::compose;
use crate::AscendBackend;
use moemla_core::calls::{MlaDecodeOutput, MlaSparseDecodeCall};
use moemla_core::{DType, Error, KvFormat, Result};
use std::collections::HashMap;

/// SFA's query head dim D and rope dim Dr (\[doc\] constraints).
const NOPE: usize = 512;
const ROPE: usize = 64;

/// Whether the loaded op libraries have what the fused path needs.
pub fn available(ops: &OpApi) -> bool {
    ops.aclnnSparseFlashAttention.is_some()
        && ops.aclnnSparseFlashAttentionGetWorkspaceSize.is_some()
        && ops.aclnnIndexSelect.is_some()
        && ops.aclnnIndexSelectGetWorkspaceSize.is_some()
        && ops.aclnnInplaceCopy.is_some()
        && ops.aclnnInplaceCopyGetWorkspaceSize.is_some()
}

/// Why a call cannot run on SFA (`None`: it can). `lists` are the attended slots per query.
pub fn ineligible(
    ops: &OpApi,
    call: &MlaSparseDecodeCall<'_>,
    lists: &[Vec<i32>],
) -> Option<&'static str> {
    if !available(ops) {
        Some("aclnnSparseFlashAttention not in the loaded op libraries")
    } else if call.params.kv_format != KvFormat::Dense {
        Some("fp8_ds_v32 cache: SFA reads FLOAT16/BFLOAT16 keys only")
    } else if !matches!(call.dtype, DType::F16 | DType::BF16) {
        Some("F32: SFA takes FLOAT16/BFLOAT16 only")
    } else if call.d_qk != NOPE + ROPE || call.d_v != NOPE {
        Some("SFA needs Dqk 576 (512 + rope 64) and Dv 512")
    } else if !call.h_q.is_power_of_two() || call.h_q > 128 {
        Some("SFA on Atlas A2/A3 takes Hq in 1, 2, 4, ..., 128")
    } else if call.attn_sink.is_some() {
        Some("aclnnSparseFlashAttention has no sink input")
    } else if lists.iter().all(|l| l.is_empty()) {
        Some("no query attends anything (nothing to launch)")
    } else {
        None
    }
}

fn le_bytes<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

/// Runs an [`ineligible`]-checked call on aclnnSparseFlashAttention (module doc).
/// `Ok(None)`: SFA's first phase refused the call (an older CANN, say); only the key and
/// query copies had been queued, into temporaries, and the outputs were never written, so
/// the caller runs the composed path instead. An error after that (SFA's launch) is
/// returned.
pub fn run(
    be: &AscendBackend,
    call: &MlaSparseDecodeCall<'_>,
    q_mem: &DevMem,
    kv_mem: &DevMem,
    lists: &[Vec<i32>],
) -> Result<Option<MlaDecodeOutput>> {
    let dev = &be.dev;
    let ops = &dev.cann.ops;
    let (b, sq, hq, topk) = (call.batch, call.s_q, call.h_q, call.topk);
    let dt = acl_dtype(call.dtype);
    let es = call.dtype.size_in_bytes();
    let rows = b * sq;
    let dqk = NOPE + ROPE;

    // The distinct slots, in first-use order, and each row rewritten to positions in them.
    let mut pos: HashMap<i32, i32> = HashMap::new();
    let mut gather: Vec<i32> = Vec::new();
    let mut sparse = vec![-1i32; rows * topk];
    for (r, list) in lists.iter().enumerate() {
        for (j, &slot) in list.iter().enumerate() {
            let p = *pos.entry(slot).or_insert_with(|| {
                gather.push(slot);
                (gather.len() - 1) as i32
            });
            sparse[r * topk + j] = p;
        }
    }
    // S2 >= the longest row: SFA reads at most min(sparse_size, S2) entries of a row.
    let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
    let s2 = gather.len().max(longest);
    let first = gather[0];
    gather.resize(s2, first);

    // Key rows [S2, 576] gathered, then split into contiguous 512 / 64 parts; q split too.
    let gather_dev = dev.upload_bytes(&le_bytes(&gather, i32::to_le_bytes))?;
    let k_rows = dev.alloc(s2 * dqk * es)?;
    {
        let cache = dev.tensor(kv_mem, &[call.slots(), dqk], None, 0, dt)?;
        let index = dev.tensor(&gather_dev, &[s2], None, 0, acl_dtype(DType::I32))?;
        let out = dev.tensor(&k_rows, &[s2, dqk], None, 0, dt)?;
        // Every slot was checked to lie in [0, slots).
        compose::index_select(dev, &cache, 0, &index, &out)?;
    }
    let split =
        |src: &DevMem, n: usize| -> Result<(std::sync::Arc<DevMem>, std::sync::Arc<DevMem>)> {
            let nope = dev.alloc(n * NOPE * es)?;
            let rope = dev.alloc(n * ROPE * es)?;
            for (dst, width, offset) in [(&nope, NOPE, 0), (&rope, ROPE, NOPE)] {
                let d = dev.tensor(dst, &[n, width], None, 0, dt)?;
                let s = dev.tensor(src, &[n, width], Some(&[dqk, 1]), offset, dt)?;
                compose::inplace_copy(dev, &d, &s)?;
            }
            Ok((nope, rope))
        };
    let (k_nope, k_rope) = split(&k_rows, s2)?;
    let (q_nope, q_rope) = split(q_mem, rows * hq)?;

    let sparse_dev = dev.upload_bytes(&le_bytes(&sparse, i32::to_le_bytes))?;
    let o = dev.alloc(rows * hq * NOPE * es)?;
    let max = dev.alloc(rows * hq * 4)?;
    let sum = dev.alloc(rows * hq * 4)?;
    {
        let query = dev.tensor(&q_nope, &[1, rows, hq, NOPE], None, 0, dt)?;
        let query_rope = dev.tensor(&q_rope, &[1, rows, hq, ROPE], None, 0, dt)?;
        let key = dev.tensor(&k_nope, &[1, s2, 1, NOPE], None, 0, dt)?;
        let value = dev.tensor(&k_nope, &[1, s2, 1, NOPE], None, 0, dt)?;
        let key_rope = dev.tensor(&k_rope, &[1, s2, 1, ROPE], None, 0, dt)?;
        let indices = dev.tensor(
            &sparse_dev,
            &[1, rows, 1, topk],
            None,
            0,
            acl_dtype(DType::I32),
        )?;
        let out = dev.tensor(&o, &[1, rows, hq, NOPE], None, 0, dt)?;
        let max_t = dev.tensor(&max, &[1, 1, rows, hq], None, 0, ACL_FLOAT)?;
        let sum_t = dev.tensor(&sum, &[1, 1, rows, hq], None, 0, ACL_FLOAT)?;
        let null = std::ptr::null_mut();
        let layout = c"BSND";
        // SAFETY: handles live for the call; blockTable and the actual lengths are absent
        // (null) as [doc] allows for a BSND key; out-pointers come from `Device::try_run`.
        let launch = dev.try_run(
            "aclnnSparseFlashAttention",
            |ws, ex| unsafe {
                (ops.aclnnSparseFlashAttentionGetWorkspaceSize
                    .expect("checked by available()"))(
                    query.raw(),
                    key.raw(),
                    value.raw(),
                    indices.raw(),
                    null,
                    null,
                    null,
                    query_rope.raw(),
                    key_rope.raw(),
                    call.params.softmax_scale,
                    1,
                    layout.as_ptr(),
                    layout.as_ptr(),
                    0,
                    i64::MAX,
                    i64::MAX,
                    2,
                    true,
                    out.raw(),
                    max_t.raw(),
                    sum_t.raw(),
                    ws,
                    ex,
                )
            },
            ops.aclnnSparseFlashAttention,
        )?;
        if let Launch::Declined(_) = launch {
            return Ok(None);
        }
    }
    let f32s = |bytes: Vec<u8>| -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    // download_bytes synchronises first.
    let max_h = f32s(dev.download_bytes(&max, rows * hq * 4)?);
    let sum_h = f32s(dev.download_bytes(&sum, rows * hq * 4)?);
    if max_h.len() != rows * hq || sum_h.len() != rows * hq {
        return Err(Error::Device {
            backend: crate::NAME.to_string(),
            call: "aclnnSparseFlashAttention".to_string(),
            message: "softmaxMax/softmaxSum download short".to_string(),
        });
    }
    // [1, 1, B*Sq, Hq] -> lse [B, Hq, Sq].
    let mut lse = vec![f32::NEG_INFINITY; rows * hq];
    for r in 0..rows {
        let (bi, i) = (r / sq, r % sq);
        for h in 0..hq {
            let (m, s) = (max_h[r * hq + h], sum_h[r * hq + h]);
            // sum 0: no entry (lse -inf); NaN data propagates.
            if s != 0.0 {
                lse[(bi * hq + h) * sq + i] = m + s.ln();
            }
        }
    }
    let lse_dev = dev.upload_bytes(&le_bytes(&lse, f32::to_le_bytes))?;
    Ok(Some(MlaDecodeOutput {
        o: be.wrap(o, [b, sq, hq, NOPE], call.dtype),
        lse: be.wrap(lse_dev, [b, hq, sq], DType::F32),
    }))
}
