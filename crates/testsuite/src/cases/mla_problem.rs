//! Generated `mla_decode` problems: a paged cache with blocks in random physical order,
//! unused block-table entries holding FlashMLA's 2147480000 and NaN in every cache slot
//! no sequence position uses.

use crate::harness::Ctx;
use crate::reference::{self, MlaDims, MlaRef};
use crate::rng::Rng;
use moemla_core::{ops, DType, HostTensor, MlaDecodeOutput, MlaDecodeParams, Result};

/// The value FlashMLA's tests put in unused block-table entries.
pub const UNUSED_ENTRY: i32 = 2_147_480_000;

/// One `mla_decode` problem, host side (f32 before rounding to the run dtype).
#[derive(Clone, Debug)]
pub struct MlaProblem {
    /// Sizes.
    pub dims: MlaDims,
    /// q [B, Sq, Hq, Dqk].
    pub q: Vec<f32>,
    /// kv_cache [num_blocks, block_size, Hkv, Dqk]; NaN in unused slots.
    pub kv: Vec<f32>,
    /// block_table [B, max_blocks].
    pub table: Vec<i32>,
    /// cache_seqlens `[B]`.
    pub seqlens: Vec<i32>,
    /// Parameters.
    pub params: MlaDecodeParams,
}

/// The shape of a problem to generate.
#[derive(Clone, Debug)]
pub struct MlaSpec {
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
    /// Tokens per block.
    pub block_size: usize,
    /// One length per sequence (B = its length).
    pub seqlens: Vec<i32>,
    /// Cache blocks no sequence uses.
    pub spare_blocks: usize,
    /// Causal mask.
    pub causal: bool,
    /// Softmax scale.
    pub softmax_scale: f64,
}

impl MlaProblem {
    /// A random problem; physical blocks are handed out in a random order.
    pub fn random(spec: &MlaSpec, rng: &mut Rng) -> Self {
        let bs = spec.block_size;
        let used: Vec<usize> = spec
            .seqlens
            .iter()
            .map(|&l| (l as usize).div_ceil(bs))
            .collect();
        // One spare column so every row has unused entries.
        let max_blocks = used.iter().copied().max().unwrap_or(0) + 1;
        let num_blocks = used.iter().sum::<usize>() + spec.spare_blocks.max(1);
        let dims = MlaDims {
            batch: spec.seqlens.len(),
            s_q: spec.s_q,
            h_q: spec.h_q,
            h_kv: spec.h_kv,
            d_qk: spec.d_qk,
            d_v: spec.d_v,
            num_blocks,
            block_size: bs,
            max_blocks,
        };
        let physical = rng.permutation(num_blocks);
        let mut next = physical.into_iter();
        let mut table = vec![UNUSED_ENTRY; dims.batch * max_blocks];
        for (b, &n) in used.iter().enumerate() {
            for j in 0..n {
                table[b * max_blocks + j] = next.next().expect("enough blocks") as i32;
            }
        }
        let row = spec.h_kv * spec.d_qk;
        let mut kv = vec![f32::NAN; num_blocks * bs * row];
        for (b, &len) in spec.seqlens.iter().enumerate() {
            for p in 0..len as usize {
                let slot = table[b * max_blocks + p / bs] as usize * bs + p % bs;
                for v in &mut kv[slot * row..(slot + 1) * row] {
                    *v = rng.uniform(-1.0, 1.0) as f32;
                }
            }
        }
        let q = rng.vec(dims.batch * spec.s_q * spec.h_q * spec.d_qk, -1.0, 1.0);
        MlaProblem {
            dims,
            q,
            kv,
            table,
            seqlens: spec.seqlens.clone(),
            params: MlaDecodeParams {
                softmax_scale: spec.softmax_scale,
                causal: spec.causal,
                head_dim_v: spec.d_v,
                kv_format: Default::default(),
            },
        }
    }

    /// The same problem with the physical blocks moved by a random permutation and the
    /// used block-table entries renamed to match.
    pub fn permuted(&self, rng: &mut Rng) -> Self {
        let d = self.dims;
        let perm = rng.permutation(d.num_blocks);
        let block = d.block_size * d.h_kv * d.d_qk;
        let mut kv = vec![0.0; self.kv.len()];
        for (old, &new) in perm.iter().enumerate() {
            kv[new * block..(new + 1) * block]
                .copy_from_slice(&self.kv[old * block..(old + 1) * block]);
        }
        let table = self
            .table
            .iter()
            .map(|&e| {
                if e == UNUSED_ENTRY {
                    e
                } else {
                    perm[e as usize] as i32
                }
            })
            .collect();
        MlaProblem {
            kv,
            table,
            ..self.clone()
        }
    }

    /// Uploads the problem in `dtype` and calls `mla_decode` on the backend.
    pub fn call(&self, ctx: &Ctx<'_>, dtype: DType) -> Result<MlaDecodeOutput> {
        let d = self.dims;
        let (q, _) = ctx.upload_as(&[d.batch, d.s_q, d.h_q, d.d_qk], &self.q, dtype);
        let kv_dims = [d.num_blocks, d.block_size, d.h_kv, d.d_qk];
        let (kv, _) = ctx.upload_as(&kv_dims, &self.kv, dtype);
        let table = ctx.upload_i32(&[d.batch, d.max_blocks], &self.table);
        let seqlens = ctx.upload_i32(&[d.batch], &self.seqlens);
        ops::mla_decode(ctx.backend, &q, &kv, &table, &seqlens, &self.params)
    }

    /// Runs the problem on the backend in `dtype`: returns (o, lse) as f32 and the
    /// reference on the rounded inputs.
    pub fn run(&self, ctx: &Ctx<'_>, dtype: DType) -> (Vec<f32>, Vec<f32>, MlaRef) {
        let d = self.dims;
        let out = self
            .call(ctx, dtype)
            .unwrap_or_else(|e| panic!("mla_decode {dtype} {d:?}: {e}"));
        let round = |v: &[f32]| -> Vec<f64> {
            let host = HostTensor::from_f32_as([v.len()], v, dtype).expect("host tensor");
            host.to_f32_vec()
                .expect("floats")
                .into_iter()
                .map(f64::from)
                .collect()
        };
        let exp = reference::mla_decode(
            &round(&self.q),
            &round(&self.kv),
            &self.table,
            &self.seqlens,
            d,
            self.params.softmax_scale,
            self.params.causal,
        );
        (ctx.download_f32(&out.o), ctx.download_f32(&out.lse), exp)
    }
}
