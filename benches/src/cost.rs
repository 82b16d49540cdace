//! Bytes moved and FLOPs of each case: each input read once, each output written once;
//! MLA decode uses FlashMLA's counts (the README of github.com/deepseek-ai/FlashMLA), and
//! sparse decode FlashMLA's `count_flop_and_mem_vol_for_decode` (tests/lib.py of the same
//! repository, the counts its tests/test_flash_mla_sparse_decoding.py reports).

use crate::case::{BenchCase, MLA_D_QK, MLA_D_V};

/// Bytes of one `fp8_ds_v32` cache row (512 e4m3 codes, 4 f32 scales, 64 bf16 rope
/// values): FlashMLA's `kv_token_size` for d_qk 576.
pub const FP8_ROW_BYTES: f64 = 656.0;

/// Side of a square FP8 weight scale block.
const BLOCK: usize = 128;

/// Minimal traffic and arithmetic of one op call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cost {
    /// Bytes that must cross the memory bus at least once.
    pub bytes: f64,
    /// Floating-point operations (multiply-add = 2).
    pub flops: f64,
}

/// The cost of `case`; `used_experts` is the number of distinct experts the generated
/// routing selects (only their weights need to be read), `distinct_rows` the number of
/// distinct cache rows a sparse decode's indices name (FlashMLA's `num_retrieved_tokens`).
pub fn cost(case: &BenchCase, used_experts: usize, distinct_rows: usize) -> Cost {
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
        BenchCase::Fp8Experts {
            tokens,
            hidden,
            inter,
            top_k,
            ..
        } => {
            let (t, h, i, k) = (tokens as f64, hidden as f64, inter as f64, top_k as f64);
            // Per used expert: the e4m3 codes of W13 [2I, H] and W2 [H, I], one byte each,
            // and their f32 block scales [ceil(2I/128), ceil(H/128)] and
            // [ceil(H/128), ceil(I/128)]. Unused experts' weights are never read.
            let (hb, ib, i2b) = (
                hidden.div_ceil(BLOCK),
                inter.div_ceil(BLOCK),
                (2 * inter).div_ceil(BLOCK),
            );
            let scales = 4.0 * (i2b * hb + hb * ib) as f64;
            let weights = used_experts as f64 * (3.0 * h * i + scales);
            Cost {
                // + x read and y written (BF16), ids (I32) and weights (F32) read.
                bytes: weights + 2.0 * t * h * 2.0 + 8.0 * t * k,
                // gate+up: 2 * (2I x H), down: 2 * (H x I), per (token, slot).
                flops: t * k * 6.0 * h * i,
            }
        }
        BenchCase::MlaFp8 {
            batch,
            s_q,
            h_q,
            seqlen,
            ..
        } => {
            // FlashMLA's dense decode counts with the cache row at 656 bytes (its FP8
            // `kv_token_size`): q and o in BF16, every cached token row read once.
            let (b, sq, hq, sk) = (batch as f64, s_q as f64, h_q as f64, seqlen as f64);
            let (d, dv) = (MLA_D_QK as f64, MLA_D_V as f64);
            Cost {
                bytes: b * (sq * hq * d * 2.0 + sk * FP8_ROW_BYTES + sq * hq * dv * 2.0),
                flops: b * hq * sq * (2.0 * d + 2.0 * dv) * sk,
            }
        }
        BenchCase::Sparse {
            batch,
            s_q,
            h_q,
            topk,
            ..
        } => {
            // FlashMLA tests/lib.py, count_flop_and_mem_vol_for_decode:
            //   compute_flop = 2 * h_q * num_attended_tokens * (d_qk + d_v), with
            //     num_attended_tokens = b * s_q * topk (no topk_length);
            //   mem_vol = 2 * b * s_q * h_q * d_qk (Q) + num_retrieved_tokens * 656 (K)
            //     + 2 * b * s_q * h_q * d_v (O), num_retrieved_tokens = distinct indices.
            let (b, sq, hq, k) = (batch as f64, s_q as f64, h_q as f64, topk as f64);
            let (d, dv) = (MLA_D_QK as f64, MLA_D_V as f64);
            Cost {
                bytes: 2.0 * b * sq * hq * d
                    + distinct_rows as f64 * FP8_ROW_BYTES
                    + 2.0 * b * sq * hq * dv,
                flops: 2.0 * hq * (b * sq * k) * (d + dv),
            }
        }
        BenchCase::Indexer {
            batch,
            s_q,
            heads,
            dim,
            seqlen,
            top_k,
            ..
        } => {
            let (b, sq, hi, di, sk, k) = (
                batch as f64,
                s_q as f64,
                heads as f64,
                dim as f64,
                seqlen as f64,
                top_k as f64,
            );
            Cost {
                // Keys [sk, Di] BF16 per sequence read once, q [Sq, Hi, Di] BF16 and
                // weights [Sq, Hi] F32 read, indices (I32) and scores (F32) written.
                bytes: b * (sk * di * 2.0 + sq * hi * di * 2.0 + sq * hi * 4.0 + sq * k * 8.0),
                // Per query and position: Hi dot products of Di (2 * Hi * Di), then each
                // head's ReLU'd score times its weight, summed (2 * Hi).
                flops: b * sq * sk * (2.0 * hi * di + 2.0 * hi),
            }
        }
        BenchCase::Step {
            fp8,
            batch,
            h_q,
            seqlen,
            ..
        } => {
            let (b, hq, sk) = (batch as f64, h_q as f64, seqlen as f64);
            let (d, dv) = (MLA_D_QK as f64, MLA_D_V as f64);
            let row = if fp8 { FP8_ROW_BYTES } else { d * 2.0 };
            Cost {
                // The write: b new BF16 rows and their slots read, b cache rows written;
                // the decode (FlashMLA's counts): q, every cached row, o.
                bytes: b * (d * 2.0 + 4.0 + row) + b * (hq * d * 2.0 + sk * row + hq * dv * 2.0),
                flops: b * hq * (2.0 * d + 2.0 * dv) * sk,
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
        let c = cost(&case, 0, 0);
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
        let one = cost(&case, 1, 0).bytes;
        let six = cost(&case, 6, 0).bytes;
        assert_eq!(six - one, 5.0 * 3.0 * 2048.0 * 1408.0 * 2.0);
    }

    #[test]
    fn sparse_cost_is_flashmla_s_count_at_its_v32_shape() {
        // b 128, s_q 1, h_q 128, topk 2048, every index distinct: FlashMLA's
        // count_flop_and_mem_vol_for_decode (tests/lib.py).
        let case = BenchCase::Sparse {
            batch: 128,
            s_q: 1,
            h_q: 128,
            topk: 2048,
            seqlen: 32768,
            block_size: 64,
        };
        let c = cost(&case, 0, 128 * 2048);
        let flops = 2.0 * 128.0 * (128.0 * 2048.0) * (576.0 + 512.0);
        let bytes =
            2.0 * 128.0 * 128.0 * 576.0 + 128.0 * 2048.0 * 656.0 + 2.0 * 128.0 * 128.0 * 512.0;
        assert_eq!((c.flops, c.bytes), (flops, bytes));
    }

    #[test]
    fn fp8_experts_count_one_byte_per_weight_plus_block_scales() {
        let case = BenchCase::Fp8Experts {
            w8a8: false,
            ue8m0: false,
            tokens: 1,
            hidden: 7168,
            inter: 2048,
            experts: 256,
            top_k: 8,
        };
        let one = cost(&case, 1, 0);
        let eight = cost(&case, 8, 0);
        // W13: 2 * 2048 x 7168 codes + 32 x 56 scales; W2: 7168 x 2048 + 56 x 16 scales.
        let per_expert = 3.0 * 7168.0 * 2048.0 + 4.0 * (32.0 * 56.0 + 56.0 * 16.0);
        assert_eq!(eight.bytes - one.bytes, 7.0 * per_expert);
        assert_eq!(one.flops, 8.0 * 6.0 * 7168.0 * 2048.0);
        // Half the bf16 weight bytes, plus the scales.
        let bf16 = BenchCase::Experts {
            dtype: DType::BF16,
            tokens: 1,
            hidden: 7168,
            inter: 2048,
            experts: 256,
            top_k: 8,
        };
        let bf16 = cost(&bf16, 8, 0).bytes;
        assert!(
            eight.bytes < 0.51 * bf16 && eight.bytes > 0.5 * bf16,
            "{} {bf16}",
            eight.bytes
        );
    }

    #[test]
    fn fp8_cache_rows_count_656_bytes_and_the_step_adds_the_write() {
        let dec = BenchCase::MlaFp8 {
            batch: 4,
            s_q: 1,
            h_q: 16,
            seqlen: 4096,
            block_size: 64,
        };
        let c = cost(&dec, 0, 0);
        assert_eq!(
            c.bytes,
            4.0 * (16.0 * 576.0 * 2.0 + 4096.0 * 656.0 + 16.0 * 512.0 * 2.0)
        );
        let step = BenchCase::Step {
            fp8: true,
            batch: 4,
            h_q: 16,
            seqlen: 4096,
            block_size: 64,
            pool_bytes: 1 << 30,
        };
        let s = cost(&step, 0, 0);
        assert_eq!(s.flops, c.flops);
        assert_eq!(s.bytes - c.bytes, 4.0 * (576.0 * 2.0 + 4.0 + 656.0));
    }
}
