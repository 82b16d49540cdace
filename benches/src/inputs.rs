//! Deterministic inputs for each case (a fixed-seed PRNG; no `rand` dependency).

use crate::case::{BenchCase, MLA_D_QK};
use moemla_core::{HostTensor, Result};

/// The named input tensors of one case (contract argument names) and facts the cost model
/// needs.
pub struct BenchInputs {
    /// `(argument name, tensor)` in the op's argument order.
    pub tensors: Vec<(&'static str, HostTensor)>,
    /// Distinct experts selected by the routing (moe_experts only).
    pub used_experts: usize,
}

impl BenchInputs {
    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> &HostTensor {
        &self
            .tensors
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("bench input `{name}` missing"))
            .1
    }
}

/// SplitMix64: small, fast, and good enough for benchmark data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn symmetric(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.symmetric() * scale).collect()
    }
}

/// Builds the inputs of `case` (same seed, same data, every run and every backend).
pub fn generate(case: &BenchCase) -> Result<BenchInputs> {
    let mut rng = Rng(0x6d6f_656d_6c61);
    match *case {
        BenchCase::Route {
            tokens, experts, ..
        } => Ok(BenchInputs {
            tensors: vec![
                (
                    "logits",
                    HostTensor::from_slice([tokens, experts], &rng.vec(tokens * experts, 4.0))?,
                ),
                (
                    "bias",
                    HostTensor::from_slice([experts], &rng.vec(experts, 0.1))?,
                ),
            ],
            used_experts: 0,
        }),
        BenchCase::Experts {
            dtype,
            tokens,
            hidden,
            inter,
            experts,
            top_k,
        } => {
            let (ids, used_experts) = distinct_ids(&mut rng, tokens, experts, top_k);
            let weights: Vec<f32> = (0..tokens * top_k)
                .map(|_| 0.5 + 0.5 * rng.symmetric().abs())
                .collect();
            let w_scale = 1.0 / (hidden as f32).sqrt();
            let tensors = vec![
                (
                    "x",
                    HostTensor::from_f32_as(
                        [tokens, hidden],
                        &rng.vec(tokens * hidden, 1.0),
                        dtype,
                    )?,
                ),
                (
                    "w13",
                    HostTensor::from_f32_as(
                        [experts, 2 * inter, hidden],
                        &rng.vec(experts * 2 * inter * hidden, w_scale),
                        dtype,
                    )?,
                ),
                (
                    "w2",
                    HostTensor::from_f32_as(
                        [experts, hidden, inter],
                        &rng.vec(experts * hidden * inter, w_scale),
                        dtype,
                    )?,
                ),
                ("topk_ids", HostTensor::from_slice([tokens, top_k], &ids)?),
                (
                    "topk_weights",
                    HostTensor::from_slice([tokens, top_k], &weights)?,
                ),
            ];
            Ok(BenchInputs {
                tensors,
                used_experts,
            })
        }
        BenchCase::Mla {
            dtype,
            batch,
            s_q,
            h_q,
            seqlen,
            block_size,
        } => {
            let blocks_per_seq = seqlen.div_ceil(block_size);
            let num_blocks = batch * blocks_per_seq;
            let mut table: Vec<i32> = (0..num_blocks as i32).collect();
            for i in (1..table.len()).rev() {
                table.swap(i, rng.below(i + 1));
            }
            let tensors = vec![
                (
                    "q",
                    HostTensor::from_f32_as(
                        [batch, s_q, h_q, MLA_D_QK],
                        &rng.vec(batch * s_q * h_q * MLA_D_QK, 1.0),
                        dtype,
                    )?,
                ),
                (
                    "kv_cache",
                    HostTensor::from_f32_as(
                        [num_blocks, block_size, 1, MLA_D_QK],
                        &rng.vec(num_blocks * block_size * MLA_D_QK, 1.0),
                        dtype,
                    )?,
                ),
                (
                    "block_table",
                    HostTensor::from_slice([batch, blocks_per_seq], &table)?,
                ),
                (
                    "cache_seqlens",
                    HostTensor::from_slice([batch], &vec![seqlen as i32; batch])?,
                ),
            ];
            Ok(BenchInputs {
                tensors,
                used_experts: 0,
            })
        }
    }
}

/// `top_k` distinct expert ids per token, uniformly spread; returns the ids and how many
/// distinct experts were used overall.
fn distinct_ids(rng: &mut Rng, tokens: usize, experts: usize, top_k: usize) -> (Vec<i32>, usize) {
    let mut used = vec![false; experts];
    let mut ids = Vec::with_capacity(tokens * top_k);
    let mut pool: Vec<i32> = (0..experts as i32).collect();
    for _ in 0..tokens {
        for j in 0..top_k {
            let pick = j + rng.below(experts - j);
            pool.swap(j, pick);
            used[pool[j] as usize] = true;
            ids.push(pool[j]);
        }
    }
    (ids, used.iter().filter(|&&u| u).count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::DType;

    #[test]
    fn expert_ids_are_distinct_per_token_and_counted() {
        let mut rng = Rng(1);
        let (ids, used) = distinct_ids(&mut rng, 50, 8, 3);
        for row in ids.chunks(3) {
            assert!(row[0] != row[1] && row[1] != row[2] && row[0] != row[2]);
        }
        let mut seen: Vec<i32> = ids.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), used);
    }

    #[test]
    fn block_table_is_a_permutation_of_all_blocks() {
        let case = BenchCase::Mla {
            dtype: DType::F32,
            batch: 3,
            s_q: 1,
            h_q: 2,
            seqlen: 100,
            block_size: 16,
        };
        let inputs = generate(&case).unwrap();
        let mut table = inputs.get("block_table").to_i32_vec().unwrap();
        table.sort();
        assert_eq!(table, (0..21).collect::<Vec<i32>>());
    }
}
