//! mla_sparse_decode. Where CANN's aclnnSparseFlashAttention's documented limits and
//! semantics cover the call (F16/BF16 dense cache, Dqk 576 / Dv 512, Hq a power of two up to
//! 128, no sink) it runs there (`sparse_flash_attention.rs`). Every other call (F32, other
//! head dims or head counts, a sink, the FP8 cache), and a call SFA's first phase refuses
//! (an older CANN: its outputs unwritten, the fallback counted in
//! `Paths::sparse_attention_fallback`), runs composed, per query:
//! aclnnIndexSelect (gather the attended rows) + aclnnCast + aclnnMatmul + aclnnMuls +
//! aclnnLogSumExp + aclnnSoftmax + aclnnMatmul, all in f32, then one aclnnCast of `o` to the
//! run dtype:
//!
//! 1. indices (and topk_length) are copied to the host and checked
//!    (`moemla_core::indices::check_sparse_indices`); for each (b, i) the attended list is
//!    the entries j < `topk_length[b]` that are not -1, duplicates kept (they attend twice).
//! 2. q is cast to F32 once ([B*Sq*Hq, Dqk]).
//! 3. Per (b, i) with n > 0 entries: K = aclnnIndexSelect(cache as [slots, Dqk], dim 0,
//!    list) cast to F32 [n, Dqk]; scores = q[b, i] [Hq, Dqk] @ K^T (aclnnMatmul, K^T a
//!    transposed view), scaled by softmax_scale (aclnnMuls); lse[b, :, i] = aclnnLogSumExp
//!    over the n columns (written through a strided view); P = aclnnSoftmax over the
//!    columns — with a sink, over n + 1 columns, the last one holding `sink[h]` (copied in by
//!    aclnnInplaceCopy), so that P's first n columns are exp(s_j - lse) / (1 + exp(sink -
//!    lse)), the contract's `o *= 1 / (1 + exp(sink - lse))`; o[b, i] = P[:, :n] @ V
//!    (aclnnMatmul, V = K's first Dv columns as a view). A head whose sink is +inf gets
//!    o = 0 (aclnnInplaceZero; softmax of a +inf column is NaN).
//! 4. (b, i) with no entry: o = 0 (the buffer starts zeroed), lse = -inf (uploaded).

use crate::acl::{acl_dtype, ACL_FLOAT, ACL_UINT8};
use crate::buffer::DevMem;
use crate::loader::OpApi;
use crate::ops::{compose, i32s, require_ops, sparse_flash_attention};
use crate::AscendBackend;
use moemla_core::calls::{MlaDecodeOutput, MlaSparseDecodeCall};
use moemla_core::{indices, DType, Error, KvFormat, Op, Result};
use std::sync::atomic::Ordering::Relaxed;

/// What the mapping does, for `info().notes`: which path serves which (dtype, format).
pub const NOTES: [&str; 2] = [
    "mla_sparse_decode F16/BF16, dense cache, Dqk 576 / Dv 512, Hq 1, 2, 4, ..., 128, no attn_sink: CANN's aclnnSparseFlashAttention (fused; attended rows gathered by aclnnIndexSelect into a BSND key, indices rewritten to positions with -1 last, lse = softmaxMax + ln(softmaxSum) on the host, returnSoftmaxLse for a non-paged key outside training being undocumented behaviour; if the loaded CANN's SFA refuses the call at GetWorkspaceSize, the call runs composed instead, counted as a fallback; src/ops/sparse_flash_attention.rs)",
    "mla_sparse_decode otherwise (F32; other Dqk/Dv or Hq; an attn_sink; the fp8_ds_v32 cache in F16/BF16) and when SFA refuses a call: composed per query, aclnnIndexSelect gathers the attended rows (FP8 rows dequantized by aclnnCast + aclnnIndexSelect + aclnnMul), then aclnnMatmul + aclnnMuls + aclnnLogSumExp + aclnnSoftmax (the sink as one more column) + aclnnMatmul in f32; ~8 launches per query, slow for prefill. aclnnSparseFlashAttention cannot take those: F16/BF16 512 + 64 only, N1 powers of two <= 128 on A2/A3, no sink input; aclnnKvQuantSparseFlashAttention does not read the fp8_ds_v32 row",
];

/// Whether the loaded op libraries have what mla_sparse_decode needs.
pub fn available(ops: &OpApi) -> bool {
    ops.aclnnIndexSelect.is_some()
        && ops.aclnnIndexSelectGetWorkspaceSize.is_some()
        && ops.aclnnCast.is_some()
        && ops.aclnnCastGetWorkspaceSize.is_some()
        && ops.aclnnMatmul.is_some()
        && ops.aclnnMatmulGetWorkspaceSize.is_some()
        && ops.aclnnMuls.is_some()
        && ops.aclnnMulsGetWorkspaceSize.is_some()
        && ops.aclnnLogSumExp.is_some()
        && ops.aclnnLogSumExpGetWorkspaceSize.is_some()
        && ops.aclnnSoftmax.is_some()
        && ops.aclnnSoftmaxGetWorkspaceSize.is_some()
        && ops.aclnnInplaceCopy.is_some()
        && ops.aclnnInplaceCopyGetWorkspaceSize.is_some()
        && ops.aclnnInplaceZero.is_some()
        && ops.aclnnInplaceZeroGetWorkspaceSize.is_some()
}

/// Whether the loaded op libraries also have what the FP8 cache needs (aclnnMul).
pub fn fp8_available(ops: &OpApi) -> bool {
    available(ops) && ops.aclnnMul.is_some() && ops.aclnnMulGetWorkspaceSize.is_some()
}

/// The attended slots of every (b, i), row-major: entries j < `topk_length[b]` (all without
/// it) that are not -1, in order, duplicates kept. `indices` has been checked.
pub(crate) fn attended(
    indices: &[i32],
    lengths: Option<&[i32]>,
    batch: usize,
    s_q: usize,
    topk: usize,
) -> Vec<Vec<i32>> {
    (0..batch * s_q)
        .map(|r| {
            let len = lengths.map_or(topk, |l| l[r / s_q] as usize);
            indices[r * topk..r * topk + len]
                .iter()
                .copied()
                .filter(|&s| s != -1)
                .collect()
        })
        .collect()
}

/// Runs mla_sparse_decode over a dense cache.
pub fn run(be: &AscendBackend, call: &MlaSparseDecodeCall<'_>) -> Result<MlaDecodeOutput> {
    let dev = &be.dev;
    let ops = &dev.cann.ops;
    let (b, sq, hq, dqk, dv, topk) = (
        call.batch, call.s_q, call.h_q, call.d_qk, call.d_v, call.topk,
    );
    let q_mem = be.mem(call.q, "mla_sparse_decode", "q")?;
    let kv_mem = be.mem(call.kv_cache, "mla_sparse_decode", "kv_cache")?;
    let idx_mem = be.mem(call.indices, "mla_sparse_decode", "indices")?;
    // 1. Index contents first: a bad index is the same input error on every backend.
    let idx = i32s(&dev.download_bytes(idx_mem, b * sq * topk * 4)?);
    let lengths = match call.topk_length {
        Some(t) => Some(i32s(&dev.download_bytes(
            be.mem(t, "mla_sparse_decode", "topk_length")?,
            b * 4,
        )?)),
        None => None,
    };
    indices::check_sparse_indices(call, &idx, lengths.as_deref())?;
    let fp8 = call.params.kv_format == KvFormat::Fp8DsV32;
    require_ops(
        Op::MlaSparseDecode,
        if fp8 {
            fp8_available(ops)
        } else {
            available(ops)
        },
    )?;
    let sinks: Option<(Vec<f32>, &DevMem)> = match call.attn_sink {
        Some(t) => {
            let mem = be.mem(t, "mla_sparse_decode", "attn_sink")?;
            let host = dev
                .download_bytes(mem, hq * 4)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Some((host, mem))
        }
        None => None,
    };
    let lists = attended(&idx, lengths.as_deref(), b, sq, topk);
    if sparse_flash_attention::ineligible(ops, call, &lists).is_some() {
        be.paths.sparse_attention_composed.fetch_add(1, Relaxed);
    } else if let Some(out) = sparse_flash_attention::run(be, call, q_mem, kv_mem, &lists)? {
        be.paths.sparse_attention_fused.fetch_add(1, Relaxed);
        return Ok(out);
    } else {
        // SFA's first phase refused the call (an older CANN): its outputs were not written.
        be.paths.sparse_attention_fallback.fetch_add(1, Relaxed);
    }
    let shape = Attend {
        batch: b,
        s_q: sq,
        h_q: hq,
        d_qk: dqk,
        d_v: dv,
        dtype: call.dtype,
        scale: call.params.softmax_scale,
        slots: call.slots(),
        fp8,
    };
    attend(be, &shape, q_mem, kv_mem, &lists, sinks)
}

/// The geometry of a composed attention: queries [B, Sq, Hq, Dqk], a cache of `slots` rows
/// of Dqk (one kv head), values its first Dv columns.
pub(crate) struct Attend {
    /// B.
    pub batch: usize,
    /// Sq.
    pub s_q: usize,
    /// Hq.
    pub h_q: usize,
    /// Dqk.
    pub d_qk: usize,
    /// Dv.
    pub d_v: usize,
    /// The run dtype of q and the cache.
    pub dtype: DType,
    /// softmax_scale.
    pub scale: f64,
    /// Rows of the cache.
    pub slots: usize,
    /// The cache holds 656-byte `fp8_ds_v32` rows (Dqk 576, Dv 512).
    pub fp8: bool,
}

/// The value of every e4m3fn code as F32 `[256]` on the device (`moemla_core::fp8`, exact;
/// NaN for 0x7F and 0xFF): an aclnnIndexSelect through it decodes codes cast to INT32.
pub(crate) fn e4m3_table(be: &AscendBackend) -> Result<std::sync::Arc<DevMem>> {
    let bytes: Vec<u8> = (0..=255u8)
        .flat_map(|c| moemla_core::fp8::e4m3_decode(c).to_le_bytes())
        .collect();
    be.dev.upload_bytes(&bytes)
}

/// Bytes of an `fp8_ds_v32` row: 512 e4m3 codes, 4 f32 tile scales, 64 bf16 rope values.
const FP8_ROW: usize = 656;

/// Dequantizes `n` gathered `fp8_ds_v32` rows (`rows`, U8 [n, 656]) into F32 [n, 576]:
/// the codes cast to INT32 (aclnnCast) and looked up in the 256-entry e4m3 value table
/// (aclnnIndexSelect), multiplied by their tile's f32 scale (aclnnMul, broadcasting the
/// scales read through a FLOAT view of bytes 512..528), and the rope copied from a BF16 view
/// of bytes 528..656 (aclnnInplaceCopy converts). The scales are used as stored (never
/// rounded to a power of two).
fn dequantize_rows(
    be: &AscendBackend,
    rows: &DevMem,
    n: usize,
    table: &DevMem,
) -> Result<std::sync::Arc<DevMem>> {
    let dev = &be.dev;
    let ops = &dev.cann.ops;
    let i32_t = acl_dtype(DType::I32);
    let codes = dev.alloc(n * 512 * 4)?;
    let values = dev.alloc(n * 512 * 4)?;
    let k32 = dev.alloc(n * 576 * 4)?;
    let bytes = dev.tensor(rows, &[n, 512], Some(&[FP8_ROW, 1]), 0, ACL_UINT8)?;
    let codes_t = dev.tensor(&codes, &[n, 512], None, 0, i32_t)?;
    compose::cast(dev, &bytes, i32_t, &codes_t)?;
    let table_t = dev.tensor(table, &[256], None, 0, ACL_FLOAT)?;
    let flat = dev.tensor(&codes, &[n * 512], None, 0, i32_t)?;
    let values_t = dev.tensor(&values, &[n * 512], None, 0, ACL_FLOAT)?;
    // Every code is a byte, inside the 256-entry table.
    compose::index_select(dev, &table_t, 0, &flat, &values_t)?;
    // 656 bytes = 164 f32 = 328 bf16 per row; scales at f32 element 128, rope at bf16 264.
    let tiles = dev.tensor(&values, &[n, 4, 128], None, 0, ACL_FLOAT)?;
    let scales = dev.tensor(rows, &[n, 4, 1], Some(&[FP8_ROW / 4, 1, 1]), 128, ACL_FLOAT)?;
    let latent = dev.tensor(&k32, &[n, 4, 128], Some(&[576, 128, 1]), 0, ACL_FLOAT)?;
    // SAFETY: handles live for the call; out-pointers come from `Device::run`.
    dev.run(
        "aclnnMul",
        |ws, ex| unsafe {
            (ops.aclnnMulGetWorkspaceSize
                .expect("checked by available()"))(
                tiles.raw(), scales.raw(), latent.raw(), ws, ex
            )
        },
        ops.aclnnMul,
    )?;
    let rope_dst = dev.tensor(&k32, &[n, 64], Some(&[576, 1]), 512, ACL_FLOAT)?;
    let rope_src = dev.tensor(
        rows,
        &[n, 64],
        Some(&[FP8_ROW / 2, 1]),
        264,
        acl_dtype(DType::BF16),
    )?;
    compose::inplace_copy(dev, &rope_dst, &rope_src)?;
    Ok(k32)
}

/// Steps 2-4 of the module doc: attention of every query (b, i) over the cache rows
/// `lists[b * Sq + i]` (checked slots), with the optional sinks (host copy and device
/// tensor `[Hq]`). Also `mla_decode`'s composed path (its attended positions as slots).
pub(crate) fn attend(
    be: &AscendBackend,
    shape: &Attend,
    q_mem: &DevMem,
    kv_mem: &DevMem,
    lists: &[Vec<i32>],
    sinks: Option<(Vec<f32>, &DevMem)>,
) -> Result<MlaDecodeOutput> {
    let dev = &be.dev;
    let ops = &dev.cann.ops;
    let (b, sq, hq, dqk, dv) = (shape.batch, shape.s_q, shape.h_q, shape.d_qk, shape.d_v);
    let dt = acl_dtype(shape.dtype);
    let i32_t = acl_dtype(DType::I32);
    let slots = shape.slots;
    let run_op = |name: &str,
                  prepare: &dyn Fn(*mut u64, *mut crate::loader::Handle) -> i32,
                  launch|
     -> Result<()> { dev.run(name, prepare, launch) };

    // 2. q as f32.
    let rows = b * sq * hq;
    let q32 = if shape.dtype == DType::F32 {
        None
    } else {
        let q32 = dev.alloc(rows * dqk * 4)?;
        compose::cast_mem(dev, q_mem, &[rows, dqk], dt, &q32, ACL_FLOAT)?;
        Some(q32)
    };
    let q32 = q32.as_deref().unwrap_or(q_mem);
    let o32 = dev.alloc(rows * dv * 4)?;
    {
        let all = dev.tensor(&o32, &[rows, dv], None, 0, ACL_FLOAT)?;
        // SAFETY: handles live for the call; out-pointers come from `Device::run`.
        run_op(
            "aclnnInplaceZero",
            &|ws, ex| unsafe {
                (ops.aclnnInplaceZeroGetWorkspaceSize
                    .expect("checked by available()"))(all.raw(), ws, ex)
            },
            ops.aclnnInplaceZero,
        )?;
    }
    let neg_inf: Vec<u8> = std::iter::repeat_n(f32::NEG_INFINITY.to_le_bytes(), b * hq * sq)
        .flatten()
        .collect();
    let lse = dev.upload_bytes(&neg_inf)?;
    let scale = dev.scalar_f32(shape.scale as f32)?;
    let last_dim = dev.int_array(&[-1])?;

    // The value of every e4m3 code, for the FP8 cache (moemla_core::fp8, exact).
    let e4m3_table = if shape.fp8 {
        Some(e4m3_table(be)?)
    } else {
        None
    };

    // 3. One query (b, i) at a time.
    for (r, list) in lists.iter().enumerate() {
        let n = list.len();
        if n == 0 {
            continue;
        }
        let (bi, i) = (r / sq, r % sq);
        let list_dev = dev.upload_bytes(
            &list
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        )?;
        // The cache rows: run dtype [n, Dqk], or the 656-byte FP8 rows as bytes.
        let (row, row_dt) = if shape.fp8 {
            (FP8_ROW, ACL_UINT8)
        } else {
            (dqk, dt)
        };
        let row_bytes = if shape.fp8 {
            1
        } else {
            shape.dtype.size_in_bytes()
        };
        let k_run = dev.alloc(n * row * row_bytes)?;
        {
            let cache = dev.tensor(kv_mem, &[slots, row], None, 0, row_dt)?;
            let index = dev.tensor(&list_dev, &[n], None, 0, i32_t)?;
            let out = dev.tensor(&k_run, &[n, row], None, 0, row_dt)?;
            // Every slot was checked to lie in [0, slots).
            compose::index_select(dev, &cache, 0, &index, &out)?;
        }
        let k32 = if shape.fp8 {
            let table = e4m3_table.as_ref().ok_or_else(|| Error::Device {
                backend: crate::NAME.to_string(),
                call: "mla_sparse_decode".to_string(),
                message: "e4m3 table missing".to_string(),
            })?;
            dequantize_rows(be, &k_run, n, table)?
        } else if shape.dtype == DType::F32 {
            k_run
        } else {
            let k32 = dev.alloc(n * dqk * 4)?;
            compose::cast_mem(dev, &k_run, &[n, dqk], dt, &k32, ACL_FLOAT)?;
            k32
        };
        let scores = dev.alloc(hq * n * 4)?;
        let scaled = dev.alloc(hq * n * 4)?;
        {
            let qv = dev.tensor(q32, &[hq, dqk], None, r * hq * dqk, ACL_FLOAT)?;
            let kt = dev.tensor(&k32, &[dqk, n], Some(&[1, dqk]), 0, ACL_FLOAT)?;
            let s = dev.tensor(&scores, &[hq, n], None, 0, ACL_FLOAT)?;
            compose::matmul(dev, &qv, &kt, &s)?;
            let out = dev.tensor(&scaled, &[hq, n], None, 0, ACL_FLOAT)?;
            compose::muls(dev, &s, &scale, &out)?;
            let y = dev.tensor(&lse, &[hq], Some(&[sq]), bi * hq * sq + i, ACL_FLOAT)?;
            compose::log_sum_exp(dev, &out, &last_dim, &y)?;
        }
        // Softmax input: the scaled scores, plus the sink as column n.
        let width = n + usize::from(sinks.is_some());
        let logits = match &sinks {
            None => scaled,
            Some((_, sink_mem)) => {
                let buf = dev.alloc(hq * width * 4)?;
                let copies = [
                    (
                        dev.tensor(&buf, &[hq, n], Some(&[width, 1]), 0, ACL_FLOAT)?,
                        dev.tensor(&scaled, &[hq, n], None, 0, ACL_FLOAT)?,
                    ),
                    (
                        dev.tensor(&buf, &[hq, 1], Some(&[width, 1]), n, ACL_FLOAT)?,
                        dev.tensor(sink_mem, &[hq, 1], None, 0, ACL_FLOAT)?,
                    ),
                ];
                for (dst, src) in &copies {
                    compose::inplace_copy(dev, dst, src)?;
                }
                buf
            }
        };
        let probs = dev.alloc(hq * width * 4)?;
        {
            let x = dev.tensor(&logits, &[hq, width], None, 0, ACL_FLOAT)?;
            let p = dev.tensor(&probs, &[hq, width], None, 0, ACL_FLOAT)?;
            // SAFETY: as above.
            run_op(
                "aclnnSoftmax",
                &|ws, ex| unsafe {
                    (ops.aclnnSoftmaxGetWorkspaceSize
                        .expect("checked by available()"))(
                        x.raw(), -1, p.raw(), ws, ex
                    )
                },
                ops.aclnnSoftmax,
            )?;
            let pv = dev.tensor(&probs, &[hq, n], Some(&[width, 1]), 0, ACL_FLOAT)?;
            let v = dev.tensor(&k32, &[n, dv], Some(&[dqk, 1]), 0, ACL_FLOAT)?;
            let o = dev.tensor(&o32, &[hq, dv], None, r * hq * dv, ACL_FLOAT)?;
            compose::matmul(dev, &pv, &v, &o)?;
        }
        // A +inf sink takes all the weight: o = 0 (softmax of a +inf column is NaN).
        if let Some((host, _)) = &sinks {
            for (h, _) in host.iter().enumerate().filter(|(_, &s)| s == f32::INFINITY) {
                let row = dev.tensor(&o32, &[dv], None, (r * hq + h) * dv, ACL_FLOAT)?;
                // SAFETY: as above.
                run_op(
                    "aclnnInplaceZero",
                    &|ws, ex| unsafe {
                        (ops.aclnnInplaceZeroGetWorkspaceSize
                            .expect("checked by available()"))(
                            row.raw(), ws, ex
                        )
                    },
                    ops.aclnnInplaceZero,
                )?;
            }
        }
    }
    // o in the run dtype.
    let o = if shape.dtype == DType::F32 {
        o32
    } else {
        let o = dev.alloc(rows * dv * shape.dtype.size_in_bytes())?;
        compose::cast_mem(dev, &o32, &[rows, dv], ACL_FLOAT, &o, dt)?;
        o
    };
    dev.synchronize()?;
    Ok(MlaDecodeOutput {
        o: be.wrap(o, [b, sq, hq, dv], shape.dtype),
        lse: be.wrap(lse, [b, hq, sq], DType::F32),
    })
}

#[cfg(test)]
mod tests {
    use super::attended;

    #[test]
    fn attended_lists_drop_minus_one_and_entries_past_the_length_and_keep_duplicates() {
        // B 2, Sq 1, topk 4; batch 1's length is 2, so its entries 2 and 3 (even 99) are
        // not read.
        let idx = [3, -1, 3, 7, 5, 6, 99, -5];
        assert_eq!(
            attended(&idx, Some(&[4, 2]), 2, 1, 4),
            vec![vec![3, 3, 7], vec![5, 6]]
        );
        assert_eq!(attended(&idx[..4], None, 1, 1, 4), vec![vec![3, 3, 7]]);
    }
}
