//! mla_decode -> aclnnFusedInferAttentionScoreV3 in MLA mode for `o`, plus a second pass
//! for `lse` (the MLA mode cannot output it).
//!
//! 1. Index contents: block_table and cache_seqlens are copied to the host (aclrtMemcpy)
//!    and checked with `moemla_core::indices` — CANN's ops do not bounds-check them. Unused
//!    block-table entries are replaced by 0 in the table given to CANN.
//! 2. Split (aclnnInplaceCopy from strided views, since FIA wants contiguous key/query):
//!    kv_cache [nb, bs, 1, 576] -> nope cache [nb, bs, 512] + rope cache [nb, bs, 64];
//!    q [B, Sq, Hq, 576] -> q_nope [B, Sq, Hq, 512] + q_rope [B, Sq, Hq, 64].
//! 3. aclnnFusedInferAttentionScoreV3: query q_nope, key = value = [nope cache],
//!    queryRope, keyRope, blockTable, actualSeqLengthsKv = seqlens, numHeads Hq,
//!    numKeyValueHeads 1, inputLayout "BSND", blockSize bs, scaleValue softmax_scale,
//!    sparseMode 0 (Sq = 1) or 3 = rightDownCausal with the 2048x2048 mask (Sq > 1, causal),
//!    innerPrecise 0 (high precision; MLA mode refuses 2 and 3, "inner_precise(%d) should
//!    be 0 or 1 in MLA", and sparseMode 3 turns on the invalid-row correction itself for
//!    rows with nothing to attend to), softmaxLseFlag false.
//! 4. lse, per sequence b (natural log, f32): gather its used cache blocks into an F32
//!    `[n_used * bs, 576]` matrix (aclnnInplaceCopy, converting dtype), copy `q[b]` as F32
//!    `[Sq * Hq, 576]` (aclnnInplaceCopy), scores = q @ K^T over the first seqlen rows
//!    (aclnnMatmul on a transposed view, KEEP_DTYPE), scaled (aclnnMuls), then for each query
//!    i aclnnLogSumExp over its attended columns [0, L_i), written through a strided view
//!    into `lse[b, :, i]`. Empty ranges keep the -inf lse was initialised with.
//!
//! Exact re-layouts that widen what FIA takes: a block_size that is a multiple of 128 (or
//! of 16) is passed as block_size / 128 (or / 16) consecutive FIA blocks of the same memory,
//! with the block-table entries expanded on the host; non-causal Sq > 1 (which MLA mode
//! cannot mask: it wants sparseMode 3 for Sq > 1) is passed as one query of Sq * Hq heads,
//! since every query then attends the same range.
//!
//! Outside FIA's limits (FIA V3 page, MLA constraints: dtype F32, Dqk != 576 or Dv != 512,
//! block_size not a multiple of 16, Sq > 16, query heads (Hq, or Sq * Hq when folded) not a
//! power of two <= 128) a call with one kv head runs composed ([`composed`]: the attended
//! positions as slot lists through `mla_sparse_decode::attend`); with Hkv > 1 it is
//! Unsupported.

use crate::acl::{acl_dtype, ACL_INT8};
use crate::buffer::DevMem;
use crate::loader::OpApi;
use crate::ops::{compose, i32s, require_ops, unsupported};
use crate::AscendBackend;
use moemla_core::calls::{MlaDecodeCall, MlaDecodeOutput};
use moemla_core::{indices, DType, Error, KvFormat, Op, Result};

const NOPE: usize = 512;
const ROPE: usize = 64;
/// Query/key width: latent (NOPE) + rope.
pub(crate) const DQK: usize = NOPE + ROPE;
/// Side of the optimised causal mask sparseMode 3 takes (FIA V3 page, sparseMode table).
const MASK: usize = 2048;

/// Contract gaps, for `info().notes`.
pub const NOTES: [&str; 2] = [
    "mla_decode: aclnnFusedInferAttentionScoreV3 MLA mode (F16/BF16, Dqk 576 = 512 + 64, Hkv 1, block_size a multiple of 16 (run as FIA blocks of 128 or 16), Sq <= 16, Hq (non-causal Sq > 1: Sq*Hq) a power of two <= 128); other shapes with one kv head, and F32, run composed (mla_sparse_decode's per-query aclnnIndexSelect + Matmul + Softmax path over the attended positions); Hkv > 1 outside FIA's shapes is Unsupported",
    "mla_decode: lse is not produced by FIA's MLA mode; it is computed by a second pass (aclnnInplaceCopy gather + aclnnMatmul + aclnnMuls + aclnnLogSumExp, in f32)",
];

/// Whether the loaded op libraries have what mla_decode needs.
pub fn available(ops: &OpApi) -> bool {
    ops.aclnnFusedInferAttentionScoreV3GetWorkspaceSize
        .is_some()
        && ops.aclnnFusedInferAttentionScoreV3.is_some()
        && ops.aclnnInplaceCopyGetWorkspaceSize.is_some()
        && ops.aclnnInplaceCopy.is_some()
        && ops.aclnnMatmulGetWorkspaceSize.is_some()
        && ops.aclnnMatmul.is_some()
        && ops.aclnnMulsGetWorkspaceSize.is_some()
        && ops.aclnnMuls.is_some()
        && ops.aclnnLogSumExpGetWorkspaceSize.is_some()
        && ops.aclnnLogSumExp.is_some()
}

/// How a call is laid out for FIA: exact re-expressions of the same attention.
struct Plan {
    /// FIA's page block size: 128 or 16. A cache block of `block_size` tokens is
    /// `block_size / fia_block` consecutive FIA blocks (same memory, table entries expanded).
    fia_block: usize,
    /// Non-causal Sq > 1: all Sq queries attend the same range, so they are passed as
    /// Sq * Hq heads of one query ([B, Sq, Hq, D] is [B, 1, Sq * Hq, D] in memory).
    fold_queries: bool,
}

fn plan(call: &MlaDecodeCall<'_>) -> Result<Plan> {
    let rule =
        |what: String, reason: &str| Err(unsupported(Op::MlaDecode, what, reason.to_string()));
    if call.params.kv_format == KvFormat::Fp8DsV32 {
        return rule(
            "fp8_ds_v32".to_string(),
            "FIA's MLA mode reads FLOAT16/BFLOAT16 caches only",
        );
    }
    if !matches!(call.dtype, DType::F16 | DType::BF16) {
        return rule(
            call.dtype.to_string(),
            "FIA's MLA mode supports FLOAT16 and BFLOAT16 only",
        );
    }
    if call.d_qk != DQK || call.d_v != NOPE {
        return rule(
            format!("Dqk={} Dv={}", call.d_qk, call.d_v),
            "FIA's MLA mode needs Dqk 576 = 512 + 64 rope, Dv 512",
        );
    }
    if call.h_kv != 1 {
        return rule(
            format!("Hkv={}", call.h_kv),
            "FIA's MLA mode needs one kv head",
        );
    }
    let fia_block =
        match call.block_size {
            b if b % 128 == 0 => 128,
            b if b % 16 == 0 => 16,
            b => return rule(
                format!("block_size={b}"),
                "FIA's MLA page attention supports block sizes 16 and 128 (and so multiples of 16)",
            ),
        };
    let fold_queries = call.s_q > 1 && !call.params.causal;
    let heads = if fold_queries {
        call.s_q * call.h_q
    } else {
        call.h_q
    };
    if call.s_q > 16 {
        return rule(
            format!("Sq={}", call.s_q),
            "FIA's MLA mode supports 1..=16 queries per sequence",
        );
    }
    if !heads.is_power_of_two() || heads > 128 {
        let what = if fold_queries {
            format!("Sq*Hq={heads} (non-causal)")
        } else {
            format!("Hq={heads}")
        };
        return rule(
            what,
            "FIA's MLA mode supports 1, 2, 4, ..., 128 query heads (non-causal Sq > 1 runs as Sq*Hq heads)",
        );
    }
    Ok(Plan {
        fia_block,
        fold_queries,
    })
}

/// mla_decode where FIA's MLA mode cannot run it (F32, other head dims or counts, Sq > 16,
/// block sizes not a multiple of 16), one kv head: query i of sequence b attends the slots
/// of positions [0, L) (block table already checked), through
/// `mla_sparse_decode::attend` (per query aclnnIndexSelect + Matmul + Muls + LogSumExp +
/// Softmax + Matmul in f32).
fn composed(
    be: &AscendBackend,
    call: &MlaDecodeCall<'_>,
    table: &[i32],
    seqlens: &[i32],
    q_mem: &DevMem,
    kv_mem: &DevMem,
) -> Result<MlaDecodeOutput> {
    let (sq, bs, mb) = (call.s_q, call.block_size, call.max_blocks);
    let lists: Vec<Vec<i32>> = (0..call.batch * sq)
        .map(|r| {
            let (b, i) = (r / sq, r % sq);
            let len = call.attended_len(seqlens[b] as usize, i).max(0) as usize;
            (0..len)
                .map(|p| table[b * mb + p / bs] * bs as i32 + (p % bs) as i32)
                .collect()
        })
        .collect();
    let shape = super::mla_sparse_decode::Attend {
        batch: call.batch,
        s_q: sq,
        h_q: call.h_q,
        d_qk: call.d_qk,
        d_v: call.d_v,
        dtype: call.dtype,
        scale: call.params.softmax_scale,
        slots: call.num_blocks * bs,
        fp8: call.params.kv_format == KvFormat::Fp8DsV32,
    };
    super::mla_sparse_decode::attend(be, &shape, q_mem, kv_mem, &lists, None)
}

/// Runs mla_decode.
pub fn run(be: &AscendBackend, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
    require_ops(Op::MlaDecode, available(&be.dev.cann.ops))?;
    let dev = &be.dev;
    let q_mem = be.mem(call.q, "mla_decode", "q")?;
    let kv_mem = be.mem(call.kv_cache, "mla_decode", "kv_cache")?;
    let bt_mem = be.mem(call.block_table, "mla_decode", "block_table")?;
    let len_mem = be.mem(call.cache_seqlens, "mla_decode", "cache_seqlens")?;

    // 1. Index contents, on the host.
    let (b, sq, hq, nb, bs, mb) = (
        call.batch,
        call.s_q,
        call.h_q,
        call.num_blocks,
        call.block_size,
        call.max_blocks,
    );
    let table = i32s(&dev.download_bytes(bt_mem, b * mb * 4)?);
    let seqlens = i32s(&dev.download_bytes(len_mem, b * 4)?);
    indices::check_mla_indices(call, &table, &seqlens)?;
    // Input errors first, then what FIA cannot do: with one kv head, the composed attention
    // of mla_sparse_decode runs it instead (every dtype, head count and dim).
    let plan = match plan(call) {
        Ok(plan) => plan,
        Err(e @ Error::Unsupported { .. }) => {
            let ops = &dev.cann.ops;
            let runs = if call.params.kv_format == KvFormat::Fp8DsV32 {
                super::mla_sparse_decode::fp8_available(ops)
            } else {
                super::mla_sparse_decode::available(ops)
            };
            if call.h_kv != 1 || !runs {
                return Err(e);
            }
            return composed(be, call, &table, &seqlens, q_mem, kv_mem);
        }
        Err(e) => return Err(e),
    };
    // FIA's table: used entries expanded to FIA blocks, unused ones 0.
    let sub = bs / plan.fia_block;
    let fia_mb = mb * sub;
    let mut clean = vec![0i32; b * fia_mb];
    for (bi, &len) in seqlens.iter().enumerate() {
        let used = (len as usize).div_ceil(bs);
        for (j, &blk) in table[bi * mb..bi * mb + used].iter().enumerate() {
            for s in 0..sub {
                clean[bi * fia_mb + j * sub + s] = blk * sub as i32 + s as i32;
            }
        }
    }
    let clean_mem = dev.upload_bytes(
        &clean
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )?;

    let dt = acl_dtype(call.dtype);
    let esz = call.dtype.size_in_bytes();
    let copy = |dst: &DevMem,
                dst_dims: &[usize],
                dst_off: usize,
                dst_dt: i32,
                src: &DevMem,
                src_dims: &[usize],
                src_strides: &[usize],
                src_off: usize|
     -> Result<()> {
        let d = dev.tensor(dst, dst_dims, None, dst_off, dst_dt)?;
        let s = dev.tensor(src, src_dims, Some(src_strides), src_off, dt)?;
        compose::inplace_copy(dev, &d, &s)
    };

    // 2. Split cache and query into the contiguous nope / rope parts FIA takes.
    let kv_strides = [bs * DQK, DQK, 1];
    let nope = dev.alloc(nb * bs * NOPE * esz)?;
    let rope = dev.alloc(nb * bs * ROPE * esz)?;
    copy(
        &nope,
        &[nb, bs, NOPE],
        0,
        dt,
        kv_mem,
        &[nb, bs, NOPE],
        &kv_strides,
        0,
    )?;
    copy(
        &rope,
        &[nb, bs, ROPE],
        0,
        dt,
        kv_mem,
        &[nb, bs, ROPE],
        &kv_strides,
        NOPE,
    )?;
    let q_strides = [sq * hq * DQK, hq * DQK, DQK, 1];
    let q_nope = dev.alloc(b * sq * hq * NOPE * esz)?;
    let q_rope = dev.alloc(b * sq * hq * ROPE * esz)?;
    copy(
        &q_nope,
        &[b, sq, hq, NOPE],
        0,
        dt,
        q_mem,
        &[b, sq, hq, NOPE],
        &q_strides,
        0,
    )?;
    copy(
        &q_rope,
        &[b, sq, hq, ROPE],
        0,
        dt,
        q_mem,
        &[b, sq, hq, ROPE],
        &q_strides,
        NOPE,
    )?;

    // 3. Attention output.
    let o = dev.alloc(b * sq * hq * NOPE * esz)?;
    let mask = if sq > 1 && !plan.fold_queries {
        Some(be.causal_mask()?)
    } else {
        None
    };
    {
        let ops = &dev.cann.ops;
        let (fs, fh) = if plan.fold_queries {
            (1, sq * hq)
        } else {
            (sq, hq)
        };
        let (fnb, fbs) = (nb * sub, plan.fia_block);
        let query = dev.tensor(&q_nope, &[b, fs, fh, NOPE], None, 0, dt)?;
        let query_rope = dev.tensor(&q_rope, &[b, fs, fh, ROPE], None, 0, dt)?;
        let key = dev.tensor_list(vec![dev.tensor(&nope, &[fnb, fbs, NOPE], None, 0, dt)?])?;
        let value = dev.tensor_list(vec![dev.tensor(&nope, &[fnb, fbs, NOPE], None, 0, dt)?])?;
        let key_rope = dev.tensor(&rope, &[fnb, fbs, ROPE], None, 0, dt)?;
        let block_table = dev.tensor(&clean_mem, &[b, fia_mb], None, 0, acl_dtype(DType::I32))?;
        let lens: Vec<i64> = seqlens.iter().map(|&l| l as i64).collect();
        let seq_kv = dev.int_array(&lens)?;
        let mask_t = mask
            .as_ref()
            .map(|m| dev.tensor(m, &[MASK, MASK], None, 0, ACL_INT8))
            .transpose()?;
        let out = dev.tensor(&o, &[b, fs, fh, NOPE], None, 0, dt)?;
        let null = std::ptr::null_mut();
        let mask_raw = mask_t.as_ref().map_or(null, |m| m.raw());
        let sparse = if fs > 1 { 3 } else { 0 };
        // innerPrecise 0 = high precision without forced row-invalid correction: MLA mode
        // accepts only 0 and 1, and sparseMode 3 corrects empty rows on its own (module doc).
        let precise = 0;
        let layout = c"BSND";
        // SAFETY: handles live for the call; unused optional inputs are null as documented.
        dev.run(
            "aclnnFusedInferAttentionScoreV3",
            |ws, ex| unsafe {
                (ops.aclnnFusedInferAttentionScoreV3GetWorkspaceSize
                    .expect("checked by available()"))(
                    query.raw(),
                    key.raw(),
                    value.raw(),
                    null,
                    mask_raw,
                    null,
                    seq_kv.raw(),
                    null,
                    null,
                    null,
                    null,
                    null,
                    null,
                    null,
                    block_table.raw(),
                    null,
                    null,
                    null,
                    null,
                    null,
                    null,
                    null,
                    null,
                    null,
                    query_rope.raw(),
                    key_rope.raw(),
                    null,
                    fh as i64,
                    call.params.softmax_scale,
                    i32::MAX as i64,
                    0,
                    layout.as_ptr(),
                    1,
                    sparse,
                    precise,
                    fbs as i64,
                    0,
                    false,
                    0,
                    0,
                    out.raw(),
                    null,
                    ws,
                    ex,
                )
            },
            ops.aclnnFusedInferAttentionScoreV3,
        )?;
    }

    // 4. lse, second pass.
    let neg_inf: Vec<u8> = std::iter::repeat_n(f32::NEG_INFINITY.to_le_bytes(), b * hq * sq)
        .flatten()
        .collect();
    let lse = dev.upload_bytes(&neg_inf)?;
    for (bi, &len) in seqlens.iter().enumerate() {
        let len = len as usize;
        if len == 0 {
            continue;
        }
        super::mla_lse::lse_for_sequence(
            be,
            call,
            bi,
            len,
            &table[bi * mb..],
            q_mem,
            kv_mem,
            &lse,
        )?;
    }
    dev.synchronize()?;
    Ok(MlaDecodeOutput {
        o: be.wrap(o, [b, sq, hq, NOPE], call.dtype),
        lse: be.wrap(lse, [b, hq, sq], DType::F32),
    })
}
