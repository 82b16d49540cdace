//! `mla_sparse_decode` on the CPU: DeepSeek Sparse Attention over the cache slots each query
//! lists. Check the indices, gather each query's valid entries (j < topk_length, not -1;
//! duplicates kept: they attend twice), then all Hq heads of a query attend over only those
//! rows with online softmax ([`attend`], dense or FP8 rows dequantized on load), long lists
//! split across threads and merged, and the sink applied last. One path serves decode
//! (Sq 1), MTP and prefill (Sq in the thousands). BF16 queries over the FP8 cache on a CPU
//! with the native bf16 dot dequantize the listed rows straight to bf16 first ([`fp8`]).

use super::kv_rows::KvRows;
use super::mla_decode::attend::{self, Cache, Partial, Scratch, Slots, CHUNK};
use crate::aligned::Aligned;
use crate::convert::store_normalized;
use crate::storage::{
    check_inputs, f32_slice, float_slice, i32_slice, zeroed, CpuStorage, FloatSliceMut,
};
use moemla_core::alloc::try_filled_vec;
use moemla_core::calls::MlaSparseDecodeCall;
use moemla_core::indices::check_sparse_indices;
use moemla_core::Result;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod fp8;

const CALL: &str = "mla_sparse_decode";

/// A unit of parallel work: query row `r` (= b * Sq + i), list positions `start..end`.
#[derive(Clone, Copy, Debug)]
struct Job {
    r: usize,
    start: usize,
    end: usize,
}

/// Runs the sparse attention; returns `o` [B, Sq, Hq, Dv] in the run dtype and `lse`
/// [B, Hq, Sq].
pub fn run(backend: &str, call: &MlaSparseDecodeCall<'_>) -> Result<(CpuStorage, Vec<f32>)> {
    check_inputs(
        backend,
        CALL,
        &[
            ("q", Some(call.q)),
            ("kv_cache", Some(call.kv_cache)),
            ("indices", Some(call.indices)),
            ("topk_length", call.topk_length),
            ("attn_sink", call.attn_sink),
        ],
    )?;
    let dims = [call.batch, call.s_q, call.h_q, call.d_v];
    super::mla_decode::allocated(backend, call.dtype, dims, |o, lse| {
        run_into(backend, call, o, lse)
    })
}

/// Runs the sparse attention, writing `o` [B, Sq, Hq, Dv] (run dtype) and `lse` [B, Hq, Sq] in place
/// (every element overwritten). On an index error nothing is written.
pub fn run_into(
    backend: &str,
    call: &MlaSparseDecodeCall<'_>,
    o: FloatSliceMut<'_>,
    lse: &mut [f32],
) -> Result<()> {
    let indices = i32_slice(call.indices, backend, CALL, "indices")?;
    let lens = match call.topk_length {
        Some(t) => Some(i32_slice(t, backend, CALL, "topk_length")?),
        None => None,
    };
    check_sparse_indices(call, indices, lens)?;
    let sink = match call.attn_sink {
        Some(t) => Some(f32_slice(t, backend, CALL, "attn_sink")?),
        None => None,
    };
    let q = float_slice(call.q, backend, CALL, "q")?;
    let data = KvRows::of(call.kv_cache, call.params.kv_format, backend, CALL)?;
    let (list, offsets) = attended_lists(call, indices, lens)?;
    let jobs = plan(&offsets);
    let (h_q, d_qk) = (call.h_q, call.d_qk);
    let scale = call.params.softmax_scale as f32;
    #[cfg(target_arch = "x86_64")]
    let fp8_rows = match (data, q) {
        (KvRows::Fp8(bytes), crate::storage::FloatSlice::BF16(_)) if crate::bf16dot::native() => {
            Some(bytes)
        }
        _ => None,
    };
    #[cfg(target_arch = "x86_64")]
    let ident: Vec<u32> = (0..fp8::SUB as u32).collect();
    let parts = jobs
        .par_iter()
        .map_init(
            || (Scratch::default(), Aligned::<half::bf16>::default()),
            |(scratch, _buf), job| {
                let mut rows = zeroed::<f32>(&[h_q, d_qk], "cpu mla_sparse_decode query rows")?;
                q.read_f32(job.r * h_q * d_qk, &mut rows);
                let slots = &list[offsets[job.r]..offsets[job.r + 1]];
                #[cfg(target_arch = "x86_64")]
                if let (Some(bytes), false) = (fp8_rows, job.start == job.end) {
                    let span = job.start..job.end;
                    return fp8::attend(
                        &rows,
                        (bytes, slots, &ident),
                        span,
                        scale,
                        (scratch, _buf),
                    );
                }
                let cache = Cache {
                    data,
                    slots: Slots::Listed(slots),
                    h_kv: 1,
                    d_qk,
                    d_v: call.d_v,
                };
                let limits = vec![slots.len(); h_q];
                let span = job.start..job.end;
                attend::attend((&rows, &limits), &cache, 0, span, scale, scratch)
            },
        )
        .collect::<Result<Vec<_>>>()?;
    write_outputs(call, &jobs, &parts, sink, (o, lse))
}

/// Every query row's attended slots, concatenated (`list[offsets[r]..offsets[r + 1]]`):
/// the entries `j < topk_length[b]` that are not -1, in order, duplicates kept. Checked
/// already: each lies in [0, slots) < 2^31.
fn attended_lists(
    call: &MlaSparseDecodeCall<'_>,
    indices: &[i32],
    lens: Option<&[i32]>,
) -> Result<(Vec<u32>, Vec<usize>)> {
    let (rows, topk) = (call.batch * call.s_q, call.topk);
    let mut offsets: Vec<usize> = try_filled_vec(rows + 1, "cpu mla_sparse_decode lists")?;
    let mut list = Vec::new();
    list.try_reserve_exact(indices.len())
        .map_err(|_| moemla_core::Error::OutOfMemory {
            what: "cpu mla_sparse_decode lists".into(),
            bytes: indices.len().saturating_mul(4),
        })?;
    for r in 0..rows {
        let len = lens.map_or(topk, |l| l[r / call.s_q] as usize);
        let row = &indices[r * topk..r * topk + len];
        list.extend(row.iter().filter(|&&s| s != -1).map(|&s| s as u32));
        offsets[r + 1] = list.len();
    }
    Ok((list, offsets))
}

/// Splits every query row's list into ranges of whole chunks: enough jobs for about
/// [`super::JOBS_PER_THREAD`] per thread, no range shorter than two chunks; a row with an
/// empty list gets one empty job (its result: o = 0, lse = -inf).
fn plan(offsets: &[usize]) -> Vec<Job> {
    let rows = offsets.len() - 1;
    let want = (super::JOBS_PER_THREAD * rayon::current_num_threads()).div_ceil(rows.max(1));
    let mut jobs = Vec::new();
    for r in 0..rows {
        let len = offsets[r + 1] - offsets[r];
        let splits = want.min(len.div_ceil(2 * CHUNK)).max(1);
        let span = len.div_ceil(splits).div_ceil(CHUNK) * CHUNK;
        let mut start = 0;
        loop {
            let end = (start + span).min(len);
            jobs.push(Job { r, start, end });
            start = end;
            if start >= len {
                break;
            }
        }
    }
    jobs
}

/// Merges each query row's ranges, applies the sink (`o *= 1 / (1 + exp(sink - lse))`,
/// lse unchanged) and writes `o` (run dtype) and `lse`, every element.
fn write_outputs(
    call: &MlaSparseDecodeCall<'_>,
    jobs: &[Job],
    parts: &[Partial],
    sink: Option<&[f32]>,
    (mut o, lse): (FloatSliceMut<'_>, &mut [f32]),
) -> Result<()> {
    let (d_v, s_q, h_q) = (call.d_v, call.s_q, call.h_q);
    o.fill(0.0);
    lse.fill(f32::NEG_INFINITY);
    let mut at = 0;
    while at < jobs.len() {
        let r = jobs[at].r;
        let count = jobs[at..].iter().take_while(|j| j.r == r).count();
        let merged = attend::merge(&parts[at..at + count], d_v);
        at += count;
        let (b, i) = (r / s_q, r % s_q);
        for h in 0..h_q {
            let l = merged.l[h];
            if l.is_nan() || l <= 0.0 {
                continue; // no valid entry: o = 0, lse = -inf (a NaN sum too, as merged)
            }
            let row_lse = merged.m[h] + l.ln();
            lse[(b * h_q + h) * s_q + i] = row_lse;
            let factor = match sink {
                Some(s) => 1.0 / (1.0 + (s[h] - row_lse).exp()),
                None => 1.0,
            };
            let acc = &merged.acc[h * d_v..(h + 1) * d_v];
            store_normalized(&mut o, (r * h_q + h) * d_v, acc, (l, factor));
        }
    }
    Ok(())
}
