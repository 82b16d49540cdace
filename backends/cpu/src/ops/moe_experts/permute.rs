//! Grouping (token, slot) pairs by expert: the "permute" step of a fused MoE.

use moemla_core::alloc::try_filled_vec;
use moemla_core::{DType, Result, Shape};

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
