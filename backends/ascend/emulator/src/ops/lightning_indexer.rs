//! aclnnLightningIndexer (LI), as Huawei's sources give it. All paths in
//! hicann/ops-transformer `attention/lightning_indexer/`: \[doc\]
//! `docs/aclnnLightningIndexer.md`, \[tiling\] `op_host/lightning_indexer_tiling.cpp`,
//! \[golden\] `tests/pytest/lightning_indexer_golden.py` (GeneralizedLI).
//!
//! Checks (first phase):
//! - query, key, weights, sparseIndicesOut required (ACLNN_ERR_PARAM_NULLPTR); query
//!   FLOAT16/BFLOAT16, key the same; weights FLOAT16/BFLOAT16/FLOAT, the query's dtype
//!   unless FLOAT (\[doc\] "参数weights不为float32时，参数query、key、weights的数据类型应保持一致";
//!   FLOAT is refused only on Ascend 950); sparseIndicesOut INT32, sparseValuesOut the
//!   query's dtype, actual lengths and blockTable INT32 (\[doc\], \[tiling\]); these are
//!   ACLNN_ERR_PARAM_INVALID. query, key and weights contiguous (\[doc\] A2/A3
//!   "key不支持非连续", query/weights "非连续Tensor x").
//! - layoutQuery BSND or TND, layoutKey PA_BSND, BSND or TND (\[tiling\] "input attr
//!   layout_key only supported PA_BSND, BSND or TND"); the emulator implements query BSND
//!   with key PA_BSND (others: not emulated).
//! - key N 1 (\[tiling\] "only support 1"); head dim 128 (\[tiling\] "head_dim only support
//!   128"); query N <= 64 (Atlas A2/A3, \[doc\]); block_size a multiple of 16 in (0, 1024]
//!   (\[tiling\]); sparseCount in [1, 2048] or 3072, 4096, ..., 8192 (\[doc\]; the Dec 2025
//!   tiling allowed <= 2048 only, and weights in the query's dtype only: emulated with
//!   `MOEMLA_CANN_EMULATOR_CANN=2025-12`, see `ops/mod.rs`); sparseMode 0 or 3;
//!   preTokens = nextTokens = 2^63-1; returnValues not with a PA_BSND key (\[tiling\]
//!   "when return_value is true, key layout do not support PA_BSND"); PA_BSND needs
//!   blockTable `[B, *]` and actualSeqLengthsKey `[B]` (\[tiling\]). These are tiling
//!   failures (ACLNN_ERR_INNER_TILING_ERROR).
//!
//! Semantics (launch, \[golden\] cal_atten_per_batch_b16): for batch b, query row i <
//! `actSeqQ[b]` (default S1): `score(p) = sum_h w[b, i, h] * relu(q[b, i, h] . k_p)` in f32
//! over positions p < `actSeqKey[b]` (k_p through the block table), with sparseMode 3
//! masking p >= actSeqKey - actSeqQ + i + 1 (create_mask); the unmasked positions sorted by
//! descending score, stably (the lower position first among equal scores); the first
//! min(actSeqKey, sparseCount) entries of that order written, -1 everywhere else. A
//! block-table entry outside the cache is ACLNN_ERR_RUNTIME_ERROR (CANN would read memory
//! there). NaN scores: no source defines their order; the emulator sorts them as
//! `f64::total_cmp` puts them (not the contract's NaN-as-(-inf)).

use super::{aclnn_launch, expect_dims, expect_dtype, layout, older_cann};
use crate::executor::prepare;
use crate::handles::{opt_tensor, AclTensor};
use crate::status::{
    EmuResult, Fail, ACLNN_ERR_INNER_TILING_ERROR, ACLNN_ERR_PARAM_NULLPTR, ACLNN_ERR_RUNTIME_ERROR,
};
use crate::tensor::{TensorDesc, DT_BF16, DT_F16, DT_F32, DT_I32};
use std::ffi::{c_char, c_void};

const HEAD_DIM: usize = 128;

fn tiling(message: impl Into<String>) -> Fail {
    Fail::new(ACLNN_ERR_INNER_TILING_ERROR, message)
}

fn required(t: Option<TensorDesc>, arg: &str) -> EmuResult<TensorDesc> {
    t.ok_or_else(|| {
        Fail::new(
            ACLNN_ERR_PARAM_NULLPTR,
            format!("`{arg}` is a null pointer"),
        )
    })
}

/// One checked call.
struct Li {
    q: TensorDesc,
    k: TensorDesc,
    w: TensorDesc,
    seq_q: Option<TensorDesc>,
    seq_k: TensorDesc,
    table: TensorDesc,
    out: TensorDesc,
    count: usize,
    causal: bool,
}

impl Li {
    fn run(&self) -> EmuResult<()> {
        let (b, s1, n1) = (self.q.dims[0], self.q.dims[1], self.q.dims[2]);
        let (blocks, bs) = (self.k.dims[0], self.k.dims[1]);
        let mb = self.table.dims[1];
        let (q, k, w) = (self.q.load()?, self.k.load()?, self.w.load()?);
        let table = self.table.load()?;
        let seq_k = self.seq_k.load()?;
        let seq_q = self.seq_q.as_ref().map(|t| t.load()).transpose()?;
        let mut out = vec![-1.0f64; b * s1 * self.count];
        for bi in 0..b {
            let act_q = seq_q
                .as_ref()
                .map_or(s1, |v| v[bi].max(0.0) as usize)
                .min(s1);
            let act_k = seq_k[bi].max(0.0) as usize;
            let mut rows = Vec::with_capacity(act_k);
            for p in 0..act_k {
                let col = p / bs;
                let blk = if col < mb { table[bi * mb + col] } else { -1.0 };
                if !(0.0..blocks as f64).contains(&blk) {
                    return Err(Fail::new(
                        ACLNN_ERR_RUNTIME_ERROR,
                        format!("blockTable[{bi}, {col}] = {blk} is outside [0, {blocks})"),
                    ));
                }
                rows.push(blk as usize * bs + p % bs);
            }
            for i in 0..act_q {
                let limit = if self.causal {
                    (act_k as i64 - act_q as i64 + i as i64 + 1).clamp(0, act_k as i64) as usize
                } else {
                    act_k
                };
                let r = bi * s1 + i;
                let mut scored: Vec<(f64, usize)> = (0..limit)
                    .map(|p| {
                        let score: f64 = (0..n1)
                            .map(|h| {
                                let qh = &q[(r * n1 + h) * HEAD_DIM..][..HEAD_DIM];
                                let kp = &k[rows[p] * HEAD_DIM..][..HEAD_DIM];
                                let dot: f64 = qh.iter().zip(kp).map(|(a, b)| a * b).sum();
                                // f32 arithmetic, as the golden's float32 bmm.
                                (w[r * n1 + h] as f32 * (dot as f32).max(0.0)) as f64
                            })
                            .sum();
                        (score as f32 as f64, p)
                    })
                    .collect();
                // Stable by descending score: equal scores keep ascending positions.
                scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                let n = scored.len().min(self.count);
                for (j, &(_, p)) in scored[..n].iter().enumerate() {
                    out[r * self.count + j] = p as f64;
                }
            }
        }
        self.out.store(&out)
    }
}

/// The first phase's arguments.
struct Args {
    query: Option<TensorDesc>,
    key: Option<TensorDesc>,
    weights: Option<TensorDesc>,
    seq_q: Option<TensorDesc>,
    seq_k: Option<TensorDesc>,
    table: Option<TensorDesc>,
    layout_q: String,
    layout_k: String,
    count: i64,
    mode: i64,
    pre: i64,
    next: i64,
    values: bool,
    out: Option<TensorDesc>,
    vals: Option<TensorDesc>,
}

fn check(a: Args) -> EmuResult<Li> {
    let q = required(a.query, "query")?;
    let k = required(a.key, "key")?;
    let w = required(a.weights, "weights")?;
    let out = required(a.out, "sparseIndicesOut")?;
    expect_dtype(&q, &[DT_F16, DT_BF16], "query")?;
    expect_dtype(&k, &[q.dtype], "key")?;
    expect_dtype(&w, &[q.dtype, DT_F32], "weights")?;
    expect_dtype(&out, &[DT_I32], "sparseIndicesOut")?;
    if let Some(v) = &a.vals {
        expect_dtype(v, &[q.dtype], "sparseValuesOut")?;
    }
    for (t, arg) in [
        (&a.seq_q, "actualSeqLengthsQueryOptional"),
        (&a.seq_k, "actualSeqLengthsKeyOptional"),
        (&a.table, "blockTableOptional"),
    ] {
        if let Some(t) = t {
            expect_dtype(t, &[DT_I32], arg)?;
        }
    }
    for (t, arg) in [(&q, "query"), (&k, "key"), (&w, "weights")] {
        if !t.is_contiguous() {
            return Err(Fail::invalid(format!("`{arg}` must be contiguous")));
        }
    }
    if !["BSND", "TND"].contains(&a.layout_q.as_str()) {
        return Err(tiling(
            "input attr layout_query only supported BSND or TND.",
        ));
    }
    if !["PA_BSND", "BSND", "TND"].contains(&a.layout_k.as_str()) {
        return Err(tiling(
            "input attr layout_key only supported PA_BSND, BSND or TND",
        ));
    }
    if a.layout_q != "BSND" || a.layout_k != "PA_BSND" {
        return Err(Fail::invalid(format!(
            "emulator: layoutQuery BSND with layoutKey PA_BSND only, got {} / {}",
            a.layout_q, a.layout_k
        )));
    }
    let count_ok =
        (1..=2048).contains(&a.count) || (a.count % 1024 == 0 && (3072..=8192).contains(&a.count));
    if !count_ok {
        return Err(tiling(format!(
            "sparseCount {} must be in [1, 2048] or 3072, 4096, ..., 8192",
            a.count
        )));
    }
    // MOEMLA_CANN_EMULATOR_CANN=2025-12: the Dec 2025 tiling (ops/mod.rs).
    if older_cann() && w.dtype != q.dtype {
        return Err(tiling(
            "emulated Dec 2025 tiling: weights must have the query's dtype",
        ));
    }
    if older_cann() && a.count > 2048 {
        return Err(tiling(format!(
            "emulated Dec 2025 tiling: sparseCount {} must be <= 2048",
            a.count
        )));
    }
    if a.mode != 0 && a.mode != 3 {
        return Err(tiling("input attr sparse_mode only supported 0 or 3."));
    }
    if a.pre != i64::MAX || a.next != i64::MAX {
        return Err(tiling(
            "input attr pre_tokens / next_tokens only supported INT64_MAX.",
        ));
    }
    if a.values {
        return Err(tiling(
            "when return_value is true, key layout do not support PA_BSND.",
        ));
    }
    if q.dims.len() != 4 || k.dims.len() != 4 {
        return Err(tiling(format!(
            "query and key must have 4 dims, got {:?} / {:?}",
            q.dims, k.dims
        )));
    }
    let (b, s1, n1) = (q.dims[0], q.dims[1], q.dims[2]);
    if k.dims[2] != 1 {
        return Err(tiling(format!(
            "key shape[2] is numhead, only support 1, got {}",
            k.dims[2]
        )));
    }
    if q.dims[3] != HEAD_DIM || k.dims[3] != HEAD_DIM {
        return Err(tiling("input query's last dim head_dim only support 128."));
    }
    if n1 == 0 || n1 > 64 {
        return Err(tiling(format!("query N {n1}: Atlas A2/A3 support 1..=64")));
    }
    let bs = k.dims[1];
    if bs == 0 || bs > 1024 || bs % 16 != 0 {
        return Err(tiling(
            "input key's block_size must be a multiple of 16 and belong to (0, 1024].",
        ));
    }
    let table = a
        .table
        .ok_or_else(|| tiling("when layout_key is PA_BSND, input block_table must not be null"))?;
    let seq_k = a.seq_k.ok_or_else(|| {
        tiling("when layout_key is PA_BSND, input actual_seq_lengths_key must not be null")
    })?;
    if table.dims.len() != 2 || table.dims[0] != b {
        return Err(tiling(format!(
            "block_table must be [{b}, maxBlocks], got {:?}",
            table.dims
        )));
    }
    expect_dims(&seq_k, &[b], "actualSeqLengthsKeyOptional")?;
    let capacity = (table.dims[1] * bs) as f64;
    if seq_k
        .load()?
        .iter()
        .any(|&l| !(0.0..=capacity).contains(&l))
    {
        return Err(Fail::invalid(format!(
            "actualSeqLengthsKey values must lie in [0, {capacity}]"
        )));
    }
    if let Some(t) = &a.seq_q {
        expect_dims(t, &[b], "actualSeqLengthsQueryOptional")?;
    }
    expect_dims(&w, &[b, s1, n1], "weights")?;
    let count = a.count as usize;
    expect_dims(&out, &[b, s1, 1, count], "sparseIndicesOut")?;
    Ok(Li {
        q,
        k,
        w,
        seq_q: a.seq_q,
        seq_k,
        table,
        out,
        count,
        causal: a.mode == 3,
    })
}

/// First phase of aclnnLightningIndexer (\[doc\] signature).
///
/// # Safety
/// Pointers are checked against the emulator's records; the layouts must be null or C
/// strings; out-pointers must be writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclnnLightningIndexerGetWorkspaceSize(
    query: *const AclTensor,
    key: *const AclTensor,
    weights: *const AclTensor,
    actual_seq_lengths_query: *const AclTensor,
    actual_seq_lengths_key: *const AclTensor,
    block_table: *const AclTensor,
    layout_query: *const c_char,
    layout_key: *const c_char,
    sparse_count: i64,
    sparse_mode: i64,
    pre_tokens: i64,
    next_tokens: i64,
    return_values: bool,
    sparse_indices_out: *const AclTensor,
    sparse_values_out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    let (layout_q, layout_k) = unsafe { (layout(layout_query), layout(layout_key)) };
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnLightningIndexer", workspace_size, executor, || {
            let li = check(Args {
                query: opt_tensor(query, "query")?,
                key: opt_tensor(key, "key")?,
                weights: opt_tensor(weights, "weights")?,
                seq_q: opt_tensor(actual_seq_lengths_query, "actualSeqLengthsQueryOptional")?,
                seq_k: opt_tensor(actual_seq_lengths_key, "actualSeqLengthsKeyOptional")?,
                table: opt_tensor(block_table, "blockTableOptional")?,
                layout_q,
                layout_k,
                count: sparse_count,
                mode: sparse_mode,
                pre: pre_tokens,
                next: next_tokens,
                values: return_values,
                out: opt_tensor(sparse_indices_out, "sparseIndicesOut")?,
                vals: opt_tensor(sparse_values_out, "sparseValuesOut")?,
            })?;
            Ok(Box::new(move || li.run()))
        })
    }
}
aclnn_launch!(aclnnLightningIndexer);
