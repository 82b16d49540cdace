//! `dsa_indexer_topk` on the CPU: DeepSeek-V3.2's lightning indexer. For each query, every
//! attended cache position gets `score(p) = sum_h w[h] * max(0, q[h] . k_p)` in f32 (chunks
//! of K rows gathered through the block table, one GEMM `[n, Di] x [Di, Hi]` each, chunks in
//! parallel; BF16 inputs on a CPU whose native bf16 dot outpaces its f32 FMA
//! ([`crate::bf16dot::outpaces_fma`]): [`bf16`]'s kernel, key rows read in place); the
//! `top_k` best are found by partial selection (O(L + k log k)) and written as flat cache
//! slots in descending score, -1 / -inf past the attended positions.

use crate::gemm_util::{matmul, MatRef};
use crate::storage::{f32_slice, float_slice, i32_slice, zeroed, FloatSlice};
use moemla_core::calls::DsaIndexerTopkCall;
use moemla_core::indices::check_indexer_indices;
use moemla_core::Result;
use rayon::prelude::*;
use std::cmp::Ordering;

#[cfg(target_arch = "x86_64")]
mod bf16;

const CALL: &str = "dsa_indexer_topk";

/// Cache positions scored per GEMM.
const CHUNK: usize = 256;

/// The read-only inputs of one call.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    q: FloatSlice<'a>,
    k: FloatSlice<'a>,
    weights: &'a [f32],
    table: &'a [i32],
}

/// Runs the indexer; returns `topk_indices` [B, Sq, top_k] (I32) and `topk_scores`
/// [B, Sq, top_k] (F32).
pub fn run(backend: &str, call: &DsaIndexerTopkCall<'_>) -> Result<(Vec<i32>, Vec<f32>)> {
    let dims = [call.batch, call.s_q, call.params.top_k];
    let mut indices = zeroed::<i32>(&dims, "cpu dsa_indexer_topk topk_indices")?;
    let mut scores = zeroed::<f32>(&dims, "cpu dsa_indexer_topk topk_scores")?;
    run_into(backend, call, &mut indices, &mut scores)?;
    Ok((indices, scores))
}

/// [`run`] writing `topk_indices` and `topk_scores` [B, Sq, top_k] into the caller's
/// slices (exactly that long); nothing is written when the block table or the sequence
/// lengths hold a bad index.
pub fn run_into(
    backend: &str,
    call: &DsaIndexerTopkCall<'_>,
    indices: &mut [i32],
    scores: &mut [f32],
) -> Result<()> {
    let table = i32_slice(call.block_table, backend, CALL, "block_table")?;
    let seqlens = i32_slice(call.cache_seqlens, backend, CALL, "cache_seqlens")?;
    check_indexer_indices(call, table, seqlens)?;
    let inputs = Inputs {
        q: float_slice(call.q, backend, CALL, "q")?,
        k: float_slice(call.k_cache, backend, CALL, "k_cache")?,
        weights: f32_slice(call.weights, backend, CALL, "weights")?,
        table,
    };
    let k = call.params.top_k;
    indices
        .par_chunks_mut(k)
        .zip(scores.par_chunks_mut(k))
        .enumerate()
        .try_for_each(|(r, (idx, sc))| {
            let (b, i) = (r / call.s_q, r % call.s_q);
            // Checked above: 0 <= seqlen <= max_blocks * block_size.
            let len = call.attended_len(seqlens[b] as usize, i).max(0) as usize;
            let row_scores = score_row(call, inputs, b, r, len)?;
            let best = top_positions(&row_scores, k);
            let (used_i, free_i) = idx.split_at_mut(best.len());
            let (used_s, free_s) = sc.split_at_mut(best.len());
            for ((slot, score), &p) in used_i.iter_mut().zip(used_s.iter_mut()).zip(&best) {
                *slot = slot_of(call, inputs.table, b, p) as i32;
                *score = row_scores[p];
            }
            free_i.fill(-1);
            free_s.fill(f32::NEG_INFINITY);
            Ok(())
        })
}

/// The flat cache slot of position `p` of sequence `b` (its block entry was checked; slots
/// fit in I32 by validation).
fn slot_of(call: &DsaIndexerTopkCall<'_>, table: &[i32], b: usize, p: usize) -> usize {
    let bs = call.block_size;
    table[b * call.max_blocks + p / bs] as usize * bs + p % bs
}

/// The scores of positions `0..len` for query row `r` (of sequence `b`).
fn score_row(
    call: &DsaIndexerTopkCall<'_>,
    inputs: Inputs<'_>,
    b: usize,
    r: usize,
    len: usize,
) -> Result<Vec<f32>> {
    let (h_i, d_i) = (call.h_i, call.d_i);
    let w = &inputs.weights[r * h_i..(r + 1) * h_i];
    let mut scores = zeroed::<f32>(&[len], "cpu dsa_indexer_topk scores")?;
    // On tiles where runs of 16 positions lie side by side in a cache block (a block
    // size that is a multiple of 16); else on the vector tiles where they outpace the FMA.
    #[cfg(target_arch = "x86_64")]
    if let (FloatSlice::BF16(q), FloatSlice::BF16(k), true) = (
        inputs.q,
        inputs.k,
        crate::bf16dot::outpaces_fma()
            || crate::bf16dot::on_tiles(d_i) && call.block_size.is_multiple_of(16),
    ) {
        let query = bf16::Query::new(&q[r * h_i * d_i..(r + 1) * h_i * d_i], w, h_i, d_i)?;
        scores.par_chunks_mut(CHUNK).enumerate().for_each_init(
            Vec::new,
            |keys: &mut Vec<&[half::bf16]>, (c, out)| {
                keys.clear();
                // Slots checked by the caller: each key row lies inside the cache.
                keys.extend((0..out.len()).map(|j| {
                    let slot = slot_of(call, inputs.table, b, c * CHUNK + j);
                    &k[slot * d_i..(slot + 1) * d_i]
                }));
                bf16::scores(&query, keys, out);
            },
        );
        return Ok(scores);
    }
    let mut q = zeroed::<f32>(&[h_i, d_i], "cpu dsa_indexer_topk query")?;
    inputs.q.read_f32(r * h_i * d_i, &mut q);
    scores.par_chunks_mut(CHUNK).enumerate().try_for_each_init(
        || (Vec::new(), Vec::new()),
        |(keys, dots): &mut (Vec<f32>, Vec<f32>), (c, out)| {
            let (p0, n) = (c * CHUNK, out.len());
            keys.resize(n * d_i, 0.0);
            for (j, row) in keys.chunks_mut(d_i).enumerate() {
                let slot = slot_of(call, inputs.table, b, p0 + j);
                inputs.k.read_f32(slot * d_i, row);
            }
            dots.resize(n * h_i, 0.0);
            let k_mat = MatRef::row_major(keys, n, d_i);
            matmul(dots, k_mat, MatRef::row_major(&q, h_i, d_i).t(), false)?;
            for (s, row) in out.iter_mut().zip(dots.chunks(h_i)) {
                *s = row.iter().zip(w).map(|(&d, &wh)| wh * d.max(0.0)).sum();
            }
            Ok(())
        },
    )?;
    Ok(scores)
}

/// The positions of the `k` best scores, best first (ties: lower position first; a NaN
/// score ranks as -inf). A partial selection, then a sort of the chosen: O(L + k log k).
fn top_positions(scores: &[f32], k: usize) -> Vec<usize> {
    let mut keyed: Vec<(f32, usize)> = (scores.iter().enumerate())
        .map(|(p, &s)| {
            (
                if s.is_nan() {
                    f32::NEG_INFINITY
                } else {
                    s + 0.0
                },
                p,
            )
        })
        .collect();
    if k < keyed.len() {
        keyed.select_nth_unstable_by(k, better_first);
        keyed.truncate(k);
    }
    keyed.sort_unstable_by(better_first);
    keyed.into_iter().map(|(_, p)| p).collect()
}

/// Larger key first, then the lower position (keys are never NaN or -0.0 here).
fn better_first(a: &(f32, usize), b: &(f32, usize)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

#[cfg(test)]
mod tests {
    use super::top_positions;

    #[test]
    fn top_positions_pick_the_best_in_order_with_nan_last() {
        let s = [0.5, f32::NAN, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(top_positions(&s, 3), vec![2, 4, 5]);
        assert_eq!(top_positions(&s, 6), vec![2, 4, 5, 0, 3, 1]);
        assert_eq!(top_positions(&s, 10), vec![2, 4, 5, 0, 3, 1]);
        assert!(top_positions(&[], 4).is_empty());
    }
}
