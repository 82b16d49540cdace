//! BF16 sparse attention over the `fp8_ds_v32` cache on a CPU with the native bf16 dot:
//! the listed rows are dequantized straight to bf16 ([`fp8_bf16::rows`]: the same values
//! as the f32 dequantization), [`SUB`] at a time, into a dense buffer, and one
//! [`Attention`] reads the buffers piece after piece, its query rows prepared once and its
//! softmax state carried over. The buffer is read as any BF16 cache is: in place (K rows
//! with no copy) where it takes the dot, else upcast per chunk, which still beat
//! dequantizing the scattered FP8 rows per chunk on an Intel Xeon whose dot is slower than
//! its FMA (165 vs 188 ms, `moemla bench --backend cpu --op mla_sparse_decode`, 64 heads).
//! A row whose scale is not a power of two in [2^-117, 2^119] sends its piece to the
//! general path over the FP8 rows.
//!
//! Each piece's products start after the next piece's rows were asked into L2, all at
//! once ([`fp8_bf16::fetch_into_l2`]): on the AMX Xeon, three alternated runs, 64 heads
//! 68-70 -> 60-63 ms, 128 heads 105-110 -> 100-103 ms. Spread over the tile steps instead
//! (three lines a step), the prefetches halved the gather but slowed the products by as
//! much.

use super::super::kv_rows::{fp8_bf16, KvRows};
use super::super::mla_decode::attend::{Attention, Cache, Kernels, Partial, Scratch, Slots};
use crate::aligned::Aligned;
use crate::storage::FloatSlice;
use half::bf16;
use moemla_core::fp8::{DS_V32_DIM, DS_V32_LATENT};
use moemla_core::Result;
use std::ops::Range;

/// Listed rows dequantized per piece (2 of attend's chunks, 1 on AMX tiles from
/// [`TILE_CHUNK_MIN_ROWS`](super::super::mla_decode::attend::TILE_CHUNK_MIN_ROWS) query
/// rows; 288 KiB of bf16, in L2).
pub(super) const SUB: usize = 256;

/// Attends the query rows `q` ([Hq, 576] f32, bf16 values) over list positions `span`
/// (non-empty) of `slots` in the FP8 cache `bytes`; `ident` is `0..SUB`.
pub(super) fn attend(
    q: &[f32],
    (bytes, slots, ident): (&[u8], &[u32], &[u32]),
    span: Range<usize>,
    scale: f32,
    (scratch, buf): (&mut Scratch, &mut Aligned<bf16>),
) -> Result<Partial> {
    let h_q = q.len() / DS_V32_DIM;
    // Every row sees every listed position: the pieces' positions (0..n of the buffer, or
    // list positions) all lie below the list's length.
    let limits = vec![slots.len(); h_q];
    let kernels = Kernels::detected();
    let mut attention = Attention::new(kernels, (q, &limits), DS_V32_LATENT, scale);
    let mut p0 = span.start;
    while p0 < span.end {
        let p1 = (p0 + SUB).min(span.end);
        let n = p1 - p0;
        if fp8_bf16::rows(bytes, |j| slots.get(p0 + j).map(|&s| s as usize), n, buf) {
            let next = (p1 + SUB).min(span.end) - p1;
            fp8_bf16::fetch_into_l2(bytes, |j| slots.get(p1 + j).map(|&s| s as usize), next);
            let cache = Cache {
                data: KvRows::Dense(FloatSlice::BF16(buf)),
                slots: Slots::Listed(&ident[..n]),
                h_kv: 1,
                d_qk: DS_V32_DIM,
                d_v: DS_V32_LATENT,
            };
            attention.over(&cache, 0, 0..n, scratch)?;
        } else {
            let cache = Cache {
                data: KvRows::Fp8(bytes),
                slots: Slots::Listed(slots),
                h_kv: 1,
                d_qk: DS_V32_DIM,
                d_v: DS_V32_LATENT,
            };
            attention.over(&cache, 0, p0..p1, scratch)?;
        }
        p0 = p1;
    }
    Ok(attention.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::mla_decode::attend::TAKEN;
    use moemla_core::fp8::{dequantize_ds_v32_row, quantize_ds_v32_row, DS_V32_ROW_BYTES};

    #[test]
    fn pieces_carried_in_one_state_match_an_f64_reference() {
        if !crate::bf16dot::native() {
            return;
        }
        // 40 quantized rows (power-of-two scales); row 7 gets a 0.3 scale, so the piece
        // holding it takes the general path. 600 listed entries (duplicates): 3 pieces.
        let mut seed = 5u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 3.0 - 1.5
        };
        let rows = 40;
        let mut bytes = vec![0u8; rows * DS_V32_ROW_BYTES];
        let mut values = Vec::new();
        for (r, row) in bytes.chunks_exact_mut(DS_V32_ROW_BYTES).enumerate() {
            let kv: [f32; DS_V32_DIM] = std::array::from_fn(|_| next());
            let row: &mut [u8; DS_V32_ROW_BYTES] = row.try_into().unwrap();
            quantize_ds_v32_row(&kv, row);
            if r == 7 {
                row[DS_V32_LATENT + 4..DS_V32_LATENT + 8].copy_from_slice(&0.3f32.to_le_bytes());
            }
            let mut v = [0.0f32; DS_V32_DIM];
            dequantize_ds_v32_row(row, &mut v);
            values.push(v);
        }
        let listed: Vec<u32> = (0..600u32)
            .map(|i| (i * 13 + i / 7) % rows as u32)
            .collect();
        // The same list with row 7 first listed at position 300: the first piece of 0..600
        // on the dense bf16 buffer, the second on the general path.
        let late: Vec<u32> = (listed.iter().enumerate())
            .map(|(i, &s)| if s == 7 && i < 300 { 8 } else { s })
            .collect();
        let ident: Vec<u32> = (0..SUB as u32).collect();
        let h_q = 3;
        let q: Vec<f32> = (0..h_q * DS_V32_DIM)
            .map(|_| bf16::from_f32(next()).to_f32())
            .collect();
        let scale = 0.05f32;
        let cases = [
            (&listed, 0..600),
            (&listed, 100..357),
            (&listed, 256..512),
            (&late, 0..600),
        ];
        let taken = || {
            let log = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
            let mine = log.iter().filter(|e| e.0 == bytes.as_ptr() as usize);
            mine.map(|&(_, slot, n, _)| (slot, n)).collect::<Vec<_>>()
        };
        for (slots, span) in cases {
            let before = taken().len();
            let got = attend(
                &q,
                (&bytes, slots, &ident),
                span.clone(),
                scale,
                (&mut Scratch::default(), &mut Aligned::default()),
            )
            .unwrap();
            if std::ptr::eq(slots, &late) {
                // Dense first (nothing recorded), then the general path's chunks over the
                // FP8 rows: positions 256..384, 384..512 and 512..600.
                let want = [(late[256] as usize, 128), (late[384] as usize, 128)];
                let want = [&want[..], &[(late[512] as usize, 88)]].concat();
                assert_eq!(taken()[before..], want[..]);
            }
            for h in 0..h_q {
                let qh = &q[h * DS_V32_DIM..(h + 1) * DS_V32_DIM];
                let logits: Vec<f64> = slots[span.clone()]
                    .iter()
                    .map(|&s| {
                        let k = &values[s as usize];
                        scale as f64
                            * qh.iter()
                                .zip(k)
                                .map(|(&a, &b)| a as f64 * b as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let l: f64 = logits.iter().map(|&x| (x - m).exp()).sum();
                let lse = got.m[h] as f64 + (got.l[h] as f64).ln();
                assert!(
                    (lse - (m + l.ln())).abs() <= 1e-5 * (1.0 + lse.abs()),
                    "{span:?} lse {h}"
                );
                let acc = &got.acc[h * DS_V32_LATENT..(h + 1) * DS_V32_LATENT];
                for (d, &a) in acc.iter().enumerate() {
                    let want: f64 = slots[span.clone()]
                        .iter()
                        .zip(&logits)
                        .map(|(&s, &x)| (x - m).exp() / l * values[s as usize][d] as f64)
                        .sum();
                    let o = a as f64 / got.l[h] as f64;
                    assert!(
                        (o - want).abs() <= 8e-3,
                        "{span:?} o[{h}][{d}]: {o} vs {want}"
                    );
                }
            }
        }
    }
}
