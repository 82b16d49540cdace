//! aclnnFusedInferAttentionScoreV3 in its MLA mode (queryRope and keyRope given), as
//! documented in
//! <https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1/API/aolapi/context/aclnnFusedInferAttentionScoreV3.md>
//! (\[doc\]: the same page in hicann/ops-transformer,
//! `attention/fused_infer_attention_score/docs/aclnnFusedInferAttentionScoreV3.md`:
//! "queryRope和keyRope输入时即为MLA场景", Atlas A2, query d = 512) and checked by its tiling
//! (\[feature\]: `attention/fused_infer_attention_score/op_host/fused_infer_attention_score_tiling_check_feature.cpp`,
//! \[single\]: `.../fused_infer_attention_score_tiling_check_single_para.cpp`, same directory):
//!
//! - dtype FLOAT16 / BFLOAT16 for query, key, value, queryRope, keyRope, attentionOut
//!   (\[feature\] CheckFeatureMlaNoQuantDtype); query, key, value must be contiguous
//!   (\[doc\] "非连续Tensor ×");
//! - query S 1..=16, N in {1, 2, 4, 8, 16, 32, 64, 128}, d 512; queryRope d 64 (\[doc\] MLA
//!   constraints);
//! - key n 1, d 512, keyRope d 64; key/value tensor lists of one tensor with equal shapes
//!   (\[doc\]);
//! - page attention required, blockSize 16 or 128 with ND key/value (\[feature\]
//!   CheckFeatureMlaNoquantPa): blockTable INT32 [B, maxBlocks], key [blockNum, blockSize,
//!   512] (\[doc\] the "(blocknum, blocksize, H)" page layout);
//! - actualSeqLengthsKv per batch (\[doc\]);
//! - sparse (\[feature\] CheckFeatureMlaNoquantMask): Q_S == 1 -> sparseMode 0 without
//!   mask; Q_S > 1 -> sparseMode 3 (rightDownCausal) with the optimised 2048 x 2048 mask
//!   (\[doc\] sparseMode table; CANN also takes mode 4 = band, which moemla does not use);
//! - no softmaxLse (softmaxLseFlag must be false), no pse, padding, prefix or quantisation
//!   (\[feature\] CheckFeatureMlaNoquantUnsupported);
//! - innerPrecise in 0..=3 (\[single\] CheckSingleParaInnerPrecise), and 0 or 1 in MLA
//!   mode: "inner_precise(%d) should be 0 or 1 in MLA" (\[feature\]
//!   CheckFeatureMlaNoquantUnsupported); both are tiling failures
//!   (ACLNN_ERR_INNER_TILING_ERROR);
//! - attentionOut = softmax(scaleValue * (q k^T + qRope kRope^T)) v, v = key's 512 columns
//!   (\[doc\] formula).
//!
//! Rows with nothing to attend to (rightDownCausal with KV_S < Q_S) give 0: CANN turns on
//! its invalid-row correction automatically in that case (\[doc\] innerPrecise: "如果算子可判断
//! 出存在无效行场景，会自动使能无效行计算，例如sparse_mode为3，Sq > Skv场景").
//! Block-table entries are *not* range-checked by CANN; the emulator fails with
//! ACLNN_ERR_RUNTIME_ERROR instead of reading outside the cache, so a backend that forgets
//! to check is caught.

use super::{aclnn_launch, expect_dims, expect_dtype};
use crate::executor::prepare;
use crate::handles::{
    opt_int_array, opt_tensor, tensor, tensor_list, AclIntArray, AclTensor, AclTensorList,
};
use crate::status::{EmuResult, Fail, ACLNN_ERR_INNER_TILING_ERROR, ACLNN_ERR_RUNTIME_ERROR};
use crate::tensor::{TensorDesc, DT_BF16, DT_BOOL, DT_F16, DT_I32, DT_I8, DT_U8};
use std::ffi::{c_char, c_void, CStr};

const NOPE: usize = 512;
const ROPE: usize = 64;

/// Everything one MLA call needs, checked.
struct Mla {
    q: TensorDesc,
    q_rope: TensorDesc,
    k: TensorDesc,
    k_rope: TensorDesc,
    table: TensorDesc,
    out: TensorDesc,
    seq_kv: Vec<i64>,
    scale: f64,
    causal: bool,
}

fn not_supported(what: &str) -> Fail {
    Fail::invalid(format!("{what} is not supported in MLA mode (query d 512)"))
}

impl Mla {
    fn run(&self) -> EmuResult<()> {
        let (b, s, n) = (self.q.dims[0], self.q.dims[1], self.q.dims[2]);
        let (num_blocks, bs) = (self.k.dims[0], self.k.dims[1]);
        let max_blocks = self.table.dims[1];
        let (q, qr) = (self.q.load()?, self.q_rope.load()?);
        let (k, kr) = (self.k.load()?, self.k_rope.load()?);
        let table = self.table.load()?;
        let mut out = vec![0.0f64; b * s * n * NOPE];
        for bi in 0..b {
            let kv_len = self.seq_kv[bi].max(0) as usize;
            // Resolve the rows once per batch; an entry outside the cache is an error here.
            let mut rows = Vec::with_capacity(kv_len);
            for p in 0..kv_len {
                let col = p / bs;
                let blk = if col < max_blocks {
                    table[bi * max_blocks + col]
                } else {
                    -1.0
                };
                if !(0.0..num_blocks as f64).contains(&blk) {
                    return Err(Fail::new(
                        ACLNN_ERR_RUNTIME_ERROR,
                        format!("blockTable[{bi}, {col}] = {blk} is outside [0, {num_blocks})"),
                    ));
                }
                rows.push(blk as usize * bs + p % bs);
            }
            for si in 0..s {
                let len = if self.causal {
                    (kv_len as i64 - s as i64 + si as i64 + 1).max(0) as usize
                } else {
                    kv_len
                };
                for h in 0..n {
                    let qi = ((bi * s + si) * n + h) * NOPE;
                    let qri = ((bi * s + si) * n + h) * ROPE;
                    let scores: Vec<f64> = rows[..len]
                        .iter()
                        .map(|&r| {
                            let nope: f64 = (0..NOPE).map(|d| q[qi + d] * k[r * NOPE + d]).sum();
                            let rope: f64 = (0..ROPE).map(|d| qr[qri + d] * kr[r * ROPE + d]).sum();
                            self.scale * (nope + rope)
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for (w, &r) in weights.iter().zip(&rows[..len]) {
                        for d in 0..NOPE {
                            out[qi + d] += w / total * k[r * NOPE + d];
                        }
                    }
                }
            }
        }
        self.out.store(&out)
    }
}

#[allow(clippy::too_many_arguments)]
fn check(
    query: TensorDesc,
    key: Vec<TensorDesc>,
    value: Vec<TensorDesc>,
    mask: Option<TensorDesc>,
    seq_kv: Option<Vec<i64>>,
    table: Option<TensorDesc>,
    q_rope: Option<TensorDesc>,
    k_rope: Option<TensorDesc>,
    heads: (i64, i64),
    scale: f64,
    layout: &str,
    sparse_mode: i64,
    inner_precise: i64,
    block_size: i64,
    lse_flag: bool,
    out: TensorDesc,
) -> EmuResult<Mla> {
    if !(0..=3).contains(&inner_precise) {
        return Err(Fail::new(
            ACLNN_ERR_INNER_TILING_ERROR,
            format!("inner_precise({inner_precise}) should be in [0, 1, 2, 3]"),
        ));
    }
    let (Some(q_rope), Some(k_rope)) = (q_rope, k_rope) else {
        return Err(Fail::invalid(
            "emulator: only the MLA mode (queryRope and keyRope both given) is implemented",
        ));
    };
    if inner_precise > 1 {
        return Err(Fail::new(
            ACLNN_ERR_INNER_TILING_ERROR,
            format!("inner_precise({inner_precise}) should be 0 or 1 in MLA"),
        ));
    }
    if layout != "BSND" {
        return Err(Fail::invalid(format!(
            "emulator: inputLayout BSND only, got {layout:?}"
        )));
    }
    let halfs = [DT_F16, DT_BF16];
    expect_dtype(&query, &halfs, "query")?;
    for (t, arg) in [
        (&q_rope, "queryRope"),
        (&k_rope, "keyRope"),
        (&out, "attentionOut"),
    ] {
        expect_dtype(t, &[query.dtype], arg)?;
    }
    if key.len() != 1 || value.len() != 1 {
        return Err(not_supported(
            "a key/value tensor list of more than one tensor",
        ));
    }
    let (k, v) = (key[0].clone(), &value[0]);
    expect_dtype(&k, &[query.dtype], "key")?;
    expect_dtype(v, &[query.dtype], "value")?;
    if k.dims != v.dims || k.data != v.data || k.offset != v.offset {
        return Err(Fail::invalid(
            "MLA mode: value must be the same cache as key",
        ));
    }
    for (t, arg) in [
        (&query, "query"),
        (&k, "key"),
        (&q_rope, "queryRope"),
        (&k_rope, "keyRope"),
    ] {
        if !t.is_contiguous() {
            return Err(Fail::invalid(format!("`{arg}` must be contiguous")));
        }
    }
    if query.dims.len() != 4 || query.dims[3] != NOPE {
        return Err(Fail::invalid(format!(
            "query must be [B, S, N, 512], got {:?}",
            query.dims
        )));
    }
    let (b, s, n) = (query.dims[0], query.dims[1], query.dims[2]);
    expect_dims(&q_rope, &[b, s, n, ROPE], "queryRope")?;
    expect_dims(&out, &[b, s, n, NOPE], "attentionOut")?;
    if !(1..=16).contains(&s) || ![1, 2, 4, 8, 16, 32, 64, 128].contains(&n) {
        return Err(Fail::invalid(format!(
            "MLA mode: query S {s} must be 1..=16, N {n} in 1..128 (powers of 2)"
        )));
    }
    if heads.0 != n as i64 || heads.1 != 1 {
        return Err(Fail::invalid(format!(
            "numHeads {} must equal query N {n}; numKeyValueHeads {} must be 1",
            heads.0, heads.1
        )));
    }
    let table =
        table.ok_or_else(|| not_supported("running without page attention (blockTable)"))?;
    expect_dtype(&table, &[DT_I32], "blockTableOptional")?;
    if block_size != 16 && block_size != 128 {
        return Err(Fail::invalid(format!(
            "blockSize must be 16 or 128, got {block_size}"
        )));
    }
    let bs = block_size as usize;
    if k.dims.len() != 3 || k.dims[1] != bs || k.dims[2] != NOPE {
        return Err(Fail::invalid(format!(
            "key must be [blockNum, {bs}, 512], got {:?}",
            k.dims
        )));
    }
    expect_dims(&k_rope, &[k.dims[0], bs, ROPE], "keyRope")?;
    if table.dims.len() != 2 || table.dims[0] != b {
        return Err(Fail::invalid(format!(
            "blockTable must be [{b}, maxBlocks], got {:?}",
            table.dims
        )));
    }
    let seq_kv = seq_kv
        .ok_or_else(|| Fail::invalid("actualSeqLengthsKv is required with page attention"))?;
    let capacity = (table.dims[1] * bs) as i64;
    if seq_kv.len() != b || seq_kv.iter().any(|&l| !(0..=capacity).contains(&l)) {
        return Err(Fail::invalid(format!(
            "actualSeqLengthsKv {seq_kv:?} must hold {b} values in [0, {capacity}]"
        )));
    }
    let causal = match (s, sparse_mode, &mask) {
        (1, 0, None) => false,
        (2.., 3, Some(m)) => {
            expect_dtype(m, &[DT_BOOL, DT_I8, DT_U8], "attenMaskOptional")?;
            expect_dims(
                m,
                &[2048, 2048],
                "attenMaskOptional (optimised rightDownCausal mask)",
            )?;
            true
        }
        _ => {
            return Err(Fail::invalid(format!(
                "MLA mode: Q_S 1 needs sparseMode 0 without mask, Q_S > 1 sparseMode 3 with \
                 mask; got Q_S {s}, sparseMode {sparse_mode}, mask {}",
                if mask.is_some() { "given" } else { "absent" }
            )))
        }
    };
    if lse_flag {
        return Err(not_supported("softmaxLseFlag = true"));
    }
    Ok(Mla {
        q: query,
        q_rope,
        k,
        k_rope,
        table,
        out,
        seq_kv,
        scale,
        causal,
    })
}

/// First phase of aclnnFusedInferAttentionScoreV3 (MLA mode).
///
/// # Safety
/// Pointers are checked against the emulator's records; `input_layout` must be null or a C
/// string; out-pointers must be writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclnnFusedInferAttentionScoreV3GetWorkspaceSize(
    query: *const AclTensor,
    key: *const AclTensorList,
    value: *const AclTensorList,
    pse_shift: *const AclTensor,
    atten_mask: *const AclTensor,
    actual_seq_lengths: *const AclIntArray,
    actual_seq_lengths_kv: *const AclIntArray,
    deq_scale1: *const AclTensor,
    quant_scale1: *const AclTensor,
    deq_scale2: *const AclTensor,
    quant_scale2: *const AclTensor,
    quant_offset2: *const AclTensor,
    antiquant_scale: *const AclTensor,
    antiquant_offset: *const AclTensor,
    block_table: *const AclTensor,
    query_padding_size: *const AclTensor,
    kv_padding_size: *const AclTensor,
    key_antiquant_scale: *const AclTensor,
    key_antiquant_offset: *const AclTensor,
    value_antiquant_scale: *const AclTensor,
    value_antiquant_offset: *const AclTensor,
    key_shared_prefix: *const AclTensor,
    value_shared_prefix: *const AclTensor,
    actual_shared_prefix_len: *const AclIntArray,
    query_rope: *const AclTensor,
    key_rope: *const AclTensor,
    key_rope_antiquant_scale: *const AclTensor,
    num_heads: i64,
    scale_value: f64,
    _pre_tokens: i64,
    _next_tokens: i64,
    input_layout: *const c_char,
    num_key_value_heads: i64,
    sparse_mode: i64,
    inner_precise: i64,
    block_size: i64,
    _antiquant_mode: i64,
    softmax_lse_flag: bool,
    _key_antiquant_mode: i64,
    _value_antiquant_mode: i64,
    attention_out: *const AclTensor,
    _softmax_lse: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    let unsupported: [(*const AclTensor, &str); 17] = [
        (pse_shift, "pseShift"),
        (deq_scale1, "deqScale1"),
        (quant_scale1, "quantScale1"),
        (deq_scale2, "deqScale2"),
        (quant_scale2, "quantScale2"),
        (quant_offset2, "quantOffset2"),
        (antiquant_scale, "antiquantScale"),
        (antiquant_offset, "antiquantOffset"),
        (query_padding_size, "queryPaddingSize"),
        (kv_padding_size, "kvPaddingSize"),
        (key_antiquant_scale, "keyAntiquantScale"),
        (key_antiquant_offset, "keyAntiquantOffset"),
        (value_antiquant_scale, "valueAntiquantScale"),
        (value_antiquant_offset, "valueAntiquantOffset"),
        (key_shared_prefix, "keySharedPrefix"),
        (value_shared_prefix, "valueSharedPrefix"),
        (key_rope_antiquant_scale, "keyRopeAntiquantScale"),
    ];
    let layout = if input_layout.is_null() {
        String::new()
    } else {
        // SAFETY: non-null C string per the caller.
        unsafe { CStr::from_ptr(input_layout) }
            .to_string_lossy()
            .into_owned()
    };
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare(
            "aclnnFusedInferAttentionScoreV3",
            workspace_size,
            executor,
            || {
                if let Some((_, arg)) = unsupported.iter().find(|(p, _)| !p.is_null()) {
                    return Err(not_supported(arg));
                }
                if !actual_shared_prefix_len.is_null() || !actual_seq_lengths.is_null() {
                    return Err(not_supported(
                        "actualSeqLengths / actualSharedPrefixLen outside TND",
                    ));
                }
                let mla = check(
                    tensor(query, "query")?,
                    tensor_list(key, "key")?,
                    tensor_list(value, "value")?,
                    opt_tensor(atten_mask, "attenMaskOptional")?,
                    opt_int_array(actual_seq_lengths_kv, "actualSeqLengthsKvOptional")?,
                    opt_tensor(block_table, "blockTableOptional")?,
                    opt_tensor(query_rope, "queryRopeOptional")?,
                    opt_tensor(key_rope, "keyRopeOptional")?,
                    (num_heads, num_key_value_heads),
                    scale_value,
                    &layout,
                    sparse_mode,
                    inner_precise,
                    block_size,
                    softmax_lse_flag,
                    tensor(attention_out, "attentionOut")?,
                )?;
                Ok(Box::new(move || mla.run()))
            },
        )
    }
}
aclnn_launch!(aclnnFusedInferAttentionScoreV3);
