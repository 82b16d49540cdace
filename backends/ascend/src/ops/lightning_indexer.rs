//! dsa_indexer_topk's selection through CANN's fused aclnnLightningIndexer (LI), for the
//! calls its documented limits cover; every other call runs the composed path
//! (`dsa_indexer_topk::run`). Sources, all in hicann/ops-transformer
//! `attention/lightning_indexer/`: \[doc\] `docs/aclnnLightningIndexer.md`, \[tiling\]
//! `op_host/lightning_indexer_tiling.cpp`, \[golden\] `tests/pytest/lightning_indexer_golden.py`
//! (GeneralizedLI.cal_atten_per_batch_b16).
//!
//! When LI serves a call ([`ineligible`] is `None`):
//! - q and k_cache F16/BF16 (\[doc\]; weights FLOAT is allowed on Atlas A2/A3: "参数weights不为
//!   float32时..." and only Ascend 950 refuses float32 weights); Di 128 (\[doc\] "headdim支持
//!   128"); Hi <= 64 (\[doc\] A2/A3 "query的N支持小于等于64"); one key head; block_size a
//!   multiple of 16 up to 1024 (\[doc\]); top_k in [1, 2048] or 3072, 4096, ..., 8192 (\[doc\]
//!   sparseCount).
//! - The call: query BSND [B, Sq, Hi, 128], key PA_BSND = k_cache viewed [num_blocks,
//!   block_size, 1, 128], weights [B, Sq, Hi] F32, blockTable and actualSeqLengthsKey the
//!   caller's block_table and cache_seqlens (checked on the host first), sparseMode 3
//!   (rightDownCausal: position p < seqlen - Sq + i + 1, the contract's bottom-right causal
//!   limit, \[golden\] create_mask) when causal, else 0; sparseCount = top_k.
//! - LI scores sum_h `w[h]` * relu(q_h . k_p) in f32 and returns the positions p (within the
//!   sequence) of the top min(L, top_k), sorted by descending score (stable: the lower
//!   position first among equal scores), -1 after them (\[golden\]). With a paged key it
//!   returns no values (\[doc\] returnValues: "仅在训练且layoutKeyOptional不为PA_BSND场景支持";
//!   \[tiling\] "when return_value is true, key layout do not support PA_BSND"), so:
//! - on the host, each position (checked to lie below L) becomes its flat slot
//!   block_table[b, p / bs] * bs + p % bs; then per query its selected keys are gathered
//!   (aclnnIndexSelect), scored again in f32 (aclnnCast, aclnnMatmul q @ K^T, aclnnRelu,
//!   aclnnMatmul weights @ relu: the contract's formula) into topk_scores; the rest stays
//!   -1 / -inf. That pass touches top_k keys per query instead of all L, but it scores each
//!   query separately: 5 aclnn launches per query (IndexSelect, Cast, Matmul, Relu,
//!   Matmul), B*Sq rounds of them, after LI and one cast of q per call.
//! - Fallback: the Dec 2025 \[tiling\] still required weights in the query dtype and
//!   sparseCount <= 2048, so an older CANN refuses every call of this path (the weights are
//!   F32 by contract). When LI's first phase (GetWorkspaceSize) returns an error, [`run`]
//!   returns `Ok(None)` with nothing launched and nothing written, and the caller runs the
//!   composed path (`Paths::indexer_fallback` counts it). An error from LI's launch or the
//!   score pass is returned as is.

use crate::acl::{acl_dtype, ACL_FLOAT};
use crate::device::Launch;
use crate::loader::{Handle, OpApi};
use crate::ops::{compose, i32s};
use crate::AscendBackend;
use moemla_core::calls::{DsaIndexerTopkCall, DsaIndexerTopkOutput};
use moemla_core::{DType, Error, Result};

/// LI's head dim (\[doc\]).
const HEAD_DIM: usize = 128;

/// Whether the loaded op libraries have what the fused path needs (LI and the score pass).
pub fn available(ops: &OpApi) -> bool {
    ops.aclnnLightningIndexer.is_some()
        && ops.aclnnLightningIndexerGetWorkspaceSize.is_some()
        && super::dsa_indexer_topk::available(ops)
}

/// Why a call cannot run on LI (`None`: it can).
pub fn ineligible(ops: &OpApi, call: &DsaIndexerTopkCall<'_>) -> Option<&'static str> {
    let k = call.params.top_k;
    if !available(ops) {
        Some("aclnnLightningIndexer not in the loaded op libraries")
    } else if !matches!(call.dtype, DType::F16 | DType::BF16) {
        Some("F32: LI takes FLOAT16/BFLOAT16 query and key")
    } else if call.d_i != HEAD_DIM {
        Some("LI takes head dim 128 only")
    } else if call.h_i > 64 {
        Some("LI on Atlas A2/A3 takes at most 64 query heads")
    } else if !call.block_size.is_multiple_of(16) || call.block_size > 1024 {
        Some("LI takes block sizes that are multiples of 16 up to 1024")
    } else if !((1..=2048).contains(&k) || (k.is_multiple_of(1024) && (3072..=8192).contains(&k))) {
        Some("LI's sparseCount is 1..=2048 or 3072, 4096, ..., 8192")
    } else {
        None
    }
}

/// Runs an [`ineligible`]-checked call (module doc); `table` and `seqlens` are the checked
/// host copies of block_table and cache_seqlens. `Ok(None)`: LI's first phase refused the
/// call (an older CANN's tiling, say); nothing was launched, so the caller runs the
/// composed path instead. An error after that (LI's launch, the score pass) is returned.
pub fn run(
    be: &AscendBackend,
    call: &DsaIndexerTopkCall<'_>,
    table: &[i32],
    seqlens: &[i32],
) -> Result<Option<DsaIndexerTopkOutput>> {
    let dev = &be.dev;
    let ops = &dev.cann.ops;
    let (b, sq, hi, bs, mb) = (
        call.batch,
        call.s_q,
        call.h_i,
        call.block_size,
        call.max_blocks,
    );
    let top_k = call.params.top_k;
    let rows = b * sq;
    let dt = acl_dtype(call.dtype);
    let i32_t = acl_dtype(DType::I32);
    let q_mem = be.mem(call.q, "dsa_indexer_topk", "q")?;
    let w_mem = be.mem(call.weights, "dsa_indexer_topk", "weights")?;
    let k_mem = be.mem(call.k_cache, "dsa_indexer_topk", "k_cache")?;
    let bt_mem = be.mem(call.block_table, "dsa_indexer_topk", "block_table")?;
    let len_mem = be.mem(call.cache_seqlens, "dsa_indexer_topk", "cache_seqlens")?;

    // 1. LI: positions of the top min(L, top_k) per query.
    let positions = dev.alloc(rows * top_k * 4)?;
    let values = dev.alloc(rows * top_k * call.dtype.size_in_bytes())?;
    {
        let query = dev.tensor(q_mem, &[b, sq, hi, HEAD_DIM], None, 0, dt)?;
        let key = dev.tensor(k_mem, &[call.num_blocks, bs, 1, HEAD_DIM], None, 0, dt)?;
        let weights = dev.tensor(w_mem, &[b, sq, hi], None, 0, ACL_FLOAT)?;
        let lens = dev.tensor(len_mem, &[b], None, 0, i32_t)?;
        let block_table = dev.tensor(bt_mem, &[b, mb], None, 0, i32_t)?;
        let out = dev.tensor(&positions, &[b, sq, 1, top_k], None, 0, i32_t)?;
        let vals = dev.tensor(&values, &[b, sq, 1, top_k], None, 0, dt)?;
        let null = std::ptr::null_mut();
        let mode = if call.params.causal { 3 } else { 0 };
        // SAFETY: handles live for the call; actualSeqLengthsQuery absent (null: "和query的
        // shape的S长度相同", [doc]); out-pointers come from `Device::try_run`.
        let launch = dev.try_run(
            "aclnnLightningIndexer",
            |ws, ex| unsafe {
                (ops.aclnnLightningIndexerGetWorkspaceSize
                    .expect("checked by available()"))(
                    query.raw(),
                    key.raw(),
                    weights.raw(),
                    null,
                    lens.raw(),
                    block_table.raw(),
                    c"BSND".as_ptr(),
                    c"PA_BSND".as_ptr(),
                    top_k as i64,
                    mode,
                    i64::MAX,
                    i64::MAX,
                    false,
                    out.raw(),
                    vals.raw(),
                    ws,
                    ex,
                )
            },
            ops.aclnnLightningIndexer,
        )?;
        if let Launch::Declined(_) = launch {
            return Ok(None);
        }
    }
    // download_bytes synchronises first.
    let pos = i32s(&dev.download_bytes(&positions, rows * top_k * 4)?);

    // 2. Positions -> slots on the host, each checked against its query's L.
    let mut slots = vec![-1i32; rows * top_k];
    let mut counts = vec![0usize; rows];
    for r in 0..rows {
        let (bi, i) = (r / sq, r % sq);
        let len = call.attended_len(seqlens[bi] as usize, i).max(0);
        let mut n = 0;
        for &p in &pos[r * top_k..(r + 1) * top_k] {
            if p == -1 {
                continue;
            }
            if !(0..len).contains(&(p as i64)) {
                return Err(Error::Device {
                    backend: crate::NAME.to_string(),
                    call: "aclnnLightningIndexer".to_string(),
                    message: format!(
                        "returned position {p} for query ({bi}, {i}), outside [0, {len})"
                    ),
                });
            }
            let p = p as usize;
            slots[r * top_k + n] = table[bi * mb + p / bs] * bs as i32 + (p % bs) as i32;
            n += 1;
        }
        counts[r] = n;
    }

    // 3. The scores of the selected keys, in f32, by the contract's formula.
    let neg_inf: Vec<u8> = std::iter::repeat_n(f32::NEG_INFINITY.to_le_bytes(), rows * top_k)
        .flatten()
        .collect();
    let score_out = dev.upload_bytes(&neg_inf)?;
    let di = HEAD_DIM;
    let q32 = dev.alloc(rows * hi * di * 4)?;
    compose::cast_mem(dev, q_mem, &[rows * hi, di], dt, &q32, ACL_FLOAT)?;
    let slot_bytes: Vec<u8> = slots.iter().flat_map(|s| s.to_le_bytes()).collect();
    let slots_dev = dev.upload_bytes(&slot_bytes)?;
    let cache_slots = call.num_blocks * bs;
    for (r, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let k_run = dev.alloc(n * di * call.dtype.size_in_bytes())?;
        // Every slot lies in [0, slots): table entries were checked on the host.
        compose::index_select(
            dev,
            &dev.tensor(k_mem, &[cache_slots, di], None, 0, dt)?,
            0,
            &dev.tensor(&slots_dev, &[n], None, r * top_k, i32_t)?,
            &dev.tensor(&k_run, &[n, di], None, 0, dt)?,
        )?;
        let k32 = dev.alloc(n * di * 4)?;
        compose::cast_mem(dev, &k_run, &[n, di], dt, &k32, ACL_FLOAT)?;
        let s = dev.alloc(hi * n * 4)?;
        let relu = dev.alloc(hi * n * 4)?;
        let qv = dev.tensor(&q32, &[hi, di], None, r * hi * di, ACL_FLOAT)?;
        let kt = dev.tensor(&k32, &[di, n], Some(&[1, di]), 0, ACL_FLOAT)?;
        let st = dev.tensor(&s, &[hi, n], None, 0, ACL_FLOAT)?;
        compose::matmul(dev, &qv, &kt, &st)?;
        let rt = dev.tensor(&relu, &[hi, n], None, 0, ACL_FLOAT)?;
        let relu_op = |ws: *mut u64, ex: *mut Handle| {
            // SAFETY: handles live for the call; out-pointers come from `Device::run`.
            unsafe {
                (ops.aclnnReluGetWorkspaceSize
                    .expect("checked by available()"))(st.raw(), rt.raw(), ws, ex)
            }
        };
        dev.run("aclnnRelu", relu_op, ops.aclnnRelu)?;
        let wv = dev.tensor(w_mem, &[1, hi], None, r * hi, ACL_FLOAT)?;
        let sc = dev.tensor(&score_out, &[1, n], None, r * top_k, ACL_FLOAT)?;
        compose::matmul(dev, &wv, &rt, &sc)?;
    }
    dev.synchronize()?;
    let dims = [b, sq, top_k];
    Ok(Some(DsaIndexerTopkOutput {
        topk_indices: be.wrap(slots_dev, dims, DType::I32),
        topk_scores: be.wrap(score_out, dims, DType::F32),
    }))
}
