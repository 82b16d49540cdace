//! aclnnSparseFlashAttention (SFA), MLA-absorb mode, as Huawei's sources give it. All paths
//! in hicann/ops-transformer `attention/sparse_flash_attention/`:
//! \[doc\] `docs/aclnnSparseFlashAttention.md`,
//! \[tiling\] `op_host/sparse_flash_attention_tiling.cpp` (SFATilingCheck), \[def\]
//! `op_host/sparse_flash_attention_def.cpp`, \[kernel\]
//! `op_kernel/sparse_flash_attention_kernel_mla.h` (CalcSinnerTopKBegin, DealActSeqLenIsZero),
//! \[vector\] `op_kernel/sparse_flash_attention_service_vector_mla.h` (CopyFALseToGm),
//! \[golden\] `tests/pytest/sparse_flash_attention_golden.py` (gatherKV, softmax,
//! _t_increattention_bnsd).
//!
//! Checks (first phase):
//! - query, key, value, sparseIndices, attentionOut required (ACLNN_ERR_PARAM_NULLPTR,
//!   \[doc\] return codes); query FLOAT16/BFLOAT16, key/value/queryRope/keyRope/attentionOut
//!   the same dtype, sparseIndices/blockTable/actual lengths INT32, softmaxMax/Sum FLOAT
//!   (\[doc\] dtype columns; ACLNN_ERR_PARAM_INVALID); none of them non-contiguous
//!   (\[doc\] "非连续Tensor x").
//! - layoutQuery BSND or TND, layoutKv BSND, TND or PA_BSND (\[tiling\]
//!   LAYOUT_SUPPORT_MAP); the emulator implements query BSND with key BSND or PA_BSND (TND
//!   is refused as not emulated).
//! - attentionMode 2 with queryRope and keyRope (\[tiling\] "attentionMode only support 2";
//!   \[doc\] "仅支持传入2，表示MLA-absorb模式"); N2 1, N1 in {1, 2, 4, ..., 128}, D 512 for
//!   query, key and value, Dr 64 (\[tiling\] CheckFeatureMlaNoQuantShape; \[doc\] N1 on
//!   Atlas A2/A3); sparseMode 0 or 3 (\[tiling\] "sparseMode must == 0/3"); sparseBlockSize
//!   a power of two in [1, 128] (\[tiling\]); preTokens = nextTokens = 2^63-1 (\[tiling\]);
//!   PA_BSND: blockTable [B, maxBlocks] and actualSeqLengthsKv required, block_size
//!   16-aligned in (0, 1024], divisible by sparseBlockSize (\[tiling\]
//!   CheckFeatureMlaNoQuantPa; \[doc\]); BSND: blockTable must be null (\[tiling\] "when
//!   the layout_kv is %s, block_table should be null"); returnSoftmaxLse only with a key
//!   layout other than PA_BSND (\[doc\] returnSoftmaxLse:
//!   "该参数仅在训练且layout_kv不为PA_BSND场景支持": only in training and not PA_BSND; the
//!   "training" half is not enforced by default, as the kernel writes the two outputs
//!   whenever asked, and is with `MOEMLA_CANN_EMULATOR_CANN=2025-12`, see `ops/mod.rs`).
//!   These are tiling failures (ACLNN_ERR_INNER_TILING_ERROR) except the dtype/null ones.
//!
//! Semantics (launch), per batch b, query row s, head n (\[golden\] _t_increattention_bnsd,
//! matching \[kernel\]):
//! - `threshold = actSeqKv[b]` (sparseMode 0) or `actSeqKv[b] - actSeqQ[b] + s + 1` (3); a
//!   row with s < actSeqQ - actSeqKv under mode 3 gives 0.
//! - validCount = min(sparse_size, ceil(threshold / sparseBlockSize)); entries i <
//!   validCount are read in order, stopping at the first -1; entry e covers positions
//!   [e * sbs, min(e * sbs + sbs, threshold)); an entry starting at or past threshold is
//!   skipped; a duplicated entry adds its positions again (\[golden\] gatherKV; \[kernel\]
//!   CalcSinnerTopKBegin). A negative entry other than -1 is outside what any source
//!   defines: ACLNN_ERR_RUNTIME_ERROR here, as is a block-table entry outside the cache
//!   (CANN reads memory there).
//! - s_j = scaleValue * (q k_j + qRope kRope_j); softmaxMax = max s_j, softmaxSum =
//!   sum exp(s_j - max); P = exp(s - max) / sum rounded to the query dtype before P @ V
//!   (\[golden\]: `softmax_res.to(torch.bfloat16)` / float16), V = value's 512 columns.
//! - No position: attentionOut 0 (\[kernel\] DealActSeqLenIsZero), softmaxMax -2e38
//!   (SOFTMAX_MIN_NUM) and softmaxSum 0 (\[vector\] CopyFALseToGm).
//! - softmaxMax / softmaxSum `[B, N2, S1, N1 / N2]` for query BSND (\[doc\]).

use super::{aclnn_launch, expect_dims, expect_dtype, layout, older_cann};
use crate::executor::prepare;
use crate::handles::{opt_tensor, AclTensor};
use crate::status::{
    EmuResult, Fail, ACLNN_ERR_INNER_TILING_ERROR, ACLNN_ERR_PARAM_NULLPTR, ACLNN_ERR_RUNTIME_ERROR,
};
use crate::tensor::{TensorDesc, DT_BF16, DT_F16, DT_F32, DT_I32};
use half::{bf16, f16};
use std::ffi::{c_char, c_void};

const NOPE: usize = 512;
const ROPE: usize = 64;
/// \[vector\] SOFTMAX_MIN_NUM: softmaxMax of a row with nothing to attend to.
const SOFTMAX_MIN_NUM: f64 = -2e38;

fn tiling(message: impl Into<String>) -> Fail {
    Fail::new(ACLNN_ERR_INNER_TILING_ERROR, message)
}

/// One checked call.
struct Sfa {
    q: TensorDesc,
    q_rope: TensorDesc,
    k: TensorDesc,
    k_rope: TensorDesc,
    indices: TensorDesc,
    table: Option<TensorDesc>,
    seq_q: Option<TensorDesc>,
    seq_kv: Option<TensorDesc>,
    out: TensorDesc,
    lse: Option<(TensorDesc, TensorDesc)>,
    scale: f64,
    sparse_block: usize,
    causal: bool,
}

impl Sfa {
    fn run(&self) -> EmuResult<()> {
        let (b, s1, n1) = (self.q.dims[0], self.q.dims[1], self.q.dims[2]);
        let topk = self.indices.dims[3];
        let (q, qr) = (self.q.load()?, self.q_rope.load()?);
        let (k, kr) = (self.k.load()?, self.k_rope.load()?);
        let idx = self.indices.load()?;
        let table = self.table.as_ref().map(|t| t.load()).transpose()?;
        let seq_q = self.seq_q.as_ref().map(|t| t.load()).transpose()?;
        let seq_kv = self.seq_kv.as_ref().map(|t| t.load()).transpose()?;
        // Rows of the key: [Bn, Bs, 1, D] paged, [B, S2, 1, D] otherwise.
        let (kd0, kd1) = (self.k.dims[0], self.k.dims[1]);
        let round = |p: f64| match self.q.dtype {
            DT_F16 => f16::from_f64(p).to_f64(),
            _ => bf16::from_f64(p).to_f64(),
        };
        let mut out = vec![0.0f64; b * s1 * n1 * NOPE];
        let mut smax = vec![SOFTMAX_MIN_NUM; b * s1 * n1];
        let mut ssum = vec![0.0f64; b * s1 * n1];
        for bi in 0..b {
            let act_q = seq_q.as_ref().map_or(s1 as i64, |v| v[bi] as i64);
            let act_kv = seq_kv.as_ref().map_or(kd1 as i64, |v| v[bi] as i64);
            for si in 0..s1.min(act_q.max(0) as usize) {
                if self.causal && (si as i64) < act_q - act_kv {
                    continue;
                }
                let threshold = if self.causal {
                    act_kv - act_q + si as i64 + 1
                } else {
                    act_kv
                };
                let sbs = self.sparse_block as i64;
                let valid = (topk as i64).min((threshold.max(0) + sbs - 1) / sbs) as usize;
                let base = (bi * s1 + si) * topk;
                let mut positions = Vec::new();
                for &e in &idx[base..base + valid] {
                    let e = e as i64;
                    if e == -1 {
                        break;
                    }
                    if e < -1 {
                        return Err(Fail::new(
                            ACLNN_ERR_RUNTIME_ERROR,
                            format!("sparseIndices[{bi}, {si}] holds {e}: no source defines it"),
                        ));
                    }
                    let begin = e * sbs;
                    if begin >= threshold {
                        continue;
                    }
                    positions.extend(begin..(begin + sbs).min(threshold));
                }
                // Key rows of those positions.
                let mut rows = Vec::with_capacity(positions.len());
                for p in positions {
                    let p = p as usize;
                    let row = if let Some(t) = &table {
                        let max_blocks = self.table.as_ref().map_or(0, |t| t.dims[1]);
                        let col = p / kd1;
                        let blk = if col < max_blocks {
                            t[bi * max_blocks + col]
                        } else {
                            -1.0
                        };
                        if !(0.0..kd0 as f64).contains(&blk) {
                            return Err(Fail::new(
                                ACLNN_ERR_RUNTIME_ERROR,
                                format!("blockTable[{bi}, {col}] = {blk} is outside [0, {kd0})"),
                            ));
                        }
                        blk as usize * kd1 + p % kd1
                    } else {
                        if p >= kd1 {
                            return Err(Fail::new(
                                ACLNN_ERR_RUNTIME_ERROR,
                                format!("position {p} is outside the key's S2 {kd1}"),
                            ));
                        }
                        bi * kd1 + p
                    };
                    rows.push(row);
                }
                if rows.is_empty() {
                    continue;
                }
                for h in 0..n1 {
                    let r = (bi * s1 + si) * n1 + h;
                    let scores: Vec<f64> = rows
                        .iter()
                        .map(|&kr_i| {
                            let nope: f64 = (0..NOPE)
                                .map(|d| q[r * NOPE + d] * k[kr_i * NOPE + d])
                                .sum();
                            let rope: f64 = (0..ROPE)
                                .map(|d| qr[r * ROPE + d] * kr[kr_i * ROPE + d])
                                .sum();
                            self.scale * (nope + rope)
                        })
                        .collect();
                    let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = scores.iter().map(|x| (x - m).exp()).sum();
                    for (x, &kr_i) in scores.iter().zip(&rows) {
                        let p = round((x - m).exp() / sum);
                        for d in 0..NOPE {
                            out[r * NOPE + d] += p * k[kr_i * NOPE + d];
                        }
                    }
                    smax[r] = m;
                    ssum[r] = sum;
                }
            }
        }
        self.out.store(&out)?;
        if let Some((max_t, sum_t)) = &self.lse {
            // [B, N2 = 1, S1, N1] is the same order as the rows above.
            max_t.store(&smax)?;
            sum_t.store(&ssum)?;
        }
        Ok(())
    }
}

/// The first phase's arguments.
struct Args {
    query: Option<TensorDesc>,
    key: Option<TensorDesc>,
    value: Option<TensorDesc>,
    indices: Option<TensorDesc>,
    table: Option<TensorDesc>,
    seq_q: Option<TensorDesc>,
    seq_kv: Option<TensorDesc>,
    q_rope: Option<TensorDesc>,
    k_rope: Option<TensorDesc>,
    scale: f64,
    sparse_block: i64,
    layout_q: String,
    layout_kv: String,
    sparse_mode: i64,
    pre_tokens: i64,
    next_tokens: i64,
    attention_mode: i64,
    return_lse: bool,
    out: Option<TensorDesc>,
    max: Option<TensorDesc>,
    sum: Option<TensorDesc>,
}

fn required(t: Option<TensorDesc>, arg: &str) -> EmuResult<TensorDesc> {
    t.ok_or_else(|| {
        Fail::new(
            ACLNN_ERR_PARAM_NULLPTR,
            format!("`{arg}` is a null pointer"),
        )
    })
}

fn check(a: Args) -> EmuResult<Sfa> {
    let q = required(a.query, "query")?;
    let k = required(a.key, "key")?;
    let v = required(a.value, "value")?;
    let indices = required(a.indices, "sparseIndices")?;
    let out = required(a.out, "attentionOut")?;
    let halfs = [DT_F16, DT_BF16];
    expect_dtype(&q, &halfs, "query")?;
    for (t, arg) in [(&k, "key"), (&v, "value"), (&out, "attentionOut")] {
        expect_dtype(t, &[q.dtype], arg)?;
    }
    expect_dtype(&indices, &[DT_I32], "sparseIndices")?;
    for (t, arg) in [
        (&a.table, "blockTable"),
        (&a.seq_q, "actualSeqLengthsQuery"),
        (&a.seq_kv, "actualSeqLengthsKv"),
    ] {
        if let Some(t) = t {
            expect_dtype(t, &[DT_I32], arg)?;
        }
    }
    for (t, arg) in [(&a.max, "softmaxMax"), (&a.sum, "softmaxSum")] {
        if let Some(t) = t {
            expect_dtype(t, &[DT_F32], arg)?;
        }
    }
    if !["BSND", "TND"].contains(&a.layout_q.as_str()) {
        return Err(tiling(format!(
            "Tensor query only supports layout BSND, TND, but got {}",
            a.layout_q
        )));
    }
    if !["BSND", "TND", "PA_BSND"].contains(&a.layout_kv.as_str()) {
        return Err(tiling(format!(
            "Tensor key only supports layout BSND, TND, PA_BSND, but got {}",
            a.layout_kv
        )));
    }
    if a.layout_q != "BSND" || a.layout_kv == "TND" {
        return Err(Fail::invalid(format!(
            "emulator: layoutQuery BSND with layoutKv BSND or PA_BSND only, got {} / {}",
            a.layout_q, a.layout_kv
        )));
    }
    if a.attention_mode != 2 {
        return Err(tiling("attentionMode only support 2."));
    }
    let (Some(q_rope), Some(k_rope)) = (a.q_rope, a.k_rope) else {
        return Err(tiling(
            "In Mla situation, desc of keyRope and queryRope should not be null",
        ));
    };
    for (t, arg) in [(&q_rope, "queryRope"), (&k_rope, "keyRope")] {
        expect_dtype(t, &[q.dtype], arg)?;
    }
    for (t, arg) in [
        (&q, "query"),
        (&k, "key"),
        (&v, "value"),
        (&indices, "sparseIndices"),
        (&q_rope, "queryRope"),
        (&k_rope, "keyRope"),
        (&out, "attentionOut"),
    ] {
        if !t.is_contiguous() {
            return Err(Fail::invalid(format!(
                "`{arg}` must be contiguous (非连续Tensor x)"
            )));
        }
    }
    if q.dims.len() != 4 || k.dims.len() != 4 {
        return Err(tiling(format!(
            "When layout is BSND/PA_BSND, query and key dimension should be 4, got {:?} / {:?}",
            q.dims, k.dims
        )));
    }
    let (b, s1, n1, d) = (q.dims[0], q.dims[1], q.dims[2], q.dims[3]);
    let (n2, dk) = (k.dims[2], k.dims[3]);
    if b == 0 {
        return Err(tiling("batch_size should be greater than 0, but got 0"));
    }
    if n2 != 1 {
        return Err(tiling(format!("kv_head_num should be 1, but got {n2}")));
    }
    if ![1, 2, 4, 8, 16, 32, 64, 128].contains(&n1) {
        return Err(tiling(format!(
            "group num should be in 1, 2, 4, 8, 16, 32, 64, 128, but got {n1}"
        )));
    }
    if d != NOPE || dk != NOPE {
        return Err(tiling(format!(
            "qk_head_dim only support 512, but got {d} (key {dk})"
        )));
    }
    if v.dims != k.dims {
        return Err(tiling(format!(
            "value shape {:?} should equal key shape {:?}",
            v.dims, k.dims
        )));
    }
    if q_rope.dims.len() != 4 || q_rope.dims[3] != ROPE {
        return Err(tiling(format!(
            "rope_head_dim should be 64, but got {:?}",
            q_rope.dims
        )));
    }
    expect_dims(&q_rope, &[b, s1, n1, ROPE], "queryRope")?;
    expect_dims(&k_rope, &[k.dims[0], k.dims[1], 1, ROPE], "keyRope")?;
    expect_dims(&out, &[b, s1, n1, NOPE], "attentionOut")?;
    if indices.dims.len() != 4 || indices.dims[..3] != [b, s1, 1] || indices.dims[3] == 0 {
        return Err(tiling(format!(
            "sparseIndices must be [{b}, {s1}, 1, sparse_size > 0], got {:?}",
            indices.dims
        )));
    }
    if a.sparse_mode != 0 && a.sparse_mode != 3 {
        return Err(tiling(format!(
            "sparseMode must == 0/3, but got: {}.",
            a.sparse_mode
        )));
    }
    let sbs = a.sparse_block;
    if !(1..=128).contains(&sbs) || sbs & (sbs - 1) != 0 {
        return Err(tiling(format!(
            "sparseBlockSize should be be in range [1, 128] and be a power of 2, but got: {sbs}."
        )));
    }
    if a.pre_tokens != i64::MAX || a.next_tokens != i64::MAX {
        return Err(tiling(
            "preTokens / nextTokens should be 9223372036854775807",
        ));
    }
    let paged = a.layout_kv == "PA_BSND";
    if paged {
        let bs = k.dims[1];
        if bs == 0 || bs > 1024 || bs % 16 != 0 || bs % sbs as usize != 0 {
            return Err(tiling(format!(
                "when page attention is enabled, block_size({bs}) should be 16-aligned in \
                 (0, 1024] and divisible by sparse_block_size({sbs})"
            )));
        }
        let table = a
            .table
            .as_ref()
            .ok_or_else(|| tiling("blockTable must be provided with PA_BSND"))?;
        if table.dims.len() != 2 || table.dims[0] != b {
            return Err(tiling(format!(
                "blockTable's first dimension should be equal to batch size({b}), got {:?}",
                table.dims
            )));
        }
        if a.seq_kv.is_none() {
            return Err(tiling(
                "when layout of key is PA_BSND, actualSeqLengthsKv must be provided.",
            ));
        }
        if a.return_lse {
            return Err(tiling(
                "returnSoftmaxLse is supported only when layout_kv is not PA_BSND",
            ));
        }
    } else {
        // MOEMLA_CANN_EMULATOR_CANN=2025-12: the page's "only in training" (ops/mod.rs).
        if a.return_lse && older_cann() {
            return Err(tiling(
                "emulated older CANN: returnSoftmaxLse is supported only in training",
            ));
        }
        if a.table.is_some() {
            return Err(tiling(
                "when the layout_kv is BSND, blockTable should be null",
            ));
        }
        if k.dims[0] != b {
            return Err(tiling(format!(
                "key batch {} should equal query batch {b}",
                k.dims[0]
            )));
        }
    }
    for (t, arg, limit) in [
        (&a.seq_q, "actualSeqLengthsQuery", s1),
        (
            &a.seq_kv,
            "actualSeqLengthsKv",
            if paged {
                a.table.as_ref().map_or(0, |t| t.dims[1]) * k.dims[1]
            } else {
                k.dims[1]
            },
        ),
    ] {
        if let Some(t) = t {
            if t.dims != [b] {
                return Err(tiling(format!(
                    "{arg} shape size should be equal to batch size[{b}], got {:?}",
                    t.dims
                )));
            }
            if t.load()?
                .iter()
                .any(|&l| !(0.0..=limit as f64).contains(&l))
            {
                return Err(Fail::invalid(format!(
                    "{arg} values must lie in [0, {limit}]"
                )));
            }
        }
    }
    let lse = if a.return_lse {
        let max = required(a.max, "softmaxMax")?;
        let sum = required(a.sum, "softmaxSum")?;
        expect_dims(&max, &[b, 1, s1, n1], "softmaxMax")?;
        expect_dims(&sum, &[b, 1, s1, n1], "softmaxSum")?;
        Some((max, sum))
    } else {
        None
    };
    Ok(Sfa {
        q,
        q_rope,
        k,
        k_rope,
        indices,
        table: a.table,
        seq_q: a.seq_q,
        seq_kv: a.seq_kv,
        out,
        lse,
        scale: a.scale,
        sparse_block: sbs as usize,
        causal: a.sparse_mode == 3,
    })
}

/// First phase of aclnnSparseFlashAttention (\[doc\] signature).
///
/// # Safety
/// Pointers are checked against the emulator's records; the layouts must be null or C
/// strings; out-pointers must be writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclnnSparseFlashAttentionGetWorkspaceSize(
    query: *const AclTensor,
    key: *const AclTensor,
    value: *const AclTensor,
    sparse_indices: *const AclTensor,
    block_table: *const AclTensor,
    actual_seq_lengths_query: *const AclTensor,
    actual_seq_lengths_kv: *const AclTensor,
    query_rope: *const AclTensor,
    key_rope: *const AclTensor,
    scale_value: f64,
    sparse_block_size: i64,
    layout_query: *const c_char,
    layout_kv: *const c_char,
    sparse_mode: i64,
    pre_tokens: i64,
    next_tokens: i64,
    attention_mode: i64,
    return_softmax_lse: bool,
    attention_out: *const AclTensor,
    softmax_max: *const AclTensor,
    softmax_sum: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    let (layout_q, layout_kv) = unsafe { (layout(layout_query), layout(layout_kv)) };
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare(
            "aclnnSparseFlashAttention",
            workspace_size,
            executor,
            || {
                let sfa = check(Args {
                    query: opt_tensor(query, "query")?,
                    key: opt_tensor(key, "key")?,
                    value: opt_tensor(value, "value")?,
                    indices: opt_tensor(sparse_indices, "sparseIndices")?,
                    table: opt_tensor(block_table, "blockTable")?,
                    seq_q: opt_tensor(actual_seq_lengths_query, "actualSeqLengthsQuery")?,
                    seq_kv: opt_tensor(actual_seq_lengths_kv, "actualSeqLengthsKv")?,
                    q_rope: opt_tensor(query_rope, "queryRope")?,
                    k_rope: opt_tensor(key_rope, "keyRope")?,
                    scale: scale_value,
                    sparse_block: sparse_block_size,
                    layout_q,
                    layout_kv,
                    sparse_mode,
                    pre_tokens,
                    next_tokens,
                    attention_mode,
                    return_lse: return_softmax_lse,
                    out: opt_tensor(attention_out, "attentionOut")?,
                    max: opt_tensor(softmax_max, "softmaxMax")?,
                    sum: opt_tensor(softmax_sum, "softmaxSum")?,
                })?;
                Ok(Box::new(move || sfa.run()))
            },
        )
    }
}
aclnn_launch!(aclnnSparseFlashAttention);
