//! `mla_decode` in f64: softmax attention of each query over its sequence's paged cache.

/// The sizes of an `mla_decode` problem.
#[derive(Clone, Copy, Debug)]
pub struct MlaDims {
    /// B.
    pub batch: usize,
    /// Sq.
    pub s_q: usize,
    /// Hq.
    pub h_q: usize,
    /// Hkv.
    pub h_kv: usize,
    /// Dqk.
    pub d_qk: usize,
    /// Dv.
    pub d_v: usize,
    /// Blocks in the cache.
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Columns of the block table.
    pub max_blocks: usize,
}

/// Reference outputs.
#[derive(Clone, Debug)]
pub struct MlaRef {
    /// [B, Sq, Hq, Dv].
    pub o: Vec<f64>,
    /// [B, Hq, Sq] (natural log; -inf for an empty range).
    pub lse: Vec<f64>,
}

/// Attention of `q` [B, Sq, Hq, Dqk] over `kv` [num_blocks, block_size, Hkv, Dqk] through
/// `table` `[B, max_blocks]` and `seqlens` `[B]`; indices must be valid for the used entries.
pub fn mla_decode(
    q: &[f64],
    kv: &[f64],
    table: &[i32],
    seqlens: &[i32],
    d: MlaDims,
    softmax_scale: f64,
    causal: bool,
) -> MlaRef {
    let mut o = vec![0.0; d.batch * d.s_q * d.h_q * d.d_v];
    let mut lse = vec![f64::NEG_INFINITY; d.batch * d.h_q * d.s_q];
    let heads_per_kv = d.h_q / d.h_kv;
    for b in 0..d.batch {
        let seqlen = seqlens[b] as i64;
        for i in 0..d.s_q {
            let len = if causal {
                seqlen - d.s_q as i64 + i as i64 + 1
            } else {
                seqlen
            };
            if len <= 0 {
                continue;
            }
            for h in 0..d.h_q {
                let qv = &q[((b * d.s_q + i) * d.h_q + h) * d.d_qk..][..d.d_qk];
                let rows: Vec<&[f64]> = (0..len as usize)
                    .map(|p| {
                        let block = table[b * d.max_blocks + p / d.block_size] as usize;
                        let slot = block * d.block_size + p % d.block_size;
                        &kv[(slot * d.h_kv + h / heads_per_kv) * d.d_qk..][..d.d_qk]
                    })
                    .collect();
                let s: Vec<f64> = rows
                    .iter()
                    .map(|k| softmax_scale * k.iter().zip(qv).map(|(a, b)| a * b).sum::<f64>())
                    .collect();
                let max = s.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                let sum: f64 = s.iter().map(|v| (v - max).exp()).sum();
                lse[(b * d.h_q + h) * d.s_q + i] = max + sum.ln();
                let out = &mut o[((b * d.s_q + i) * d.h_q + h) * d.d_v..][..d.d_v];
                for (k, sv) in rows.iter().zip(&s) {
                    let p = (sv - max).exp() / sum;
                    for c in 0..d.d_v {
                        out[c] += p * k[c];
                    }
                }
            }
        }
    }
    MlaRef { o, lse }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(s_q: usize, block_size: usize, num_blocks: usize, max_blocks: usize) -> MlaDims {
        MlaDims {
            batch: 1,
            s_q,
            h_q: 1,
            h_kv: 1,
            d_qk: 2,
            d_v: 1,
            num_blocks,
            block_size,
            max_blocks,
        }
    }

    #[test]
    fn one_token_attends_to_itself() {
        // o = V row; lse = scale * q.k = 0.5 * (1*3 + 2*4) = 5.5.
        let r = mla_decode(
            &[1.0, 2.0],
            &[3.0, 4.0],
            &[0],
            &[1],
            dims(1, 1, 1, 1),
            0.5,
            false,
        );
        assert_eq!(r.o, vec![3.0]);
        assert!((r.lse[0] - 5.5).abs() < 1e-12);
    }

    #[test]
    fn equal_scores_average_and_add_ln2() {
        // Two tokens with the same score 1 through a permuted table: o = mean, lse = 1 + ln 2.
        // Physical block 1 holds token 0 (v = 2), block 0 holds token 1 (v = 6).
        let kv = [6.0, 1.0, 2.0, 1.0];
        let r = mla_decode(
            &[0.0, 1.0],
            &kv,
            &[1, 0],
            &[2],
            dims(1, 1, 2, 2),
            1.0,
            false,
        );
        assert!((r.o[0] - 4.0).abs() < 1e-12);
        assert!((r.lse[0] - (1.0 + 2f64.ln())).abs() < 1e-12);
    }

    #[test]
    fn causal_queries_see_a_growing_prefix_and_empty_is_zero_and_minus_inf() {
        // Sq = 2, seqlen 1: query 0 has an empty range, query 1 sees token 0.
        let kv = [5.0, 0.0, 7.0, 0.0];
        let r = mla_decode(
            &[1.0, 0.0, 1.0, 0.0],
            &kv,
            &[0],
            &[1],
            dims(2, 2, 1, 1),
            1.0,
            true,
        );
        assert_eq!(r.o, vec![0.0, 5.0]);
        assert_eq!(r.lse[0], f64::NEG_INFINITY);
        assert!((r.lse[1] - 5.0).abs() < 1e-12);
    }
}
