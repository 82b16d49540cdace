//! Grouping (token, slot) pairs by expert: the "permute" step of a fused MoE.

use moemla_core::alloc::try_filled_vec;
use moemla_core::{DType, Result, Shape};
use rayon::prelude::*;

/// Rows per task of [`Permutation::rows_from_columns`]: 64 bytes of f32, so that the
/// cache lines of an expert's column are shared by as few tasks as they can be, and one
/// 16 x 16 block of [`crate::transpose`] takes a stripe's values of all of them.
const TRANSPOSE_ROWS: usize = 16;
/// Columns per stripe of [`Permutation::rows_from_columns`]: a stripe of the task's rows is
/// transposed into a buffer in L1 (4 KiB), then converted into each row in runs of this
/// many values.
const TRANSPOSE_COLUMNS: usize = 64;

/// Where each routed (token, slot) pair lives once rows are grouped by expert.
///
/// Permuted row `r` belongs to the expert `e` with `offsets[e] <= r < offsets[e + 1]`;
/// within an expert, rows keep token order (then slot order). Only pairs that contribute
/// are routed: a slot with id -1 or with weight 0 (either sign) gets no row, so its expert
/// is never evaluated for it (an expert whose output is NaN or inf cannot reach `y`
/// through a zero weight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permutation {
    /// `offsets[e]..offsets[e + 1]` are expert `e`'s rows; `E + 1` entries.
    pub offsets: Vec<usize>,
    /// The token of each permuted row.
    pub tokens: Vec<usize>,
    /// For each (token, slot), row-major [T, k]: its permuted row, `None` for a slot that
    /// contributes nothing (id -1 or weight 0).
    pub row_of: Vec<Option<usize>>,
}

impl Permutation {
    /// Groups the contributing pairs of `ids` [T, k] (already checked to lie in [-1, E))
    /// by expert; `weights` [T, k] decides which slots contribute. Every buffer is sized by
    /// the inputs and allocated fallibly ([`moemla_core::Error::OutOfMemory`]).
    pub fn new(ids: &[i32], weights: &[f32], experts: usize, top_k: usize) -> Result<Self> {
        const WHAT: &str = "cpu moe_experts permutation";
        let routed = |(&id, &w): (&i32, &f32)| usize::try_from(id).ok().filter(|_| w != 0.0);
        let mut offsets: Vec<usize> = try_filled_vec(experts.saturating_add(1), WHAT)?;
        for e in ids.iter().zip(weights).filter_map(routed) {
            offsets[e + 1] += 1;
        }
        for e in 0..experts {
            offsets[e + 1] += offsets[e];
        }
        let mut cursor: Vec<usize> = try_filled_vec(experts, WHAT)?;
        cursor.copy_from_slice(&offsets[..experts]);
        let mut tokens: Vec<usize> = try_filled_vec(offsets[experts], WHAT)?;
        let mut row_of: Vec<Option<usize>> = try_filled_vec(ids.len(), WHAT)?;
        for (pair, (slot, e)) in row_of
            .iter_mut()
            .zip(ids.iter().zip(weights).map(routed))
            .enumerate()
        {
            if let Some(e) = e {
                let row = cursor[e];
                cursor[e] += 1;
                tokens[row] = pair / top_k;
                *slot = Some(row);
            }
        }
        Ok(Permutation {
            offsets,
            tokens,
            row_of,
        })
    }

    /// Every one of `tokens` tokens routed to each of `experts` experts (dense experts,
    /// such as shared experts): slot `s` of token `t` is expert `s`, row `s * T + t`.
    /// Sizes are checked ([`moemla_core::Error::Size`]) and allocated fallibly.
    pub fn every_token(tokens: usize, experts: usize) -> Result<Self> {
        const WHAT: &str = "cpu moe_experts shared experts";
        // S x T pairs: the count is checked (it fits in isize) before it is used.
        let pairs = Shape::from(&[experts, tokens][..]).byte_len(DType::I32)? / 4;
        let mut offsets: Vec<usize> = try_filled_vec(experts + 1, WHAT)?;
        let mut tokens_of: Vec<usize> = try_filled_vec(pairs, WHAT)?;
        let mut row_of: Vec<Option<usize>> = try_filled_vec(pairs, WHAT)?;
        for (e, offset) in offsets.iter_mut().enumerate() {
            *offset = e * tokens;
        }
        for (row, t) in tokens_of.iter_mut().enumerate() {
            *t = row % tokens;
            row_of[(row % tokens) * experts + row / tokens] = Some(row);
        }
        Ok(Permutation {
            offsets,
            tokens: tokens_of,
            row_of,
        })
    }

    /// Number of permuted rows (routed pairs).
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// Expert `e`'s rows: (first row, count).
    pub fn expert_rows(&self, e: usize) -> (usize, usize) {
        (self.offsets[e], self.offsets[e + 1] - self.offsets[e])
    }

    /// The rows (first row, count) of the expert that owns permuted row `row` (below
    /// [`Self::rows`]).
    pub fn owner_rows(&self, row: usize) -> (usize, usize) {
        // Offsets are sorted (empty experts repeat them): the last one at or below `row`.
        self.expert_rows(self.offsets.partition_point(|&o| o <= row) - 1)
    }

    /// Values laid out per expert in columns, `columns` = `[width, n_e]` per expert
    /// (expert after expert, as the grouped GEMMs write them: one column per row), as
    /// rows: `out[r * width + c] = conv(value c of permuted row r)`. The combine then
    /// reads each slot's row of the down projections in a run: read in columns, each
    /// token's slot touched one cache line per value, and on a 2-core Zen 3 the combine
    /// took 3.6-5.7 ms of f32 experts at V2-Lite T=256 (12.6 MB of outputs) and
    /// 15.7-16.0 ms at DeepSeek-V3's H=7168, E=256, k=8 (58.7 MB), where this and the
    /// combine of rows take 1.8-2.3 + 0.6 ms and 6.8-7.0 + 2.8-2.9 ms. The down
    /// projection's activations take it too (as bf16 or f32 rows). In parallel, tasks of
    /// [`TRANSPOSE_ROWS`] rows, in stripes of [`TRANSPOSE_COLUMNS`] columns, each stripe
    /// of a run of one expert's rows transposed in 16 x 16 blocks ([`crate::transpose`])
    /// rather than read value by value at its column stride: on a 2-core Zen 5 at V2-Lite
    /// T=256 (1536 rows, f32, best of 50, three alternated runs) 0.38-0.45 vs 0.51-0.55 ms
    /// at width 2048, 0.21-0.22 vs 0.32-0.33 ms at 1408.
    ///
    /// # Panics
    /// If `columns` or `out` is not `rows() * width` long (a caller's bug).
    pub fn rows_from_columns<T: Send>(
        &self,
        columns: &[f32],
        width: usize,
        out: &mut [T],
        conv: impl Fn(f32) -> T + Sync,
    ) {
        assert_eq!(columns.len(), self.rows() * width, "columns");
        assert_eq!(out.len(), columns.len(), "rows");
        if width == 0 {
            return;
        }
        out.par_chunks_mut(TRANSPOSE_ROWS * width)
            .enumerate()
            .for_each(|(task, rows)| {
                let (first_row, task_rows) = (task * TRANSPOSE_ROWS, rows.len() / width);
                let mut block = [0.0f32; TRANSPOSE_ROWS * TRANSPOSE_COLUMNS];
                // The task's rows in runs of one expert each.
                let mut i = 0;
                while i < task_rows {
                    let (first, n) = self.owner_rows(first_row + i);
                    let t0 = first_row + i - first;
                    let run = (n - t0).min(task_rows - i);
                    let expert = &columns[first * width..(first + n) * width];
                    for c0 in (0..width).step_by(TRANSPOSE_COLUMNS) {
                        let stripe = TRANSPOSE_COLUMNS.min(width - c0);
                        // Columns c0.. of the run's rows: rows c0.. of the expert's block
                        // (n apart), its columns t0..t0 + run, transposed.
                        let src = &expert[c0 * n + t0..];
                        crate::transpose::strided(src, n, (stripe, run), &mut block, stripe);
                        for (j, values) in block.chunks_exact(stripe).take(run).enumerate() {
                            let row = &mut rows[(i + j) * width + c0..][..stripe];
                            for (to, &v) in row.iter_mut().zip(values) {
                                *to = conv(v);
                            }
                        }
                    }
                    i += run;
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_grouped_by_expert_in_token_order() {
        // T = 3, k = 2, E = 3.
        let ids = [2, 0, -1, 2, 0, 1];
        let p = Permutation::new(&ids, &[1.0; 6], 3, 2).unwrap();
        assert_eq!(p.offsets, vec![0, 2, 3, 5]);
        assert_eq!(p.tokens, vec![0, 2, 2, 0, 1]);
        assert_eq!(
            p.row_of,
            vec![Some(3), Some(0), None, Some(4), Some(1), Some(2)]
        );
        assert_eq!(p.expert_rows(2), (3, 2));
    }

    #[test]
    fn every_token_goes_to_every_dense_expert() {
        // T = 3, S = 2: expert 0 owns rows 0..3, expert 1 rows 3..6, tokens in order.
        let p = Permutation::every_token(3, 2).unwrap();
        assert_eq!(p.offsets, vec![0, 3, 6]);
        assert_eq!(p.tokens, vec![0, 1, 2, 0, 1, 2]);
        let rows = [0, 3, 1, 4, 2, 5].map(Some);
        assert_eq!(p.row_of, rows.to_vec());
        // The same as routing ids [[0, 1]; 3] with weight 1.
        let routed = Permutation::new(&[0, 1, 0, 1, 0, 1], &[1.0; 6], 2, 2).unwrap();
        assert_eq!(p, routed);
        let err = Permutation::every_token(usize::MAX / 2, 4).unwrap_err();
        assert!(matches!(err, moemla_core::Error::Size { .. }), "{err}");
    }

    /// Each expert's `[width, n_e]` block comes out as its rows (converted), for empty
    /// experts first, between others and last, an expert of one row, experts across the
    /// first task's end and one ending inside the second task, at widths below, at and
    /// past one stripe of columns.
    #[test]
    fn expert_columns_come_out_as_rows() {
        // E = 7 experts with 0, 3, 0, 1, 14, 7 and 0 rows (T = 25, k = 1): rows 4..18 and
        // 18..25 cross the tasks of 16 rows.
        let ids: Vec<i32> = (0..25)
            .map(|t| match t {
                0..=2 => 1,
                3 => 3,
                4..=17 => 4,
                _ => 5,
            })
            .collect();
        let p = Permutation::new(&ids, &[1.0; 25], 7, 1).unwrap();
        assert_eq!(p.offsets, vec![0, 0, 3, 3, 4, 18, 25, 25]);
        for width in [1, 5, 64, 130] {
            // Row r's value c, stored at first * width + c * n + (r - first).
            let value = |r: usize, c: usize| (r * 1000 + c) as f32;
            let mut columns = vec![f32::NAN; p.rows() * width];
            for e in 0..7 {
                let (first, n) = p.expert_rows(e);
                for r in first..first + n {
                    for c in 0..width {
                        columns[first * width + c * n + (r - first)] = value(r, c);
                    }
                }
            }
            let mut rows = vec![f64::NAN; p.rows() * width];
            p.rows_from_columns(&columns, width, &mut rows, |v| f64::from(v) + 0.5);
            for r in 0..p.rows() {
                for c in 0..width {
                    let got = rows[r * width + c];
                    let want = f64::from(value(r, c)) + 0.5;
                    assert_eq!(got, want, "width {width}, row {r}, column {c}");
                }
            }
        }
    }

    #[test]
    fn zero_weight_slots_get_no_row() {
        // The same ids; slots 0 (+0.0) and 4 (-0.0) carry no weight, slot 2 is -1 with a
        // NaN weight: none of the three is routed.
        let ids = [2, 0, -1, 2, 0, 1];
        let weights = [0.0, 1.0, f32::NAN, 1.0, -0.0, 1.0];
        let p = Permutation::new(&ids, &weights, 3, 2).unwrap();
        assert_eq!(p.offsets, vec![0, 1, 2, 3]);
        assert_eq!(p.tokens, vec![0, 2, 1]);
        assert_eq!(p.row_of, vec![None, Some(0), None, Some(2), None, Some(1)]);
    }
}
