//! Grouping (token, slot) pairs by expert: the "permute" step of a fused MoE.

/// Where each routed (token, slot) pair lives once rows are grouped by expert.
///
/// Permuted row `r` belongs to the expert `e` with `offsets[e] <= r < offsets[e + 1]`;
/// within an expert, rows keep token order (then slot order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permutation {
    /// `offsets[e]..offsets[e + 1]` are expert `e`'s rows; `E + 1` entries.
    pub offsets: Vec<usize>,
    /// The token of each permuted row.
    pub tokens: Vec<usize>,
    /// For each (token, slot), row-major [T, k]: its permuted row, `None` for id -1.
    pub row_of: Vec<Option<usize>>,
}

impl Permutation {
    /// Groups `ids` [T, k] (already checked to lie in [-1, E)) by expert.
    pub fn new(ids: &[i32], experts: usize, top_k: usize) -> Self {
        let mut offsets = vec![0usize; experts + 1];
        for &id in ids.iter().filter(|&&id| id >= 0) {
            offsets[id as usize + 1] += 1;
        }
        for e in 0..experts {
            offsets[e + 1] += offsets[e];
        }
        let mut cursor = offsets[..experts].to_vec();
        let mut tokens = vec![0usize; offsets[experts]];
        let row_of = ids
            .iter()
            .enumerate()
            .map(|(pair, &id)| {
                let e = usize::try_from(id).ok()?;
                let row = cursor[e];
                cursor[e] += 1;
                tokens[row] = pair / top_k;
                Some(row)
            })
            .collect();
        Permutation {
            offsets,
            tokens,
            row_of,
        }
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
        let p = Permutation::new(&ids, 3, 2);
        assert_eq!(p.offsets, vec![0, 2, 3, 5]);
        assert_eq!(p.tokens, vec![0, 2, 2, 0, 1]);
        assert_eq!(
            p.row_of,
            vec![Some(3), Some(0), None, Some(4), Some(1), Some(2)]
        );
        assert_eq!(p.expert_rows(2), (3, 2));
    }
}
