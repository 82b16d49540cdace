//! An inference engine's decode loop on moemla, everything resident on the device: a
//! DeepSeek-V3-style MoE block (routing with a selection bias, routed experts and the shared
//! expert fused into one `moe_experts` call) after an MLA decode that appends one token per
//! sequence per step to a paged latent cache (`mla_cache_write`, in place), in BF16.
//!
//! Warm-up uploads the weights and the per-step inputs (in a real engine: what the layers
//! before this block produce on the device) and allocates every buffer a step uses. A step
//! then only enqueues device work: device-to-device copies of its inputs into the step
//! buffers, the cache write, the decode, the routing, the experts, each through the ops'
//! `_into` forms. It reads back exactly two things on purpose, with `download_into` into host
//! tensors made at warm-up: the routed expert ids and the block's output rows (what an
//! engine hands to its LM head). `Backend::traffic` shows the result: after warm-up, a step
//! allocates nothing and uploads nothing.
//!
//! ```text
//! cargo run -p moemla --example engine_step -- [cpu|opencl|...]   (or MOEMLA_BACKEND)
//! ```
//!
//! The block output feeds nothing back (moemla has no dense projections, so the next step's
//! inputs come from the warm-up tables); the cache is the state carried from step to step.

use moemla::core::ops::{self, ExpertsInputs, RouteInputs};
use moemla::core::{
    Backend, CacheWriteParams, DType, DeviceTensor, ExpertWeight, ExpertsParams, HostTensor,
    MlaDecodeParams, Result, RouteParams, Traffic,
};
use std::sync::Arc;

/// Sequences in the batch (one token each per step).
pub const B: usize = 4;
/// Query heads of the decode.
pub const HQ: usize = 4;
/// Latent + rope width of a cache row (DeepSeek: 512 + 64; small here).
pub const DQK: usize = 24;
/// Value width (the latent part of a row).
pub const DV: usize = 16;
/// Hidden size of the MoE block: the decode's output heads side by side.
pub const H: usize = HQ * DV;
/// Routed experts, their intermediate size, experts per token.
pub const E: usize = 16;
/// Intermediate size of every expert (routed and shared).
pub const I: usize = 32;
/// Experts per token.
pub const TOP_K: usize = 4;
/// Cache block size and blocks per sequence.
pub const BLOCK: usize = 16;
/// Blocks a sequence may use.
pub const BLOCKS_PER_SEQ: usize = 3;
/// Decode steps the example runs.
pub const STEPS: usize = 16;
/// Physical cache blocks (one spare, never used).
pub const NUM_BLOCKS: usize = B * BLOCKS_PER_SEQ + 1;
/// Steps after which sequence 3 has finished (its later slots are -1, its length stays).
pub const SEQ3_STOPS_AFTER: usize = 10;

/// Tokens of sequence `b` before the first step.
pub fn prefill_len(b: usize) -> usize {
    3 + 5 * b
}

/// Whether sequence `b` appends a token at step `s`.
pub fn appends(b: usize, s: usize) -> bool {
    b != 3 || s < SEQ3_STOPS_AFTER
}

/// The physical block holding block `j` of sequence `b` (a fixed permutation, so logical
/// and physical order differ).
pub fn block_of(b: usize, j: usize) -> usize {
    (b * BLOCKS_PER_SEQ + j) * 5 % (NUM_BLOCKS - 1)
}

/// The flat cache slot of token `p` of sequence `b`.
pub fn slot_of(b: usize, p: usize) -> usize {
    block_of(b, p / BLOCK) * BLOCK + p % BLOCK
}

/// Length of sequence `b` after step `s`'s append.
pub fn len_after(b: usize, s: usize) -> usize {
    prefill_len(b) + (0..=s).filter(|&t| appends(b, t)).count()
}

/// Deterministic values in [lo, hi) (xorshift; `seed` picks the stream).
pub fn values(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + (hi - lo) * ((x >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// Everything the block's inputs are made of, on the host: weights and the per-step tables.
pub struct Model {
    /// Routed experts' gate/up [E, 2I, H] and down [E, H, I], BF16.
    pub w13: HostTensor,
    /// Routed experts' down projections.
    pub w2: HostTensor,
    /// The shared expert's gate/up [1, 2I, H] and down [1, H, I], BF16.
    pub shared_w13: HostTensor,
    /// The shared expert's down projection.
    pub shared_w2: HostTensor,
    /// Selection bias [E], F32 (DeepSeek-V3's `e_score_correction_bias`).
    pub bias: HostTensor,
    /// Prefill rows [sum of prefill lengths, DQK] and their slots.
    pub prefill_kv: HostTensor,
    /// Slots of the prefill rows.
    pub prefill_slots: HostTensor,
    /// Per step: queries [STEPS * B, 1, HQ, DQK], new cache rows [STEPS * B, DQK], slots
    /// [STEPS * B], lengths [STEPS * B], router logits [STEPS * B, E].
    pub q: HostTensor,
    /// New cache rows per step.
    pub kv: HostTensor,
    /// Slots per step (-1: the sequence appends nothing).
    pub slots: HostTensor,
    /// Lengths per step, after the step's append.
    pub lens: HostTensor,
    /// Router logits per step.
    pub logits: HostTensor,
    /// Block table [B, BLOCKS_PER_SEQ].
    pub block_table: HostTensor,
}

impl Model {
    /// The example's model: deterministic data of the shapes above.
    pub fn new() -> Result<Model> {
        let bf16 = |dims: &[usize], seed, scale: f32| {
            let n = dims.iter().product();
            HostTensor::from_f32_as(dims, &values(seed, n, -scale, scale), DType::BF16)
        };
        let prefill: Vec<(usize, usize)> = (0..B)
            .flat_map(|b| (0..prefill_len(b)).map(move |p| (b, p)))
            .collect();
        let step_slot = |s: usize, b: usize| match appends(b, s) {
            true => slot_of(b, len_after(b, s) - 1) as i32,
            false => -1,
        };
        let slots: Vec<i32> = (0..STEPS * B).map(|r| step_slot(r / B, r % B)).collect();
        let lens: Vec<i32> = (0..STEPS * B)
            .map(|r| len_after(r % B, r / B) as i32)
            .collect();
        let prefill_slots: Vec<i32> = prefill.iter().map(|&(b, p)| slot_of(b, p) as i32).collect();
        let table: Vec<i32> = (0..B * BLOCKS_PER_SEQ)
            .map(|r| block_of(r / BLOCKS_PER_SEQ, r % BLOCKS_PER_SEQ) as i32)
            .collect();
        Ok(Model {
            w13: bf16(&[E, 2 * I, H], 1, 0.2)?,
            w2: bf16(&[E, H, I], 2, 0.2)?,
            shared_w13: bf16(&[1, 2 * I, H], 3, 0.2)?,
            shared_w2: bf16(&[1, H, I], 4, 0.2)?,
            bias: HostTensor::from_slice([E], &values(5, E, -0.1, 0.1))?,
            prefill_kv: bf16(&[prefill.len(), DQK], 6, 1.0)?,
            prefill_slots: HostTensor::from_slice([prefill.len()], &prefill_slots)?,
            q: bf16(&[STEPS * B, 1, HQ, DQK], 7, 1.0)?,
            kv: bf16(&[STEPS * B, DQK], 8, 1.0)?,
            slots: HostTensor::from_slice([STEPS * B], &slots)?,
            lens: HostTensor::from_slice([STEPS * B], &lens)?,
            logits: bf16(&[STEPS * B, E], 9, 2.0)?,
            block_table: HostTensor::from_slice([B, BLOCKS_PER_SEQ], &table)?,
        })
    }
}

/// DeepSeek-V3's routing at this size: 4 groups keep 2, sigmoid, top-2-sum group score,
/// renormalised, scaled by 2.5.
pub fn route_params() -> RouteParams {
    RouteParams {
        top_k: TOP_K,
        n_group: 4,
        topk_group: 2,
        ..RouteParams::deepseek_v3()
    }
}

/// The decode's parameters (one query token per sequence, dense BF16 cache).
pub fn decode_params() -> MlaDecodeParams {
    MlaDecodeParams {
        softmax_scale: 1.0 / (DQK as f64).sqrt(),
        causal: false,
        head_dim_v: DV,
        kv_format: Default::default(),
    }
}

/// The block with every tensor resident: weights, tables, the paged cache, the step's input
/// and output buffers, and the host tensors the step reads into.
pub struct Engine {
    backend: Arc<dyn Backend>,
    w13: DeviceTensor,
    w2: DeviceTensor,
    shared_w13: DeviceTensor,
    shared_w2: DeviceTensor,
    bias: DeviceTensor,
    block_table: DeviceTensor,
    cache: DeviceTensor,
    // Per-step tables.
    q_all: DeviceTensor,
    kv_all: DeviceTensor,
    slots_all: DeviceTensor,
    lens_all: DeviceTensor,
    logits_all: DeviceTensor,
    // The step's inputs, outputs and scratch, allocated once.
    q: DeviceTensor,
    kv: DeviceTensor,
    slots: DeviceTensor,
    lens: DeviceTensor,
    logits: DeviceTensor,
    o: DeviceTensor,
    lse: DeviceTensor,
    x: DeviceTensor,
    ids: DeviceTensor,
    weights: DeviceTensor,
    y: DeviceTensor,
    /// The routed expert ids of the last step, [B, TOP_K].
    pub host_ids: HostTensor,
    /// The block's output rows of the last step, [B, H] BF16.
    pub host_y: HostTensor,
}

impl Engine {
    /// Uploads `model`, allocates every buffer and writes the prefill rows into the cache.
    pub fn warm_up(backend: Arc<dyn Backend>, model: &Model) -> Result<Engine> {
        let be = &*backend;
        let zeros = |dims: &[usize], dtype| be.alloc_zeroed(&dims.into(), dtype);
        let mut cache = zeros(&[NUM_BLOCKS, BLOCK, 1, DQK], DType::BF16)?;
        let prefill_kv = be.upload(&model.prefill_kv)?;
        let prefill_slots = be.upload(&model.prefill_slots)?;
        ops::mla_cache_write(
            be,
            &prefill_kv,
            &prefill_slots,
            &mut cache,
            &CacheWriteParams::default(),
        )?;
        let o = zeros(&[B, 1, HQ, DV], DType::BF16)?;
        // Expert weights laid out once for the backend's kernels (the uploads are dropped).
        let weights = |w: &HostTensor, kind| ops::pack_expert_weights(be, &be.upload(w)?, kind);
        Ok(Engine {
            w13: weights(&model.w13, ExpertWeight::GateUp)?,
            w2: weights(&model.w2, ExpertWeight::Down)?,
            shared_w13: weights(&model.shared_w13, ExpertWeight::GateUp)?,
            shared_w2: weights(&model.shared_w2, ExpertWeight::Down)?,
            bias: be.upload(&model.bias)?,
            block_table: be.upload(&model.block_table)?,
            cache,
            q_all: be.upload(&model.q)?,
            kv_all: be.upload(&model.kv)?,
            slots_all: be.upload(&model.slots)?,
            lens_all: be.upload(&model.lens)?,
            logits_all: be.upload(&model.logits)?,
            q: zeros(&[B, 1, HQ, DQK], DType::BF16)?,
            kv: zeros(&[B, DQK], DType::BF16)?,
            slots: zeros(&[B], DType::I32)?,
            lens: zeros(&[B], DType::I32)?,
            logits: zeros(&[B, E], DType::BF16)?,
            // The decode's output, seen as the block's input: the same buffer.
            x: o.reshape([B, H])?,
            o,
            lse: zeros(&[B, HQ, 1], DType::F32)?,
            ids: zeros(&[B, TOP_K], DType::I32)?,
            weights: zeros(&[B, TOP_K], DType::F32)?,
            y: zeros(&[B, H], DType::BF16)?,
            host_ids: HostTensor::zeros([B, TOP_K], DType::I32)?,
            host_y: HostTensor::zeros([B, H], DType::BF16)?,
            backend,
        })
    }

    /// Decode step `s`: append each sequence's new row to the cache, attend, route, run the
    /// experts (shared expert fused), and read the ids and output rows into
    /// [`Engine::host_ids`] and [`Engine::host_y`].
    pub fn step(&mut self, s: usize) -> Result<()> {
        let be = &*self.backend;
        // The step's inputs: device-to-device copies out of the resident tables.
        let rows = s * B;
        be.copy_into(&self.q_all, rows * HQ * DQK, &self.q, 0, B * HQ * DQK)?;
        be.copy_into(&self.kv_all, rows * DQK, &self.kv, 0, B * DQK)?;
        be.copy_into(&self.slots_all, rows, &self.slots, 0, B)?;
        be.copy_into(&self.lens_all, rows, &self.lens, 0, B)?;
        be.copy_into(&self.logits_all, rows * E, &self.logits, 0, B * E)?;

        let params = CacheWriteParams::default();
        ops::mla_cache_write(be, &self.kv, &self.slots, &mut self.cache, &params)?;
        ops::mla_decode_into(
            be,
            &self.q,
            &self.cache,
            &self.block_table,
            &self.lens,
            &decode_params(),
            &self.o,
            &self.lse,
        )?;
        let route = RouteInputs::new(&self.logits).with_bias(&self.bias);
        ops::moe_route_into(be, route, &route_params(), &self.ids, &self.weights)?;
        let experts = ExpertsInputs::new(&self.x, &self.w13, &self.w2, &self.ids, &self.weights)
            .with_shared(&self.shared_w13, &self.shared_w2);
        ops::moe_experts_into(be, experts, &ExpertsParams::default(), &self.y)?;

        // The two reads the engine makes on purpose (each waits for the queue; the first
        // also reports any index error the step's ops met).
        be.download_into(&self.ids, 0, &mut self.host_ids)?;
        be.download_into(&self.y, 0, &mut self.host_y)
    }
}

/// The same step computed the way an engine without writable device memory must: a host
/// mirror of the whole cache, updated on the host and uploaded every step, fresh uploads of
/// every input and the allocating ops. An independent check of the resident loop (the cache
/// rows are placed by the host here, not by `mla_cache_write`).
pub struct Mirror {
    cache: Vec<u8>,
}

impl Mirror {
    /// The mirror after the prefill rows.
    pub fn new(model: &Model) -> Result<Mirror> {
        let mut mirror = Mirror {
            cache: vec![0; NUM_BLOCKS * BLOCK * DQK * 2],
        };
        mirror.write(&model.prefill_kv, &model.prefill_slots.to_i32_vec()?);
        Ok(mirror)
    }

    /// Writes the rows of `kv` (BF16 [N, DQK]) at `slots` (-1: skipped).
    fn write(&mut self, kv: &HostTensor, slots: &[i32]) {
        let row = DQK * 2;
        for (r, &slot) in slots.iter().enumerate() {
            if let Ok(slot) = usize::try_from(slot) {
                let src = &kv.as_bytes()[r * row..(r + 1) * row];
                self.cache[slot * row..(slot + 1) * row].copy_from_slice(src);
            }
        }
    }

    /// Step `s` on `be`: (ids [B, TOP_K], y [B, H]).
    pub fn step(
        &mut self,
        be: &dyn Backend,
        model: &Model,
        s: usize,
    ) -> Result<(Vec<i32>, HostTensor)> {
        let rows = |t: &HostTensor, width: usize, dims: &[usize]| {
            let bytes = t.dtype().size_in_bytes() * width;
            let at = s * B * bytes;
            HostTensor::from_bytes(dims, t.dtype(), t.as_bytes()[at..at + B * bytes].to_vec())
        };
        let kv = rows(&model.kv, DQK, &[B, DQK])?;
        let slots = rows(&model.slots, 1, &[B])?;
        self.write(&kv, &slots.to_i32_vec()?);
        let cache =
            HostTensor::from_bytes([NUM_BLOCKS, BLOCK, 1, DQK], DType::BF16, self.cache.clone())?;
        let cache = be.upload(&cache)?;
        let q = be.upload(&rows(&model.q, HQ * DQK, &[B, 1, HQ, DQK])?)?;
        let lens = be.upload(&rows(&model.lens, 1, &[B])?)?;
        let table = be.upload(&model.block_table)?;
        let out = ops::mla_decode(be, &q, &cache, &table, &lens, &decode_params())?;
        let logits = be.upload(&rows(&model.logits, E, &[B, E])?)?;
        let bias = be.upload(&model.bias)?;
        let route = ops::moe_route(be, &logits, Some(&bias), &route_params())?;
        let (w13, w2) = (be.upload(&model.w13)?, be.upload(&model.w2)?);
        let (s13, s2) = (be.upload(&model.shared_w13)?, be.upload(&model.shared_w2)?);
        let x = out.o.reshape([B, H])?;
        let inputs = ExpertsInputs::new(&x, &w13, &w2, &route.topk_ids, &route.topk_weights)
            .with_shared(&s13, &s2);
        let y = ops::moe_experts_with(be, inputs, &ExpertsParams::default())?;
        Ok((
            be.download(&route.topk_ids)?.to_i32_vec()?,
            be.download(&y)?,
        ))
    }
}

/// What one step moved and allocated after warm-up, and what the example allows: no
/// allocation, no upload; the two reads (plus, on backends that keep index-error flags on
/// the device, the read of those flags that the first read makes).
pub fn check_step_traffic(step: &Traffic) -> std::result::Result<(), String> {
    let data_bytes = (B * TOP_K * 4 + B * H * 2) as u64;
    let ok = step.allocations == 0
        && step.uploads == 0
        && (2..=3).contains(&step.downloads)
        && step.download_bytes >= data_bytes;
    match ok {
        true => Ok(()),
        false => Err(format!(
            "a step after warm-up must allocate and upload nothing and read only ids and y \
             ({data_bytes} bytes, plus error flags), got: {step}"
        )),
    }
}

#[allow(dead_code)] // the test that includes this file runs the engine, not `main`
fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args().nth(1);
    let backend = moemla::select(name.as_deref())?;
    println!(
        "engine_step on {} ({}, {})",
        backend.name(),
        backend.info().device,
        backend.info().device_kind
    );
    let model = Model::new()?;
    let mut engine = Engine::warm_up(backend.clone(), &model)?;
    engine.step(0)?; // the first step builds programs and fills scratch pools
    let Some(mut before) = backend.traffic() else {
        println!("{} does not count its traffic", backend.name());
        return Ok(());
    };
    for s in 1..STEPS {
        engine.step(s)?;
        let now = backend.traffic().unwrap_or_default();
        let step = now.since(&before);
        check_step_traffic(&step)?;
        let ids = engine.host_ids.to_i32_vec()?;
        println!("step {s:2}: seq 0 experts {:?}; {step}", &ids[..TOP_K]);
        before = now;
    }
    println!(
        "{} steps after warm-up: no allocation, no upload",
        STEPS - 1
    );
    Ok(())
}
