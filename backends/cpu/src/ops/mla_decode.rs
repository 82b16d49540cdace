//! `mla_decode` on the CPU (dense or `fp8_ds_v32` cache, dequantized as rows are loaded):
//! check the indices, then for each (sequence, cache head) attend
//! with all `Sq * Hq / Hkv` query rows that share that head at once ([`attend`]), the
//! sequence split into ranges so every core is busy even at batch 1, the partial softmax
//! states merged at the end. Work is linear in the sequence lengths.

pub(crate) mod attend;

use super::kv_rows::KvRows;
use crate::convert::store_normalized;
use crate::storage::{
    check_inputs, float_mut, float_slice, i32_slice, zeroed, CpuStorage, FloatSlice, FloatSliceMut,
};
use attend::{Cache, Partial, Scratch, Slots, CHUNK};
use moemla_core::calls::MlaDecodeCall;
use moemla_core::indices::check_mla_indices;
use moemla_core::{DType, Result};
use rayon::prelude::*;

const CALL: &str = "mla_decode";

/// A unit of parallel work: cache head `g` of sequence `b`, positions `start..end`.
#[derive(Clone, Copy, Debug)]
struct Job {
    b: usize,
    g: usize,
    start: usize,
    end: usize,
}

/// Runs the decode; returns `o` [B, Sq, Hq, Dv] in the run dtype and `lse` [B, Hq, Sq].
pub fn run(backend: &str, call: &MlaDecodeCall<'_>) -> Result<(CpuStorage, Vec<f32>)> {
    check_inputs(
        backend,
        CALL,
        &[
            ("q", Some(call.q)),
            ("kv_cache", Some(call.kv_cache)),
            ("block_table", Some(call.block_table)),
            ("cache_seqlens", Some(call.cache_seqlens)),
        ],
    )?;
    let dims = [call.batch, call.s_q, call.h_q, call.d_v];
    allocated(backend, call.dtype, dims, |o, lse| {
        run_into(backend, call, o, lse)
    })
}

/// New outputs `o` [B, Sq, Hq, Dv] (`dtype`) and `lse` [B, Hq, Sq] F32 of an attention op
/// (`dims` = [B, Sq, Hq, Dv]), allocated fallibly and filled by `fill` (its `run_into`).
pub(crate) fn allocated(
    backend: &str,
    dtype: DType,
    [b, s_q, h_q, d_v]: [usize; 4],
    fill: impl FnOnce(FloatSliceMut<'_>, &mut [f32]) -> Result<()>,
) -> Result<(CpuStorage, Vec<f32>)> {
    let mut o = CpuStorage::zeros(dtype, &[b, s_q, h_q, d_v].into())?;
    let mut lse = zeroed(&[b, h_q, s_q], "cpu attention lse")?;
    fill(
        float_mut(o.as_mut_slice(), backend, "attention", "o")?,
        &mut lse,
    )?;
    Ok((o, lse))
}

/// Runs the decode, writing `o` [B, Sq, Hq, Dv] (run dtype) and `lse` [B, Hq, Sq] in place
/// (every element overwritten). On an index error nothing is written.
pub fn run_into(
    backend: &str,
    call: &MlaDecodeCall<'_>,
    o: FloatSliceMut<'_>,
    lse: &mut [f32],
) -> Result<()> {
    let table = i32_slice(call.block_table, backend, CALL, "block_table")?;
    let seqlens = i32_slice(call.cache_seqlens, backend, CALL, "cache_seqlens")?;
    check_mla_indices(call, table, seqlens)?;
    let q = float_slice(call.q, backend, CALL, "q")?;
    let data = KvRows::of(call.kv_cache, call.params.kv_format, backend, CALL)?;
    // Checked above: every length lies in [0, max_blocks * block_size].
    let seqlens: Vec<usize> = seqlens.iter().map(|&l| l as usize).collect();
    let jobs = plan(call, &seqlens);
    let scale = call.params.softmax_scale as f32;
    let parts = jobs
        .par_iter()
        .map_init(Scratch::default, |scratch, job| {
            let cache = Cache {
                data,
                slots: Slots::Paged {
                    table: &table[job.b * call.max_blocks..(job.b + 1) * call.max_blocks],
                    block_size: call.block_size,
                },
                h_kv: call.h_kv,
                d_qk: call.d_qk,
                d_v: call.d_v,
            };
            let rows = query_rows(call, q, job.b, job.g)?;
            let limits = row_limits(call, seqlens[job.b]);
            let span = job.start..job.end;
            attend::attend((&rows, &limits), &cache, job.g, span, scale, scratch)
        })
        .collect::<Result<Vec<_>>>()?;
    write_outputs(call, &jobs, &parts, (o, lse))
}

/// Splits every (sequence, cache head) into position ranges of whole chunks: enough jobs
/// for about [`super::JOBS_PER_THREAD`] per thread, but no range shorter than two chunks.
fn plan(call: &MlaDecodeCall<'_>, seqlens: &[usize]) -> Vec<Job> {
    let heads = call.batch * call.h_kv;
    let want = (super::JOBS_PER_THREAD * rayon::current_num_threads()).div_ceil(heads);
    let mut jobs = Vec::new();
    for (b, &seqlen) in seqlens.iter().enumerate() {
        let len = (0..call.s_q)
            .map(|i| limit(call, seqlen, i))
            .max()
            .unwrap_or(0);
        let splits = want.min(len.div_ceil(2 * CHUNK)).max(1);
        let span = len.div_ceil(splits).div_ceil(CHUNK) * CHUNK;
        for g in 0..call.h_kv {
            let mut start = 0;
            loop {
                let end = (start + span).min(len);
                jobs.push(Job { b, g, start, end });
                start = end;
                if start >= len {
                    break;
                }
            }
        }
    }
    jobs
}

/// Positions query `i` may attend: `attended_len` clamped at 0.
fn limit(call: &MlaDecodeCall<'_>, seqlen: usize, i: usize) -> usize {
    call.attended_len(seqlen, i).max(0) as usize
}

/// Per query row (`i`-major, then head within the group): its attended length.
fn row_limits(call: &MlaDecodeCall<'_>, seqlen: usize) -> Vec<usize> {
    let group = call.h_q / call.h_kv;
    (0..call.s_q * group)
        .map(|r| limit(call, seqlen, r / group))
        .collect()
}

/// The query rows of sequence `b` that use cache head `g`, as f32 [Sq * group, Dqk].
fn query_rows(call: &MlaDecodeCall<'_>, q: FloatSlice<'_>, b: usize, g: usize) -> Result<Vec<f32>> {
    let (group, d) = (call.h_q / call.h_kv, call.d_qk);
    let mut rows = zeroed(&[call.s_q, group, d], "cpu mla_decode query rows")?;
    for (r, row) in rows.chunks_mut(d).enumerate() {
        let (i, h) = (r / group, g * group + r % group);
        q.read_f32(((b * call.s_q + i) * call.h_q + h) * d, row);
    }
    Ok(rows)
}

/// Merges each (sequence, head)'s ranges and writes `o` (run dtype) and `lse`, every
/// element (0 and -inf where a row attends nothing).
fn write_outputs(
    call: &MlaDecodeCall<'_>,
    jobs: &[Job],
    parts: &[Partial],
    (mut o, lse): (FloatSliceMut<'_>, &mut [f32]),
) -> Result<()> {
    let (group, d_v, s_q, h_q) = (call.h_q / call.h_kv, call.d_v, call.s_q, call.h_q);
    o.fill(0.0);
    lse.fill(f32::NEG_INFINITY);
    let mut at = 0;
    while at < jobs.len() {
        let (b, g) = (jobs[at].b, jobs[at].g);
        let count = jobs[at..]
            .iter()
            .take_while(|j| (j.b, j.g) == (b, g))
            .count();
        let merged = attend::merge(&parts[at..at + count], d_v);
        at += count;
        for r in 0..s_q * group {
            let l = merged.l[r];
            if l.is_nan() || l <= 0.0 {
                continue; // empty range: o = 0, lse = -inf (a NaN sum too, as merged)
            }
            let (i, h) = (r / group, g * group + r % group);
            lse[(b * h_q + h) * s_q + i] = merged.m[r] + l.ln();
            let acc = &merged.acc[r * d_v..(r + 1) * d_v];
            store_normalized(&mut o, ((b * s_q + i) * h_q + h) * d_v, acc, (l, 1.0));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
