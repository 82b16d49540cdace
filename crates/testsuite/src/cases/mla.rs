//! `mla_decode` against the reference: small shapes, grouped heads, empty ranges and
//! DeepSeek shapes (Dqk 576, Dv 512, Hq 16 / 128, Sq 1 / 2 causal, blocks of 16 / 64).
//! Every problem has permuted physical blocks, 2147480000 in unused table entries and NaN
//! in unused cache slots.

pub use super::mla_problem::{MlaProblem, MlaSpec, UNUSED_ENTRY};
use crate::compare::{check_close, ensure, Tol};
use crate::harness::Ctx;
use crate::rng::Rng;
use moemla_core::{DType, MlaDecodeParams, Op};

fn case(ctx: &Ctx<'_>, dtype: DType, spec: MlaSpec, seed: u64) {
    if !ctx.supports(Op::MlaDecode, dtype) {
        return;
    }
    let problem = MlaProblem::random(&spec, &mut Rng::new(seed));
    let (o, lse, exp) = problem.run(ctx, dtype);
    let what = format!("mla_decode {dtype} {:?}", problem.dims);
    ensure(check_close(
        &format!("{what} o"),
        &o,
        &exp.o,
        Tol::of(dtype),
    ));
    ensure(check_close(
        &format!("{what} lse"),
        &lse,
        &exp.lse,
        Tol::of(dtype),
    ));
}

/// B 3, Sq 1, Hq 4, Hkv 1, Dqk 16, Dv 8, blocks of 4, lengths 5 / 0 / 12, not causal.
pub fn small(ctx: &Ctx<'_>, dtype: DType) {
    let spec = MlaSpec {
        s_q: 1,
        h_q: 4,
        h_kv: 1,
        d_qk: 16,
        d_v: 8,
        block_size: 4,
        seqlens: vec![5, 0, 12],
        spare_blocks: 2,
        causal: false,
        softmax_scale: 0.25,
    };
    case(ctx, dtype, spec, 0xa1);
}

/// Sq 3 causal, Hq 4 over Hkv 2 (two query heads per cache head), blocks of 3; the first
/// query of the length-2 sequence has an empty range.
pub fn small_causal_grouped_heads(ctx: &Ctx<'_>, dtype: DType) {
    let spec = MlaSpec {
        s_q: 3,
        h_q: 4,
        h_kv: 2,
        d_qk: 12,
        d_v: 6,
        block_size: 3,
        seqlens: vec![7, 2],
        spare_blocks: 1,
        causal: true,
        softmax_scale: 0.3,
    };
    case(ctx, dtype, spec, 0xa2);
}

/// Sq 2 without the causal mask: both queries see the whole sequence.
pub fn small_non_causal_multi_query(ctx: &Ctx<'_>, dtype: DType) {
    let spec = MlaSpec {
        s_q: 2,
        h_q: 2,
        h_kv: 2,
        d_qk: 8,
        d_v: 4,
        block_size: 2,
        seqlens: vec![3, 6],
        spare_blocks: 1,
        causal: false,
        softmax_scale: 0.5,
    };
    case(ctx, dtype, spec, 0xa3);
}

/// Empty ranges (length 0; causal query before the first token) give o = 0, lse = -inf.
pub fn empty_ranges(ctx: &Ctx<'_>, dtype: DType) {
    if !ctx.supports(Op::MlaDecode, dtype) {
        return;
    }
    let spec = MlaSpec {
        s_q: 2,
        h_q: 2,
        h_kv: 1,
        d_qk: 8,
        d_v: 4,
        block_size: 4,
        seqlens: vec![0, 1],
        spare_blocks: 1,
        causal: true,
        softmax_scale: 0.5,
    };
    let problem = MlaProblem::random(&spec, &mut Rng::new(0xa4));
    let (o, lse, _) = problem.run(ctx, dtype);
    // o [2, 2, 2, 4]: sequence 0 entirely, and query 0 of sequence 1, are empty.
    let empty_o = o[..16].iter().chain(&o[16..24]);
    assert!(
        empty_o.copied().all(|v| v == 0.0),
        "o of empty ranges must be 0: {o:?}"
    );
    // lse [2, 2, 2] (b, h, i): all of b 0, and i 0 of b 1.
    for (idx, &v) in lse.iter().enumerate() {
        let (b, i) = (idx / 4, idx % 2);
        let empty = b == 0 || i == 0;
        assert_eq!(v == f32::NEG_INFINITY, empty, "lse[{idx}] = {v}: {lse:?}");
    }
}

/// DeepSeek-V3 decode shapes: Dqk 576, Dv 512, one cache head, causal, the YaRN scale.
pub fn deepseek(ctx: &Ctx<'_>, dtype: DType, h_q: usize, s_q: usize, block_size: usize) {
    let spec = MlaSpec {
        s_q,
        h_q,
        h_kv: 1,
        d_qk: 576,
        d_v: 512,
        block_size,
        seqlens: vec![150, 65],
        spare_blocks: 2,
        causal: true,
        softmax_scale: MlaDecodeParams::DEEPSEEK_V3_SOFTMAX_SCALE,
    };
    case(ctx, dtype, spec, 0xd5 + (h_q * s_q * block_size) as u64);
}

/// Long sequences (1500 and 700 tokens, blocks of 64) at DeepSeek width: enough work for a
/// split-KV kernel to cut each sequence into several chunks and combine them.
pub fn long_sequences(ctx: &Ctx<'_>, dtype: DType) {
    let spec = MlaSpec {
        s_q: 1,
        h_q: 16,
        h_kv: 1,
        d_qk: 576,
        d_v: 512,
        block_size: 64,
        seqlens: vec![1500, 700],
        spare_blocks: 2,
        causal: true,
        softmax_scale: MlaDecodeParams::DEEPSEEK_V3_SOFTMAX_SCALE,
    };
    case(ctx, dtype, spec, 0xa5);
}

/// A wider batch (B 5) with lengths around block boundaries (0, 1, 15, 16, 17; blocks of 16).
pub fn batch_with_block_boundaries(ctx: &Ctx<'_>, dtype: DType) {
    let spec = MlaSpec {
        s_q: 2,
        h_q: 8,
        h_kv: 1,
        d_qk: 64,
        d_v: 32,
        block_size: 16,
        seqlens: vec![0, 1, 15, 16, 17],
        spare_blocks: 2,
        causal: true,
        softmax_scale: 0.125,
    };
    case(ctx, dtype, spec, 0xa6);
}
