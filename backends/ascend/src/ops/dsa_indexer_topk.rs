//! dsa_indexer_topk. Where CANN's aclnnLightningIndexer's documented limits hold (F16/BF16,
//! Di 128, Hi <= 64, block size a multiple of 16 up to 1024, top_k it takes), the selection
//! runs there and only the selected keys are scored again for topk_scores
//! (`lightning_indexer.rs`). Every other call (F32, other Hi/Di or block sizes, a top_k
//! outside 1..=2048 and 3072, 4096, ..., 8192), and a call LI's first phase refuses (an
//! older CANN: nothing is launched, the fallback is counted in `Paths::indexer_fallback`),
//! runs composed, per query: aclnnIndexSelect (gather the attended keys) + aclnnCast +
//! aclnnMatmul (q @ K^T) + aclnnRelu + aclnnMatmul (weights @ relu: the head reduction) +
//! aclnnTopk + aclnnIndexSelect (positions -> cache slots), all in f32:
//!
//! 1. block_table and cache_seqlens are copied to the host and checked
//!    (`moemla_core::indices::check_indexer_indices`); for each (b, i) the host lists the
//!    flat slots of positions p < L (L as in mla_decode: causal bottom-right aligned).
//! 2. q is cast to F32 once.
//! 3. Per (b, i) with L > 0: K = aclnnIndexSelect(k_cache as [slots, Di], dim 0, slot list)
//!    cast to F32 [L, Di]; S = q[b, i] [Hi, Di] @ K^T (aclnnMatmul, K^T a transposed view);
//!    R = aclnnRelu(S); score = weights[b, i] [1, Hi] @ R (aclnnMatmul) [1, L];
//!    aclnnTopk(score, min(top_k, L), largest, sorted) gives the scores and positions; the
//!    positions become slots by aclnnIndexSelect on the slot list (INT64 index), written
//!    straight into the row of topk_indices; the scores are copied into topk_scores
//!    (aclnnInplaceCopy).
//! 4. Entries past L (and rows with L = 0) keep the -1 / -inf the outputs start with.
//!
//! Equal scores: aclnnTopk's page gives no order among them; the contract compares index
//! sets and its goldens keep a gap at the k-th score, so only a tie exactly at the boundary
//! could pick a different (equally valid) position.

use crate::acl::{acl_dtype, ACL_FLOAT};
use crate::loader::{Handle, OpApi};
use crate::ops::{compose, i32s, lightning_indexer, require_ops};
use crate::AscendBackend;
use moemla_core::calls::{DsaIndexerTopkCall, DsaIndexerTopkOutput};
use moemla_core::{indices, DType, Op, Result};
use std::sync::atomic::Ordering::Relaxed;

/// ACL_INT64 (AscendCL "aclDataType").
const ACL_INT64: i32 = 9;

/// What the mapping does, for `info().notes`: which path serves which (dtype, shape).
pub const NOTES: [&str; 2] = [
    "dsa_indexer_topk F16/BF16 with Di 128, Hi <= 64, block size a multiple of 16 up to 1024, top_k 1..=2048 or 3072..=8192 by 1024: CANN's aclnnLightningIndexer selects (PA_BSND key = k_cache, the caller's block table and lengths, sparseMode 3 when causal); positions become slots on the host and the selected keys are scored again in f32, per query (aclnnIndexSelect + aclnnCast + aclnnMatmul + aclnnRelu + aclnnMatmul: 5 launches per query, B*Sq rounds) because LI returns no values with a paged key; if the loaded CANN's LI refuses the call at GetWorkspaceSize (the Dec 2025 tiling wants weights in the query dtype and top_k <= 2048), the call runs composed instead, counted as a fallback (src/ops/lightning_indexer.rs)",
    "dsa_indexer_topk otherwise (F32; Di other than 128, Hi > 64, a block size not a multiple of 16 up to 1024, top_k outside 1..=2048 and 3072..=8192 by 1024) and when LI refuses a call: composed per query, aclnnIndexSelect gathers the attended keys, aclnnMatmul + aclnnRelu + aclnnMatmul (head weights) score them in f32, aclnnTopk picks the best, aclnnIndexSelect turns positions into slots; block table checked on the host; ~8 launches per query",
];

/// Whether the loaded op libraries have what dsa_indexer_topk needs.
pub fn available(ops: &OpApi) -> bool {
    ops.aclnnIndexSelect.is_some()
        && ops.aclnnIndexSelectGetWorkspaceSize.is_some()
        && ops.aclnnCast.is_some()
        && ops.aclnnCastGetWorkspaceSize.is_some()
        && ops.aclnnMatmul.is_some()
        && ops.aclnnMatmulGetWorkspaceSize.is_some()
        && ops.aclnnRelu.is_some()
        && ops.aclnnReluGetWorkspaceSize.is_some()
        && ops.aclnnTopk.is_some()
        && ops.aclnnTopkGetWorkspaceSize.is_some()
        && ops.aclnnInplaceCopy.is_some()
        && ops.aclnnInplaceCopyGetWorkspaceSize.is_some()
}

/// Runs dsa_indexer_topk.
pub fn run(be: &AscendBackend, call: &DsaIndexerTopkCall<'_>) -> Result<DsaIndexerTopkOutput> {
    let dev = &be.dev;
    let ops = &dev.cann.ops;
    let (b, sq, hi, di, bs, mb) = (
        call.batch,
        call.s_q,
        call.h_i,
        call.d_i,
        call.block_size,
        call.max_blocks,
    );
    let top_k = call.params.top_k;
    let q_mem = be.mem(call.q, "dsa_indexer_topk", "q")?;
    let w_mem = be.mem(call.weights, "dsa_indexer_topk", "weights")?;
    let k_mem = be.mem(call.k_cache, "dsa_indexer_topk", "k_cache")?;
    let bt_mem = be.mem(call.block_table, "dsa_indexer_topk", "block_table")?;
    let len_mem = be.mem(call.cache_seqlens, "dsa_indexer_topk", "cache_seqlens")?;
    // 1. Index contents first (input errors before capability), on the host.
    let table = i32s(&dev.download_bytes(bt_mem, b * mb * 4)?);
    let seqlens = i32s(&dev.download_bytes(len_mem, b * 4)?);
    indices::check_indexer_indices(call, &table, &seqlens)?;
    require_ops(Op::DsaIndexerTopk, available(ops))?;
    if lightning_indexer::ineligible(ops, call).is_some() {
        be.paths.indexer_composed.fetch_add(1, Relaxed);
    } else if let Some(out) = lightning_indexer::run(be, call, &table, &seqlens)? {
        be.paths.indexer_fused.fetch_add(1, Relaxed);
        return Ok(out);
    } else {
        // LI's first phase refused the call (an older CANN): nothing was launched.
        be.paths.indexer_fallback.fetch_add(1, Relaxed);
    }

    let dt = acl_dtype(call.dtype);
    let i32_t = acl_dtype(DType::I32);
    let slots = call.num_blocks * bs;
    let run_op = |name: &str, prepare: &dyn Fn(*mut u64, *mut Handle) -> i32, launch| {
        dev.run(name, prepare, launch)
    };

    // 2. q as f32; the outputs start as -1 / -inf.
    let rows = b * sq;
    let q32 = if call.dtype == DType::F32 {
        None
    } else {
        let q32 = dev.alloc(rows * hi * di * 4)?;
        compose::cast_mem(dev, q_mem, &[rows * hi, di], dt, &q32, ACL_FLOAT)?;
        Some(q32)
    };
    let q32 = q32.as_deref().unwrap_or(q_mem);
    let minus_one: Vec<u8> = std::iter::repeat_n((-1i32).to_le_bytes(), rows * top_k)
        .flatten()
        .collect();
    let neg_inf: Vec<u8> = std::iter::repeat_n(f32::NEG_INFINITY.to_le_bytes(), rows * top_k)
        .flatten()
        .collect();
    let idx_out = dev.upload_bytes(&minus_one)?;
    let score_out = dev.upload_bytes(&neg_inf)?;

    // 3. One query (b, i) at a time.
    for r in 0..rows {
        let (bi, i) = (r / sq, r % sq);
        let len = call.attended_len(seqlens[bi] as usize, i).max(0) as usize;
        if len == 0 {
            continue;
        }
        let list: Vec<u8> = (0..len)
            .flat_map(|p| (table[bi * mb + p / bs] * bs as i32 + (p % bs) as i32).to_le_bytes())
            .collect();
        let list_dev = dev.upload_bytes(&list)?;
        let k_run = dev.alloc(len * di * call.dtype.size_in_bytes())?;
        // Every slot lies in [0, slots) (checked above).
        compose::index_select(
            dev,
            &dev.tensor(k_mem, &[slots, di], None, 0, dt)?,
            0,
            &dev.tensor(&list_dev, &[len], None, 0, i32_t)?,
            &dev.tensor(&k_run, &[len, di], None, 0, dt)?,
        )?;
        let k32 = if call.dtype == DType::F32 {
            k_run
        } else {
            let k32 = dev.alloc(len * di * 4)?;
            compose::cast_mem(dev, &k_run, &[len, di], dt, &k32, ACL_FLOAT)?;
            k32
        };
        let s = dev.alloc(hi * len * 4)?;
        let relu = dev.alloc(hi * len * 4)?;
        let score = dev.alloc(len * 4)?;
        {
            let qv = dev.tensor(q32, &[hi, di], None, r * hi * di, ACL_FLOAT)?;
            let kt = dev.tensor(&k32, &[di, len], Some(&[1, di]), 0, ACL_FLOAT)?;
            let st = dev.tensor(&s, &[hi, len], None, 0, ACL_FLOAT)?;
            compose::matmul(dev, &qv, &kt, &st)?;
            let rt = dev.tensor(&relu, &[hi, len], None, 0, ACL_FLOAT)?;
            // SAFETY: handles live for the call; out-pointers come from `Device::run`.
            run_op(
                "aclnnRelu",
                &|ws, ex| unsafe {
                    (ops.aclnnReluGetWorkspaceSize
                        .expect("checked by available()"))(
                        st.raw(), rt.raw(), ws, ex
                    )
                },
                ops.aclnnRelu,
            )?;
            let wv = dev.tensor(w_mem, &[1, hi], None, r * hi, ACL_FLOAT)?;
            let sc = dev.tensor(&score, &[1, len], None, 0, ACL_FLOAT)?;
            compose::matmul(dev, &wv, &rt, &sc)?;
        }
        let kk = top_k.min(len);
        let vals = dev.alloc(kk * 4)?;
        let pos = dev.alloc(kk * 8)?;
        {
            let sc = dev.tensor(&score, &[1, len], None, 0, ACL_FLOAT)?;
            let vt = dev.tensor(&vals, &[1, kk], None, 0, ACL_FLOAT)?;
            let pt = dev.tensor(&pos, &[1, kk], None, 0, ACL_INT64)?;
            // SAFETY: as above; dim -1, largest, sorted.
            run_op(
                "aclnnTopk",
                &|ws, ex| unsafe {
                    (ops.aclnnTopkGetWorkspaceSize
                        .expect("checked by available()"))(
                        sc.raw(),
                        kk as i64,
                        -1,
                        true,
                        true,
                        vt.raw(),
                        pt.raw(),
                        ws,
                        ex,
                    )
                },
                ops.aclnnTopk,
            )?;
            let dst = dev.tensor(&score_out, &[1, kk], None, r * top_k, ACL_FLOAT)?;
            compose::inplace_copy(dev, &dst, &vt)?;
        }
        // Every position lies below `len`, the list's length.
        compose::index_select(
            dev,
            &dev.tensor(&list_dev, &[len], None, 0, i32_t)?,
            0,
            &dev.tensor(&pos, &[kk], None, 0, ACL_INT64)?,
            &dev.tensor(&idx_out, &[kk], None, r * top_k, i32_t)?,
        )?;
    }
    dev.synchronize()?;
    let dims = [b, sq, top_k];
    Ok(DsaIndexerTopkOutput {
        topk_indices: be.wrap(idx_out, dims, DType::I32),
        topk_scores: be.wrap(score_out, dims, DType::F32),
    })
}
