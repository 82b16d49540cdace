//! The CPU decode against a plain f64 reference at DeepSeek shapes.

use crate::test_util::{download_f32, upload_as, Lcg};
use crate::CpuBackend;
use moemla_core::{ops, Backend, DType, Error, HostTensor, MlaDecodeParams};

struct Case {
    batch: usize,
    s_q: usize,
    h_q: usize,
    h_kv: usize,
    d_qk: usize,
    d_v: usize,
    block_size: usize,
    max_blocks: usize,
    seqlens: Vec<i32>,
    causal: bool,
}

/// FlashMLA decode in f64, written plainly: returns (o [B,Sq,Hq,Dv], lse [B,Hq,Sq]).
fn reference(
    c: &Case,
    q: &[f32],
    cache: &[f32],
    table: &[i32],
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut o = vec![0.0; c.batch * c.s_q * c.h_q * c.d_v];
    let mut lse = vec![f64::NEG_INFINITY; c.batch * c.h_q * c.s_q];
    for b in 0..c.batch {
        let seqlen = c.seqlens[b] as i64;
        for i in 0..c.s_q {
            let len = if c.causal {
                seqlen - c.s_q as i64 + i as i64 + 1
            } else {
                seqlen
            };
            for h in 0..c.h_q {
                let g = h / (c.h_q / c.h_kv);
                let qv = &q[((b * c.s_q + i) * c.h_q + h) * c.d_qk..][..c.d_qk];
                let key = |p: usize| {
                    let blk = table[b * c.max_blocks + p / c.block_size] as usize;
                    &cache[((blk * c.block_size + p % c.block_size) * c.h_kv + g) * c.d_qk..]
                        [..c.d_qk]
                };
                let logits: Vec<f64> = (0..len.max(0) as usize)
                    .map(|p| {
                        scale
                            * key(p)
                                .iter()
                                .zip(qv)
                                .map(|(&a, &b)| a as f64 * b as f64)
                                .sum::<f64>()
                    })
                    .collect();
                if logits.is_empty() {
                    continue;
                }
                let m = logits.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
                lse[(b * c.h_q + h) * c.s_q + i] = m + z.ln();
                let out = &mut o[((b * c.s_q + i) * c.h_q + h) * c.d_v..][..c.d_v];
                for (p, l) in logits.iter().enumerate() {
                    let w = (l - m).exp() / z;
                    for (d, v) in out.iter_mut().zip(key(p)) {
                        *d += w * *v as f64;
                    }
                }
            }
        }
    }
    (o, lse)
}

/// Runs `c` with NaN in every unused cache slot and garbage in unused table entries.
fn check(c: &Case, dtype: DType, tol: f64) {
    let cpu = CpuBackend::new();
    let mut rng = Lcg::new(11);
    let num_blocks = c.batch * c.max_blocks + 1;
    let row = c.h_kv * c.d_qk;
    // Sequence b uses blocks in reverse order; one block stays unused.
    let mut table = vec![2147480000; c.batch * c.max_blocks];
    let mut used = vec![false; num_blocks * c.block_size];
    for b in 0..c.batch {
        let blocks = (c.seqlens[b] as usize).div_ceil(c.block_size);
        for j in 0..blocks {
            let blk = num_blocks - 1 - (b * c.max_blocks + j);
            table[b * c.max_blocks + j] = blk as i32;
            for s in 0..c.block_size.min(c.seqlens[b] as usize - j * c.block_size) {
                used[blk * c.block_size + s] = true;
            }
        }
    }
    let mut cache_v = rng.vec(num_blocks * c.block_size * row, -1.0, 1.0);
    for (slot, chunk) in cache_v.chunks_mut(row).enumerate() {
        if !used[slot] {
            chunk.fill(f32::NAN);
        }
    }
    let q_v = rng.vec(c.batch * c.s_q * c.h_q * c.d_qk, -1.0, 1.0);
    let (q, qs) = upload_as(&cpu, &[c.batch, c.s_q, c.h_q, c.d_qk], &q_v, dtype);
    let cache_dims = [num_blocks, c.block_size, c.h_kv, c.d_qk];
    let (cache, cache_s) = upload_as(&cpu, &cache_dims, &cache_v, dtype);
    let table_t = cpu
        .upload(&HostTensor::from_slice([c.batch, c.max_blocks], &table).unwrap())
        .unwrap();
    let lens_t = cpu
        .upload(&HostTensor::from_slice([c.batch], &c.seqlens).unwrap())
        .unwrap();
    let params = MlaDecodeParams {
        softmax_scale: MlaDecodeParams::DEEPSEEK_V3_SOFTMAX_SCALE,
        causal: c.causal,
        head_dim_v: c.d_v,
        kv_format: Default::default(),
    };
    let out = ops::mla_decode(&cpu, &q, &cache, &table_t, &lens_t, &params).unwrap();
    let (o, lse) = (download_f32(&cpu, &out.o), download_f32(&cpu, &out.lse));
    let (want_o, want_lse) = reference(c, &qs, &cache_s, &table, params.softmax_scale);
    for (n, (&g, &w)) in o.iter().zip(&want_o).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "o[{n}]: {g} vs {w}"
        );
    }
    for (n, (&g, &w)) in lse.iter().zip(&want_lse).enumerate() {
        let ok = if w.is_infinite() {
            g as f64 == w
        } else {
            (g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs())
        };
        assert!(ok, "lse[{n}]: {g} vs {w}");
    }
}

fn deepseek(h_q: usize, seqlens: Vec<i32>) -> Case {
    Case {
        batch: seqlens.len(),
        s_q: 2,
        h_q,
        h_kv: 1,
        d_qk: 576,
        d_v: 512,
        block_size: 64,
        max_blocks: 12,
        seqlens,
        causal: true,
    }
}

#[test]
fn deepseek_causal_decode_matches_f64_reference() {
    // 700 spans several chunks and splits; 1 leaves query 0 with an empty range.
    check(&deepseek(16, vec![700, 1, 64]), DType::F32, 2e-5);
}

#[test]
fn many_heads_over_several_tile_chunks_match_f64_reference() {
    // 64 heads, two causal queries (128 rows): on AMX tiles, where this process may use
    // them, in chunks of 256 positions (`TILE_CHUNK`); 700 and 513 span several of them
    // and splits, 255 is one short of a chunk. Elsewhere the bf16 dot or the f32 kernels.
    check(&deepseek(64, vec![700, 513, 255]), DType::BF16, 1e-2);
}

#[test]
fn deepseek_decode_in_half_types_matches_f64_reference() {
    check(&deepseek(16, vec![300, 0]), DType::BF16, 1e-2);
    check(&deepseek(16, vec![129]), DType::F16, 1.5e-3);
}

#[test]
fn grouped_heads_without_causal_mask_match_f64_reference() {
    let c = Case {
        batch: 2,
        s_q: 3,
        h_q: 4,
        h_kv: 2,
        d_qk: 40,
        d_v: 32,
        block_size: 16,
        max_blocks: 40,
        seqlens: vec![600, 17],
        causal: false,
    };
    check(&c, DType::F32, 2e-5);
}

#[test]
fn used_block_entry_out_of_range_is_reported() {
    let cpu = CpuBackend::new();
    let (q, _) = upload_as(&cpu, &[1, 1, 2, 8], &[0.1; 16], DType::F32);
    let (cache, _) = upload_as(&cpu, &[2, 4, 1, 8], &[0.1; 64], DType::F32);
    let table = cpu
        .upload(&HostTensor::from_slice([1, 3], &[1, 2, 99]).unwrap())
        .unwrap();
    let lens = cpu
        .upload(&HostTensor::from_slice([1], &[6]).unwrap())
        .unwrap();
    let params = MlaDecodeParams {
        softmax_scale: 0.5,
        causal: true,
        head_dim_v: 4,
        kv_format: Default::default(),
    };
    match ops::mla_decode(&cpu, &q, &cache, &table, &lens, &params).unwrap_err() {
        Error::IndexOutOfRange {
            arg, index, value, ..
        } => {
            assert_eq!((arg, index, value), ("block_table", vec![0, 1], 2));
        }
        other => panic!("expected IndexOutOfRange, got {other:?}"),
    }
}

#[test]
fn bf16_decode_matches_f64_reference_at_odd_lengths_and_widths() {
    // Odd lengths, lengths just past and short of a chunk (128) and a block, causal with
    // two queries: on the bf16 dot where it outpaces the FMA (P rounded to bf16).
    check(&deepseek(16, vec![257, 129, 63, 2]), DType::BF16, 1e-2);
    // Grouped heads, a value width that is not whole vectors of 16, 3 rows per head.
    let c = Case {
        batch: 2,
        s_q: 2,
        h_q: 6,
        h_kv: 2,
        d_qk: 56,
        d_v: 40,
        block_size: 16,
        max_blocks: 20,
        seqlens: vec![301, 17],
        causal: true,
    };
    check(&c, DType::BF16, 1e-2);
}

#[test]
fn one_to_many_heads_at_the_deepseek_width_match_f64_reference() {
    // h_q 1 and 3 (fewer rows than a 4 x 4 score tile), 5 (one whole tile and one row),
    // 128 (with two queries, 256 rows: in f32 packed once for the AVX-512F kernel, the
    // cache rows read in place a block at a time); one and
    // two queries; lengths past and short of a chunk (128) and a block (64), one of 1
    // that leaves the first of two causal queries nothing to attend (lse -inf).
    for (s_q, h_q, seqlens) in [
        (1, 1, vec![131, 64]),
        (2, 3, vec![129, 1]),
        (1, 5, vec![200]),
        (2, 128, vec![150, 1]),
    ] {
        let c = Case {
            s_q,
            ..deepseek(h_q, seqlens)
        };
        check(&c, DType::BF16, 1e-2);
        check(&c, DType::F32, 2e-5);
    }
}

/// `count` random `fp8_ds_v32` rows (power-of-two scales, as quantized) and their f32
/// dequantization, except row `odd`, whose first tile's scale is 0.3 (its values then
/// not bf16 values).
fn fp8_rows(count: usize, odd: usize, rng: &mut Lcg) -> (Vec<u8>, Vec<f32>) {
    use moemla_core::fp8::{
        dequantize_ds_v32_row, quantize_ds_v32_row, DS_V32_DIM, DS_V32_LATENT, DS_V32_ROW_BYTES,
    };
    let mut bytes = vec![0u8; count * DS_V32_ROW_BYTES];
    let mut deq = vec![0.0f32; count * DS_V32_DIM];
    for (at, (row, out)) in bytes
        .chunks_exact_mut(DS_V32_ROW_BYTES)
        .zip(deq.chunks_exact_mut(DS_V32_DIM))
        .enumerate()
    {
        let kv: Vec<f32> = rng.vec(DS_V32_DIM, -1.0, 1.0);
        let row: &mut [u8; DS_V32_ROW_BYTES] = row.try_into().unwrap();
        quantize_ds_v32_row(kv.as_slice().try_into().unwrap(), row);
        if at == odd {
            row[DS_V32_LATENT..DS_V32_LATENT + 4].copy_from_slice(&0.3f32.to_le_bytes());
        }
        dequantize_ds_v32_row(row, out.try_into().unwrap());
    }
    (bytes, deq)
}

#[test]
fn fp8_cache_decode_matches_f64_reference_on_both_paths() {
    use super::attend::{Taken, TAKEN};
    use moemla_core::fp8::{DS_V32_DIM, DS_V32_ROW_BYTES};
    // BF16 queries; the rows' power-of-two scales make their values bf16 values (tiles,
    // or the bf16 dot where it outpaces the FMA), except one row with a scale of 0.3 in its
    // first tile, whose chunk (positions 128..256 of sequence 0) takes the f32 path.
    // (Every kernel on such rows, whatever this CPU's speeds:
    // `fp8_rows_on_every_kernel_choice_match_f64_reference`.)
    let c = deepseek(16, vec![257, 63]);
    let cpu = CpuBackend::new();
    let mut rng = Lcg::new(5);
    let num_blocks = c.batch * c.max_blocks;
    let table: Vec<i32> = (0..num_blocks as i32).collect();
    let odd = 130;
    let (bytes, deq) = fp8_rows(num_blocks * c.block_size, odd, &mut rng);
    assert_ne!(deq[odd * DS_V32_DIM], 0.0);
    let q_v = rng.vec(c.batch * c.s_q * c.h_q * c.d_qk, -1.0, 1.0);
    let (q, qs) = upload_as(&cpu, &[c.batch, c.s_q, c.h_q, c.d_qk], &q_v, DType::BF16);
    let cache = cpu
        .upload(
            &HostTensor::from_bytes(
                [num_blocks, c.block_size, 1, DS_V32_ROW_BYTES],
                DType::U8,
                bytes,
            )
            .unwrap(),
        )
        .unwrap();
    let table_t = cpu
        .upload(&HostTensor::from_slice([c.batch, c.max_blocks], &table).unwrap())
        .unwrap();
    let lens_t = cpu
        .upload(&HostTensor::from_slice([c.batch], &c.seqlens).unwrap())
        .unwrap();
    let params = MlaDecodeParams {
        softmax_scale: MlaDecodeParams::DEEPSEEK_V3_SOFTMAX_SCALE,
        causal: c.causal,
        head_dim_v: c.d_v,
        kv_format: moemla_core::KvFormat::Fp8DsV32,
    };
    // This cache's chunks in the log: its address is ours alone while it lives, so the
    // entries appended after `start` with it are this call's.
    let addr = match crate::storage::storage(&cache, crate::NAME, "test", "kv_cache").unwrap() {
        crate::storage::CpuSlice::U8(b) => b.as_ptr() as usize,
        other => panic!("cache holds {}", other.dtype()),
    };
    let log = || TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let start = log().len();
    let out = ops::mla_decode(&cpu, &q, &cache, &table_t, &lens_t, &params).unwrap();
    let mut taken: Vec<_> = log()[start..]
        .iter()
        .filter(|e| e.0 == addr)
        .map(|&(_, slot, n, path)| (slot, n, path))
        .collect();
    taken.sort();
    // Sequence 0 (slots = positions) in chunks of 128, 128 and 1, sequence 1 (from slot
    // 12 * 64) in one of 63: AMX tiles where this process may use them, else the bf16
    // dot where it outpaces the FMA on this CPU, except
    // the chunk holding slot 130, whose rows are not bf16 values: f32 products.
    let f32_path = if crate::f32attn::pays(c.s_q * c.h_q) {
        Taken::F32Kernels
    } else {
        Taken::Gemm
    };
    let bf16_path = if crate::bf16dot::tiles_enabled() {
        Taken::Tiles
    } else if crate::bf16dot::outpaces_fma() {
        Taken::Bf16Dot
    } else {
        f32_path
    };
    let s1 = c.max_blocks * c.block_size;
    assert_eq!(
        taken,
        [
            (0, 128, bf16_path),
            (128, 128, f32_path),
            (256, 1, bf16_path),
            (s1, 63, bf16_path)
        ]
    );
    let (o, lse) = (download_f32(&cpu, &out.o), download_f32(&cpu, &out.lse));
    let (want_o, want_lse) = reference(&c, &qs, &deq, &table, params.softmax_scale);
    for (n, (&g, &w)) in o.iter().zip(&want_o).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-2 * (1.0 + w.abs()),
            "o[{n}]: {g} vs {w}"
        );
    }
    for (n, (&g, &w)) in lse.iter().zip(&want_lse).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "lse[{n}]: {g} vs {w}"
        );
    }
}

#[test]
fn every_kernel_choice_matches_f64_reference() {
    use super::attend::{Attention, Cache, Kernels, Scratch, Slots};
    use crate::ops::kv_rows::KvRows;
    use crate::storage::FloatSlice;
    use half::bf16;
    // One head, 5 query rows with odd limits past and short of a chunk (128) and of a
    // block (16, blocks in reverse order), bf16 values: the general GEMM, the f32 vector
    // kernels (AVX-512F or AVX2), the bf16 dot and AMX tiles (each where the CPU has it) against one
    // reference. Keys 96 wide (3 tile steps), values 40 (a partial column tile).
    let (d_qk, d_v, bs, len): (usize, usize, usize, usize) = (96, 40, 16, 301);
    let limits = [301, 300, 129, 127, 1];
    let mut rng = Lcg::new(21);
    let blocks = len.div_ceil(bs);
    let round =
        |v: Vec<f32>| -> Vec<f32> { v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect() };
    let cache32 = round(rng.vec(blocks * bs * d_qk, -1.0, 1.0));
    let cache16: Vec<bf16> = cache32.iter().map(|&x| bf16::from_f32(x)).collect();
    let q = round(rng.vec(limits.len() * d_qk, -1.0, 1.0));
    let table: Vec<i32> = (0..blocks as i32).rev().collect();
    let slot = |p: usize| table[p / bs] as usize * bs + p % bs;
    let scale = 0.3f32;
    let vector_f32 = crate::f32attn::isa() != crate::f32attn::Isa::Plain;
    let detected = (crate::bf16dot::native(), vector_f32);
    let tiles = crate::bf16dot::tiles_enabled();
    let choices = [
        (false, false, false, FloatSlice::F32(&cache32), 2e-5),
        (false, false, detected.1, FloatSlice::F32(&cache32), 2e-5),
        (false, false, false, FloatSlice::BF16(&cache16), 2e-5),
        (
            false,
            detected.0,
            detected.1,
            FloatSlice::BF16(&cache16),
            1e-2,
        ),
        (tiles, false, detected.1, FloatSlice::BF16(&cache16), 1e-2),
    ];
    for (tiles, bf16, f32, data, tol) in choices {
        let cache = Cache {
            data: KvRows::Dense(data),
            slots: Slots::Paged {
                table: &table,
                block_size: bs,
            },
            h_kv: 1,
            d_qk,
            d_v,
        };
        let kernels = Kernels { tiles, bf16, f32 };
        let mut scratch = Scratch::default();
        // Two ranges carried in one state, split off a chunk boundary.
        let mut attention = Attention::new(kernels, (&q, &limits), d_v, scale);
        let split = len / 3;
        for span in [0..split, split..len] {
            attention.over(&cache, 0, span, &mut scratch).unwrap();
        }
        let st = attention.finish();
        let row = |p: usize| &cache32[slot(p) * d_qk..][..d_qk];
        let label = format!("{kernels:?}");
        assert_matches_reference(&st, (&q, &limits), row, d_v, scale, (tol, &label));
    }
}

/// Asserts that `st`, the partial state of query rows `q` (`limits[r]` positions each)
/// over rows `row(p)` (`Dqk` wide, the first `d_v` columns the values), is the f64
/// softmax attention's: lse to 1e-5, outputs to `tol` (relative, plus absolute `tol`).
fn assert_matches_reference<'a>(
    st: &super::attend::Partial,
    (q, limits): (&[f32], &[usize]),
    row: impl Fn(usize) -> &'a [f32],
    d_v: usize,
    scale: f32,
    (tol, label): (f64, &str),
) {
    let d_qk = q.len() / limits.len();
    for (r, &lim) in limits.iter().enumerate() {
        let logits: Vec<f64> = (0..lim)
            .map(|p| {
                let dot: f64 = row(p)
                    .iter()
                    .zip(&q[r * d_qk..][..d_qk])
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                dot * scale as f64
            })
            .collect();
        let m = logits.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
        let lse = st.m[r] as f64 + (st.l[r] as f64).ln();
        assert!(
            (lse - (m + z.ln())).abs() <= 1e-5 * (1.0 + lse.abs()),
            "{label} lse {r}"
        );
        for c in 0..d_v {
            let want: f64 = (0..lim)
                .map(|p| (logits[p] - m).exp() / z * row(p)[c] as f64)
                .sum();
            let got = (st.acc[r * d_v + c] / st.l[r]) as f64;
            assert!(
                (got - want).abs() <= tol * (1.0 + want.abs()),
                "{label} o[{r},{c}]: {got} vs {want}"
            );
        }
    }
}

#[test]
fn fp8_rows_on_every_kernel_choice_match_f64_reference() {
    // 300 FP8 rows in 64-slot blocks (in reverse order), 5 bf16 query rows with limits
    // past and short of a chunk (128), and those limits 8 times over (40 rows: on the
    // bf16 dot, packed query rows). The rows' power-of-two scales make their values
    // bf16 values, except position 130's first tile (scale 0.3): with the bf16 dot
    // allowed, chunks 0 and 2 take it and chunk 1 the f32 products; without it, every
    // chunk the f32 kernels or the general GEMM, whichever is allowed. 26 times over: 130
    // rows, DeepSeek's 128 heads and a partial tile of rows (on tiles, in chunks of 256:
    // the second takes them, the first the f32 products).
    for repeats in [1, 8, 26] {
        fp8_rows_on_every_kernel_choice(&[300, 299, 129, 127, 1].repeat(repeats));
    }
}

/// [`fp8_rows_on_every_kernel_choice_match_f64_reference`] with these query rows' limits.
fn fp8_rows_on_every_kernel_choice(limits: &[usize]) {
    use super::attend::{Attention, Cache, Kernels, Scratch, Slots, Taken, TAKEN};
    use crate::ops::kv_rows::KvRows;
    use moemla_core::fp8::{DS_V32_DIM, DS_V32_LATENT};
    let (len, bs): (usize, usize) = (300, 64);
    let blocks = len.div_ceil(bs);
    let table: Vec<i32> = (0..blocks as i32).rev().collect();
    let slot = |p: usize| table[p / bs] as usize * bs + p % bs;
    let mut rng = Lcg::new(8);
    let (bytes, deq) = fp8_rows(blocks * bs, slot(130), &mut rng);
    let q: Vec<f32> = rng
        .vec(limits.len() * DS_V32_DIM, -1.0, 1.0)
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    let cache = Cache {
        data: KvRows::Fp8(&bytes),
        slots: Slots::Paged {
            table: &table,
            block_size: bs,
        },
        h_kv: 1,
        d_qk: DS_V32_DIM,
        d_v: DS_V32_LATENT,
    };
    let vector_f32 = crate::f32attn::isa() != crate::f32attn::Isa::Plain;
    let (dot, f32) = (crate::bf16dot::native(), vector_f32);
    let tiles = crate::bf16dot::tiles_enabled();
    let pays = crate::f32attn::pays(limits.len());
    let products = |f32| {
        if f32 && pays {
            Taken::F32Kernels
        } else {
            Taken::Gemm
        }
    };
    let log = || TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    for (tiles, bf16, f32, tol) in [
        (false, false, false, 2e-5),
        (false, false, f32, 2e-5),
        (false, dot, false, 1e-2),
        (false, dot, f32, 1e-2),
        (tiles, false, f32, 1e-2),
    ] {
        let kernels = Kernels { tiles, bf16, f32 };
        let start = log().len();
        let mut attention = Attention::new(kernels, (&q, limits), cache.d_v, 0.3);
        attention
            .over(&cache, 0, 0..len, &mut Scratch::default())
            .unwrap();
        let st = attention.finish();
        let taken: Vec<_> = log()[start..]
            .iter()
            .filter(|e| e.0 == bytes.as_ptr() as usize)
            .map(|&(_, at, n, path)| (at, n, path))
            .collect();
        let exact = match (tiles, bf16) {
            (true, _) => Taken::Tiles,
            (false, true) => Taken::Bf16Dot,
            (false, false) => products(f32),
        };
        // On tiles from 64 rows, chunks of 256 positions: the first holds position 130.
        let want = match tiles && limits.len() >= super::attend::TILE_CHUNK_MIN_ROWS {
            true => vec![(slot(0), 256, products(f32)), (slot(256), 44, exact)],
            false => vec![
                (slot(0), 128, exact),
                (slot(128), 128, products(f32)),
                (slot(256), 44, exact),
            ],
        };
        assert_eq!(taken, want, "{kernels:?}");
        let row = |p: usize| &deq[slot(p) * DS_V32_DIM..][..DS_V32_DIM];
        let label = format!("{kernels:?}");
        assert_matches_reference(&st, (&q, limits), row, DS_V32_LATENT, 0.3, (tol, &label));
    }
}

#[test]
fn row_runs_group_consecutive_rows_only() {
    use super::attend::row_runs;
    let runs = |slots: &[usize], h_kv, g| row_runs(slots, h_kv, g).collect::<Vec<_>>();
    assert_eq!(runs(&[], 1, 0), []);
    // Two heads: head 1's rows of consecutive slots are two apart, so runs of one.
    assert_eq!(runs(&[0, 1, 2], 2, 1), [(1, 1), (3, 1), (5, 1)]);
    // Blocks of 4 that follow each other merge; blocks in reverse order do not.
    let forward: Vec<usize> = (8..16).collect();
    assert_eq!(runs(&forward, 1, 0), [(8, 8)]);
    let reverse: Vec<usize> = (12..16).chain(8..12).collect();
    assert_eq!(runs(&reverse, 1, 0), [(12, 4), (8, 4)]);
    // A repeated slot starts a new run.
    assert_eq!(runs(&[5, 5, 6], 1, 0), [(5, 1), (5, 2)]);
}

#[test]
fn packed_query_rows_over_a_scattered_table_match_f64_reference() {
    // 64 query rows (packed in f32 on AVX-512F) over blocks of 4 in reverse order: runs of
    // 4 rows, which the attention copies into one block per chunk rather than meet in
    // place (a choice of speed: both give these values).
    let c = Case {
        s_q: 1,
        block_size: 4,
        max_blocks: 50,
        ..deepseek(64, vec![150, 33])
    };
    check(&c, DType::F32, 2e-5);
}
