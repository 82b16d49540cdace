//! Bytes moved and FLOPs of each case: each input read once, each output written once;
//! MLA decode uses FlashMLA's counts (the README of github.com/deepseek-ai/FlashMLA).

use crate::case::{BenchCase, MLA_D_QK, MLA_D_V};

/// Minimal traffic and arithmetic of one op call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cost {
    /// Bytes that must cross the memory bus at least once.
    pub bytes: f64,
    /// Floating-point operations (multiply-add = 2).
    pub flops: f64,
}

/// The cost of `case`; `used_experts` is the number of distinct experts the generated
/// routing selects (only their weights need to be read).
pub fn cost(case: &BenchCase, used_experts: usize) -> Cost {
    match *case {
        BenchCase::Route {
            tokens,
            experts,
            ref params,
        } => {
            let (t, e, k) = (tokens as f64, experts as f64, params.top_k as f64);
            Cost {
                // logits + bias in, ids (i32) + weights (f32) out.
                bytes: 4.0 * (t * e + e) + 8.0 * t * k,
                // score, bias add, group and top-k compares: a few per logit; not
                // compute-bound at any size, so count one op per logit.
                flops: t * e,
            }
        }
        BenchCase::Experts {
            dtype,
            tokens,
            hidden,
            inter,
            top_k,
            ..
        } => {
            let s = dtype.size_in_bytes() as f64;
            let (t, h, i, k) = (tokens as f64, hidden as f64, inter as f64, top_k as f64);
            let weights = used_experts as f64 * 3.0 * h * i * s;
            Cost {
                bytes: weights + 2.0 * t * h * s + 8.0 * t * k,
                // gate+up: 2 * (2I x H), down: 2 * (H x I), per (token, slot).
                flops: t * k * 6.0 * h * i,
            }
        }
        BenchCase::Mla {
            dtype,
            batch,
            s_q,
            h_q,
            seqlen,
            ..
        } => {
            let s = dtype.size_in_bytes() as f64;
            let (b, sq, hq, sk) = (batch as f64, s_q as f64, h_q as f64, seqlen as f64);
            let (d, dv, h_kv) = (MLA_D_QK as f64, MLA_D_V as f64, 1.0);
            Cost {
                bytes: b * (sq * hq * d * s + sk * h_kv * d * s + sq * hq * dv * s),
                flops: b * hq * sq * (2.0 * d + 2.0 * dv) * sk,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::DType;

    #[test]
    fn mla_cost_matches_flashmla_formula_at_its_memory_bound_shape() {
        // b=128, s_q=1, h_q=16, sk=4096, bf16: FlashMLA's byte and FLOP formulas.
        let case = BenchCase::Mla {
            dtype: DType::BF16,
            batch: 128,
            s_q: 1,
            h_q: 16,
            seqlen: 4096,
            block_size: 64,
        };
        let c = cost(&case, 0);
        let bytes = 128.0 * (16.0 * 576.0 * 2.0 + 4096.0 * 576.0 * 2.0 + 16.0 * 512.0 * 2.0);
        let flops = 128.0 * 16.0 * (2.0 * 576.0 + 2.0 * 512.0) * 4096.0;
        assert_eq!(c.bytes, bytes);
        assert_eq!(c.flops, flops);
    }

    #[test]
    fn expert_weights_count_only_used_experts() {
        let case = BenchCase::Experts {
            dtype: DType::BF16,
            tokens: 1,
            hidden: 2048,
            inter: 1408,
            experts: 64,
            top_k: 6,
        };
        let one = cost(&case, 1).bytes;
        let six = cost(&case, 6).bytes;
        assert_eq!(six - one, 5.0 * 3.0 * 2048.0 * 1408.0 * 2.0);
    }
}
