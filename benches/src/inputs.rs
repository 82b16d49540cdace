//! Deterministic inputs for each case (a fixed-seed PRNG; no `rand` dependency).
//!
//! Large FP8 and cache tensors (DeepSeek-V3's 256 FP8 experts: 11.3 GB; a 1 GiB cache
//! pool) are not built on the host: they are generated chunk by chunk into a zeroed device
//! tensor ([`BenchTensor::Generated`]), so the host never holds a second copy. Dense bf16
//! expert weights are built on the host (the peers read them), on every thread.

use crate::case::{BenchCase, MLA_D_QK};
use half::bf16;
use moemla_core::{Backend, DType, DeviceTensor, Error, HostTensor, Result, Shape};

/// Bytes generated and uploaded at a time for a [`BenchTensor::Generated`] tensor.
const CHUNK_BYTES: usize = 64 << 20;

/// Tensors larger than this are generated on the device side in chunks.
const GENERATE_OVER: usize = 256 << 20;

/// What fills a generated tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Finite e4m3 codes (never the NaN codes 0x7F / 0xFF), uniformly spread.
    Fp8Codes,
    /// `fp8_ds_v32` rows of 656 bytes: finite e4m3 codes of magnitude <= 3.75, scales
    /// 2^-4, bf16 rope values in [-1, 1).
    Ds32Rows,
    /// BF16 values in [-1, 1).
    Bf16,
}

/// One input tensor of a case.
pub enum BenchTensor {
    /// Built on the host.
    Host(HostTensor),
    /// Generated in chunks of 64 MiB straight into the device tensor.
    Generated {
        /// Shape.
        shape: Shape,
        /// Dtype (U8 / F8E4M3 bytes, or BF16).
        dtype: DType,
        /// Contents.
        fill: Fill,
        /// Seed of the contents.
        seed: u64,
    },
}

impl BenchTensor {
    /// A tensor of `shape` and `dtype` filled by `fill`: on the host when small, else
    /// generated on upload.
    fn new(shape: impl Into<Shape>, dtype: DType, fill: Fill, seed: u64) -> Result<Self> {
        let shape = shape.into();
        if shape.byte_len(dtype)? > GENERATE_OVER {
            return Ok(BenchTensor::Generated {
                shape,
                dtype,
                fill,
                seed,
            });
        }
        let bytes = fill_bytes(fill, seed, 0, shape.byte_len(dtype)?);
        Ok(BenchTensor::Host(HostTensor::from_bytes(
            shape, dtype, bytes,
        )?))
    }

    /// The tensor on the host, `None` for a generated one.
    pub fn host(&self) -> Option<&HostTensor> {
        match self {
            BenchTensor::Host(t) => Some(t),
            BenchTensor::Generated { .. } => None,
        }
    }

    /// The tensor on `backend`: uploaded, or allocated zeroed and filled chunk by chunk
    /// (one whole upload where the backend cannot write into a range).
    pub fn upload(&self, backend: &dyn Backend) -> Result<DeviceTensor> {
        let (shape, dtype, fill, seed) = match self {
            BenchTensor::Host(t) => return backend.upload(t),
            BenchTensor::Generated {
                shape,
                dtype,
                fill,
                seed,
            } => (shape, *dtype, *fill, *seed),
        };
        let total = shape.byte_len(dtype)?;
        let elem = dtype.size_in_bytes();
        let dev = backend.alloc_zeroed(shape, dtype)?;
        // One chunk per host thread generated side by side, then uploaded at once.
        let batch = CHUNK_BYTES.saturating_mul(generator_threads());
        let mut at = 0;
        while at < total {
            let len = batch.min(total - at);
            let chunk =
                HostTensor::from_bytes([len / elem], dtype, fill_parallel(fill, seed, at, len))?;
            match backend.upload_into(&chunk, &dev, at / elem) {
                Ok(()) => at += len,
                Err(Error::NotProvided { .. }) => {
                    let all = fill_parallel(fill, seed, 0, total);
                    return backend.upload(&HostTensor::from_bytes(shape.clone(), dtype, all)?);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(dev)
    }
}

/// How many host threads generate a large tensor's chunks side by side: the hardware
/// threads the OS lets this process use, at most 16 (a batch holds two 64 MiB buffers per
/// thread while it is generated and uploaded).
pub fn generator_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(16))
}

/// `len` bytes of `fill` from byte `at` of the tensor, as [`fill_bytes`] gives them,
/// generated in place on every host thread (a DeepSeek-V3 expert stack is 22.5 GB of
/// bf16: one thread took 52 s on the H200 machine's host).
fn fill_parallel(fill: Fill, seed: u64, at: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // Whole 8-byte words per thread (and so whole elements of every dtype).
    let per = len.div_ceil(generator_threads()).next_multiple_of(8).max(8);
    std::thread::scope(|s| {
        for (k, part) in out.chunks_mut(per).enumerate() {
            s.spawn(move || fill_into(fill, seed, at + k * per, part));
        }
    });
    out
}

/// `len` bytes of `fill` starting at byte `at` of the tensor (`at` and `len` whole
/// elements; any split for [`Fill::Ds32Rows`], generated byte by byte): [`fill_into`] a
/// new buffer.
fn fill_bytes(fill: Fill, seed: u64, at: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill_into(fill, seed, at, &mut out);
    out
}

/// Writes bytes `at .. at + out.len()` of `fill` into `out`: the same bytes whatever the
/// chunking, as every 8-byte word's generator is seeded by its position.
fn fill_into(fill: Fill, seed: u64, at: usize, out: &mut [u8]) {
    let word = |i: usize| {
        let mut r = Rng(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.next_u64()
    };
    let byte = |i: usize| (word(i / 8) >> (8 * (i % 8))) as u8;
    let code = |b: u8| if b & 0x7F == 0x7F { b ^ 1 } else { b };
    match fill {
        Fill::Fp8Codes => {
            // A word at a time (byte i is byte i % 8 of word i / 8, as `byte` says).
            let mut done = 0;
            while done < out.len() {
                let i = at + done;
                let (from, bytes) = (i % 8, word(i / 8).to_le_bytes());
                let take = (8 - from).min(out.len() - done);
                for (o, &b) in out[done..done + take]
                    .iter_mut()
                    .zip(&bytes[from..from + take])
                {
                    *o = code(b);
                }
                done += take;
            }
        }
        Fill::Bf16 => {
            for (k, pair) in out.chunks_exact_mut(2).enumerate() {
                let v = ((word(at / 2 + k) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                pair.copy_from_slice(&bf16::from_f32(v).to_le_bytes());
            }
        }
        Fill::Ds32Rows => {
            for (k, o) in out.iter_mut().enumerate() {
                let i = at + k;
                let (r, c) = (i / 656, i % 656);
                *o = match c {
                    // Codes: sign, exponent field 1..=8, any mantissa (|v| <= 3.75).
                    0..=511 => {
                        let b = byte(i);
                        (b & 0x87) | ((1 + (b >> 3) % 8) << 3)
                    }
                    // Four f32 scales 2^-4 (0x3D800000, little-endian).
                    512..=527 => [0x00, 0x00, 0x80, 0x3D][(c - 512) % 4],
                    // 64 bf16 rope values: 0x3Exx / 0xBExx (|v| in [0.125, 0.5)).
                    _ if c % 2 == 0 => byte(r * 656 + c),
                    _ => 0x3E | (byte(i) & 0x80),
                };
            }
        }
    }
}

/// The named input tensors of one case (contract argument names) and facts the cost model
/// needs.
pub struct BenchInputs {
    /// `(argument name, tensor)` in the op's argument order.
    pub tensors: Vec<(&'static str, BenchTensor)>,
    /// Distinct experts selected by the routing (moe_experts only).
    pub used_experts: usize,
    /// Distinct cache rows the indices name (mla_sparse_decode only).
    pub distinct_rows: usize,
}

impl BenchInputs {
    /// The host tensor named `name` (panics for a generated one).
    pub fn get(&self, name: &str) -> &HostTensor {
        self.tensors
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, t)| t.host())
            .unwrap_or_else(|| panic!("bench input `{name}` missing or not on the host"))
    }

    /// Every tensor on the host (`None` when one is generated on upload: too large for a
    /// peer's case file).
    pub fn all_host(&self) -> Option<Vec<(&'static str, &HostTensor)>> {
        self.tensors
            .iter()
            .map(|(n, t)| t.host().map(|h| (*n, h)))
            .collect()
    }

    fn host(tensors: Vec<(&'static str, HostTensor)>) -> Self {
        BenchInputs {
            tensors: tensors
                .into_iter()
                .map(|(n, t)| (n, BenchTensor::Host(t)))
                .collect(),
            used_experts: 0,
            distinct_rows: 0,
        }
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
        } => Ok(BenchInputs::host(vec![
            (
                "logits",
                HostTensor::from_slice([tokens, experts], &rng.vec(tokens * experts, 4.0))?,
            ),
            (
                "bias",
                HostTensor::from_slice([experts], &rng.vec(experts, 0.1))?,
            ),
        ])),
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
            // bf16 weights straight from the position-seeded generator on every thread
            // (values in [-1, 1)); other dtypes from the sequential one, scaled by H^-1/2.
            let mut weight = |dims: [usize; 3], seed: u64| -> Result<HostTensor> {
                if dtype == DType::BF16 {
                    let bytes = Shape::from(dims).byte_len(dtype)?;
                    HostTensor::from_bytes(dims, dtype, fill_parallel(Fill::Bf16, seed, 0, bytes))
                } else {
                    HostTensor::from_f32_as(dims, &rng.vec(dims.iter().product(), w_scale), dtype)
                }
            };
            let w13 = weight([experts, 2 * inter, hidden], 13)?;
            let w2 = weight([experts, hidden, inter], 2)?;
            let tensors = vec![
                (
                    "x",
                    HostTensor::from_f32_as(
                        [tokens, hidden],
                        &rng.vec(tokens * hidden, 1.0),
                        dtype,
                    )?,
                ),
                ("w13", w13),
                ("w2", w2),
                ("topk_ids", HostTensor::from_slice([tokens, top_k], &ids)?),
                (
                    "topk_weights",
                    HostTensor::from_slice([tokens, top_k], &weights)?,
                ),
            ];
            Ok(BenchInputs {
                used_experts,
                ..BenchInputs::host(tensors)
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
            let table = shuffled(&mut rng, num_blocks);
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
            Ok(BenchInputs::host(tensors))
        }
        BenchCase::Fp8Experts {
            tokens,
            hidden,
            inter,
            experts,
            top_k,
            ue8m0,
            ..
        } => {
            let (ids, used_experts) = distinct_ids(&mut rng, tokens, experts, top_k);
            let weights: Vec<f32> = (0..tokens * top_k)
                .map(|_| 0.5 + 0.5 * rng.symmetric().abs())
                .collect();
            // |code value| <= 448: scales 1 / (448 sqrt(H)) keep |w| <= H^-1/2 (UE8M0:
            // that rounded up to a power of two, as V3.1's scales are: |w| <= 1.16 H^-1/2
            // at H 7168).
            let scale = 1.0 / (448.0 * (hidden as f32).sqrt());
            let scale = if ue8m0 {
                moemla_core::fp8::pow2_ceil(scale)
            } else {
                scale
            };
            let blocks = |n: usize| n.div_ceil(128);
            let scales = |dims: [usize; 3]| {
                HostTensor::from_slice(dims, &vec![scale; dims.iter().product()])
            };
            let x = HostTensor::from_f32_as(
                [tokens, hidden],
                &rng.vec(tokens * hidden, 1.0),
                DType::BF16,
            )?;
            let tensors = vec![
                ("x", BenchTensor::Host(x)),
                (
                    "w13",
                    BenchTensor::new(
                        [experts, 2 * inter, hidden],
                        DType::F8E4M3,
                        Fill::Fp8Codes,
                        13,
                    )?,
                ),
                (
                    "w2",
                    BenchTensor::new([experts, hidden, inter], DType::F8E4M3, Fill::Fp8Codes, 2)?,
                ),
                (
                    "topk_ids",
                    BenchTensor::Host(HostTensor::from_slice([tokens, top_k], &ids)?),
                ),
                (
                    "topk_weights",
                    BenchTensor::Host(HostTensor::from_slice([tokens, top_k], &weights)?),
                ),
                (
                    "w13_scale",
                    BenchTensor::Host(scales([experts, blocks(2 * inter), blocks(hidden)])?),
                ),
                (
                    "w2_scale",
                    BenchTensor::Host(scales([experts, blocks(hidden), blocks(inter)])?),
                ),
            ];
            Ok(BenchInputs {
                tensors,
                used_experts,
                distinct_rows: 0,
            })
        }
        BenchCase::MlaFp8 {
            batch,
            s_q,
            h_q,
            seqlen,
            block_size,
        } => {
            let blocks_per_seq = seqlen.div_ceil(block_size);
            let num_blocks = batch * blocks_per_seq;
            let table = shuffled(&mut rng, num_blocks);
            let [q, kv_cache] =
                fp8_query_and_cache(&mut rng, [batch, s_q, h_q], num_blocks, block_size, 7)?;
            Ok(BenchInputs {
                tensors: vec![
                    q,
                    kv_cache,
                    (
                        "block_table",
                        BenchTensor::Host(HostTensor::from_slice([batch, blocks_per_seq], &table)?),
                    ),
                    (
                        "cache_seqlens",
                        BenchTensor::Host(HostTensor::from_slice(
                            [batch],
                            &vec![seqlen as i32; batch],
                        )?),
                    ),
                ],
                used_experts: 0,
                distinct_rows: 0,
            })
        }
        BenchCase::Sparse {
            batch,
            s_q,
            h_q,
            topk,
            seqlen,
            block_size,
        } => {
            // Sequence b owns slots b * seqlen .. (b + 1) * seqlen; each query attends
            // `topk` distinct ones of its sequence (a partial Fisher-Yates shuffle).
            let num_blocks = (batch * seqlen).div_ceil(block_size);
            let mut indices = Vec::with_capacity(batch * s_q * topk);
            let mut pool: Vec<i32> = Vec::new();
            for b in 0..batch {
                for _ in 0..s_q {
                    pool.clear();
                    pool.extend((0..seqlen as i32).map(|p| (b * seqlen) as i32 + p));
                    for j in 0..topk.min(seqlen) {
                        let pick = j + rng.below(seqlen - j);
                        pool.swap(j, pick);
                    }
                    indices.extend_from_slice(&pool[..topk.min(seqlen)]);
                }
            }
            let mut seen = indices.clone();
            seen.sort_unstable();
            seen.dedup();
            let [q, kv_cache] =
                fp8_query_and_cache(&mut rng, [batch, s_q, h_q], num_blocks, block_size, 11)?;
            Ok(BenchInputs {
                tensors: vec![
                    q,
                    kv_cache,
                    (
                        "indices",
                        BenchTensor::Host(HostTensor::from_slice([batch, s_q, topk], &indices)?),
                    ),
                ],
                used_experts: 0,
                distinct_rows: seen.len(),
            })
        }
        BenchCase::Indexer {
            batch,
            s_q,
            heads,
            dim,
            seqlen,
            block_size,
            ..
        } => {
            let blocks_per_seq = seqlen.div_ceil(block_size);
            let num_blocks = batch * blocks_per_seq;
            let table = shuffled(&mut rng, num_blocks);
            let q = rng.vec(batch * s_q * heads * dim, 1.0);
            let w = rng.vec(batch * s_q * heads, 1.0);
            Ok(BenchInputs::host(vec![
                (
                    "q",
                    HostTensor::from_f32_as([batch, s_q, heads, dim], &q, DType::BF16)?,
                ),
                ("weights", HostTensor::from_slice([batch, s_q, heads], &w)?),
                (
                    "k_cache",
                    HostTensor::from_f32_as(
                        [num_blocks, block_size, dim],
                        &rng.vec(num_blocks * block_size * dim, 1.0),
                        DType::BF16,
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
            ]))
        }
        BenchCase::Step {
            fp8,
            batch,
            h_q,
            seqlen,
            block_size,
            pool_bytes,
        } => {
            // The pool: whole blocks of `pool_bytes`, every byte written before timing.
            let row = if fp8 { 656 } else { 2 * MLA_D_QK };
            let pool_blocks = pool_bytes / (block_size * row);
            let blocks_per_seq = seqlen.div_ceil(block_size);
            if pool_blocks < batch * blocks_per_seq {
                return Err(Error::Input {
                    op: moemla_core::Op::MlaCacheWrite,
                    arg: "kv_cache",
                    expected: format!(
                        "a pool of at least the {} blocks the sequences use",
                        batch * blocks_per_seq
                    ),
                    got: format!("{pool_blocks} blocks in {pool_bytes} bytes"),
                });
            }
            // Each sequence's blocks anywhere in the pool.
            let table: Vec<i32> =
                shuffled(&mut rng, pool_blocks)[..batch * blocks_per_seq].to_vec();
            // The new token of sequence b is its last: slot table[b][last block] * bs + off.
            let last = seqlen - 1;
            let slots: Vec<i32> = (0..batch)
                .map(|b| {
                    table[b * blocks_per_seq + last / block_size] * block_size as i32
                        + (last % block_size) as i32
                })
                .collect();
            let (dtype, fill, width) = if fp8 {
                (DType::U8, Fill::Ds32Rows, 656)
            } else {
                (DType::BF16, Fill::Bf16, MLA_D_QK)
            };
            let q = rng.vec(batch * h_q * MLA_D_QK, 1.0);
            let kv = rng.vec(batch * MLA_D_QK, 1.0);
            let pool = [pool_blocks, block_size, 1, width];
            Ok(BenchInputs {
                tensors: vec![
                    (
                        "q",
                        BenchTensor::Host(HostTensor::from_f32_as(
                            [batch, 1, h_q, MLA_D_QK],
                            &q,
                            DType::BF16,
                        )?),
                    ),
                    ("kv_cache", BenchTensor::new(pool, dtype, fill, 17)?),
                    (
                        "block_table",
                        BenchTensor::Host(HostTensor::from_slice([batch, blocks_per_seq], &table)?),
                    ),
                    (
                        "cache_seqlens",
                        BenchTensor::Host(HostTensor::from_slice(
                            [batch],
                            &vec![seqlen as i32; batch],
                        )?),
                    ),
                    (
                        "kv",
                        BenchTensor::Host(HostTensor::from_f32_as(
                            [batch, MLA_D_QK],
                            &kv,
                            DType::BF16,
                        )?),
                    ),
                    (
                        "slot_mapping",
                        BenchTensor::Host(HostTensor::from_slice([batch], &slots)?),
                    ),
                ],
                used_experts: 0,
                distinct_rows: 0,
            })
        }
    }
}

/// `0..n` as I32, shuffled.
/// The inputs the FP8-cache MLA cases share: `q` [b, s_q, h_q, Dqk] in BF16, drawn from
/// `rng`, and `kv_cache` [`num_blocks`, `block_size`, 1, 656] of whole `fp8_ds_v32` rows
/// filled from `seed` (on the device, see [`Fill::Ds32Rows`]).
fn fp8_query_and_cache(
    rng: &mut Rng,
    [batch, s_q, h_q]: [usize; 3],
    num_blocks: usize,
    block_size: usize,
    seed: u64,
) -> Result<[(&'static str, BenchTensor); 2]> {
    let q = rng.vec(batch * s_q * h_q * MLA_D_QK, 1.0);
    let q = HostTensor::from_f32_as([batch, s_q, h_q, MLA_D_QK], &q, DType::BF16)?;
    let cache = [num_blocks, block_size, 1, 656];
    Ok([
        ("q", BenchTensor::Host(q)),
        (
            "kv_cache",
            BenchTensor::new(cache, DType::U8, Fill::Ds32Rows, seed)?,
        ),
    ])
}

fn shuffled(rng: &mut Rng, n: usize) -> Vec<i32> {
    let mut table: Vec<i32> = (0..n as i32).collect();
    for i in (1..table.len()).rev() {
        table.swap(i, rng.below(i + 1));
    }
    table
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
    fn a_generated_tensor_uploads_the_bytes_one_thread_would_generate() {
        // More chunks than this machine has threads (several batches) and a partial last one.
        let threads = generator_threads();
        let total = (threads + 2) * CHUNK_BYTES + 4096;
        let tensor = BenchTensor::Generated {
            shape: Shape::from([total / 2]),
            dtype: DType::BF16,
            fill: Fill::Bf16,
            seed: 11,
        };
        let cpu = moemla::select(Some("cpu")).unwrap();
        let dev = tensor.upload(&*cpu).unwrap();
        let got = cpu.download(&dev).unwrap();
        assert!(got.as_bytes() == fill_bytes(Fill::Bf16, 11, 0, total).as_slice());
    }

    #[test]
    fn every_thread_generates_the_bytes_one_thread_would() {
        for fill in [Fill::Fp8Codes, Fill::Ds32Rows, Fill::Bf16] {
            // An odd length (a part per thread plus a short last one) from a word-unaligned
            // start, and lengths below one word per thread.
            for (at, len) in [(6, 3 * 656 * 7 + 6), (0, 10), (2, 2)] {
                assert_eq!(
                    fill_parallel(fill, 7, at, len),
                    fill_bytes(fill, 7, at, len),
                    "{fill:?} at {at} len {len}"
                );
            }
        }
    }

    #[test]
    fn generated_bytes_do_not_depend_on_the_chunking_and_are_finite_values() {
        for fill in [Fill::Fp8Codes, Fill::Ds32Rows, Fill::Bf16] {
            let whole = fill_bytes(fill, 5, 0, 4 * 656);
            let parts = [
                fill_bytes(fill, 5, 0, 656),
                fill_bytes(fill, 5, 656, 3 * 656),
            ]
            .concat();
            assert_eq!(whole, parts, "{fill:?}");
            // A word-unaligned start (codes) gives the same bytes too.
            assert_eq!(
                fill_bytes(fill, 5, 2, 10),
                whole[2..12].to_vec(),
                "{fill:?}"
            );
        }
        let codes = fill_bytes(Fill::Fp8Codes, 9, 0, 1 << 16);
        assert!(codes.iter().all(|&c| c & 0x7F != 0x7F), "no NaN code");
        // Every finite code magnitude occurs (uniformly spread).
        let mut seen = [false; 128];
        codes.iter().for_each(|&c| seen[(c & 0x7F) as usize] = true);
        assert_eq!(seen.iter().filter(|&&s| s).count(), 127);
        let rows = fill_bytes(Fill::Ds32Rows, 9, 0, 8 * 656);
        for row in rows.chunks_exact(656) {
            let mut kv = [0.0f32; 576];
            moemla_core::fp8::dequantize_ds_v32_row(row.try_into().unwrap(), &mut kv);
            assert!(kv.iter().all(|v| v.is_finite() && v.abs() <= 0.5), "{kv:?}");
            assert!(kv[..512].iter().any(|v| v.abs() > 0.1));
        }
    }

    #[test]
    fn ue8m0_experts_have_power_of_two_weight_scales_and_activation_scales() {
        for (w8a8, ue8m0) in [(false, false), (true, false), (false, true), (true, true)] {
            let case = BenchCase::Fp8Experts {
                w8a8,
                ue8m0,
                tokens: 4,
                hidden: 256,
                inter: 128,
                experts: 4,
                top_k: 2,
            };
            let inputs = generate(&case).unwrap();
            for name in ["w13_scale", "w2_scale"] {
                let scales = inputs.get(name).to_f32_vec().unwrap();
                for s in scales {
                    // 1 / (448 sqrt(256)) = 2^-12.8: rounded up to 2^-12 with UE8M0.
                    let want = if ue8m0 {
                        2f32.powi(-12)
                    } else {
                        1.0 / (448.0 * 16.0)
                    };
                    assert_eq!(s, want, "{case}: {name}");
                }
            }
            let params = case.experts_params();
            let scale = match ue8m0 {
                true => moemla_core::ActivationScale::Ue8m0,
                false => moemla_core::ActivationScale::F32,
            };
            if w8a8 {
                assert_eq!(params.activation_scale, scale, "{case}");
            }
            let label = if ue8m0 { " ue8m0 T=" } else { " T=" };
            assert!(case.to_string().contains(label), "{case}");
        }
    }

    #[test]
    fn fp8_cache_cases_share_query_and_cache_layout() {
        let dense = BenchCase::MlaFp8 {
            batch: 2,
            s_q: 1,
            h_q: 2,
            seqlen: 40,
            block_size: 16,
        };
        let sparse = BenchCase::Sparse {
            batch: 2,
            s_q: 1,
            h_q: 2,
            topk: 4,
            seqlen: 40,
            block_size: 16,
        };
        // (case, names, cache blocks, cache seed)
        let expected: [(BenchCase, &[&str], usize, u64); 2] = [
            (
                dense,
                &["q", "kv_cache", "block_table", "cache_seqlens"],
                6,
                7,
            ),
            (sparse, &["q", "kv_cache", "indices"], 5, 11),
        ];
        for (case, names, blocks, seed) in expected {
            let inputs = generate(&case).unwrap();
            let got: Vec<&str> = inputs.tensors.iter().map(|(n, _)| *n).collect();
            assert_eq!(got, names, "{case:?}");
            let q = inputs.get("q");
            assert_eq!(q.dtype(), DType::BF16);
            assert_eq!(q.shape(), &Shape::from([2, 1, 2, MLA_D_QK]));
            let cache = inputs.get("kv_cache");
            assert_eq!(cache.dtype(), DType::U8);
            assert_eq!(cache.shape(), &Shape::from([blocks, 16, 1, 656]));
            let bytes = fill_bytes(Fill::Ds32Rows, seed, 0, blocks * 16 * 656);
            assert_eq!(cache.as_bytes(), &bytes[..], "{case:?}");
        }
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
