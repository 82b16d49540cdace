//! # moemla-cpu
//!
//! The moemla reference backend: every op of contract v2 in F32, F16 and BF16 on the host
//! CPU (FP8 weights and the FP8 latent cache included), with f32 accumulation, rayon
//! parallelism and the `gemm` crate for the dense products.
//! Integrators fall back to it, and the golden cases are checked against it.

mod aligned;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod bf16attn;
mod bf16dot;
mod ceilings;
mod convert;
mod device;
mod f32attn;
mod gemm_util;
mod gemv;
mod kept;
#[cfg(target_arch = "x86_64")]
mod lanes;
mod ops;
mod panels;
#[cfg(target_arch = "x86_64")]
mod pooled;
mod quads;
mod storage;
#[cfg(test)]
mod test_util;
#[cfg(target_arch = "x86_64")]
mod tiles;
mod transpose;
mod vendor;
mod vmath;

pub use storage::{CpuBuffer, CpuSlice, CpuSliceMut, CpuStorage};

use moemla_core::calls::{
    DsaIndexerTopkCall, MlaCacheWriteCall, MlaDecodeCall, MlaKvQuantizeCall, MlaSparseDecodeCall,
    MoeExpertsCall, MoeRouteCall,
};
use moemla_core::memory::{self, TrafficCounter};
use moemla_core::{
    Backend, BackendInfo, DType, DeviceTensor, DsaIndexerTopkOutput, ExpertWeight, HostTensor,
    MlaDecodeOutput, MoeRouteOutput, OpSupport, Result, Shape, Verification, VerificationKind,
};
use std::ffi::c_void;
use std::sync::Arc;

/// The backend's name, as `--backend cpu` selects it and as its tensors carry it.
pub const NAME: &str = "cpu";

/// How this backend has been verified: it is the reference, checked against the
/// independent golden set.
pub fn claimed_verification() -> Verification {
    Verification {
        kind: VerificationKind::Reference,
        detail: "reference implementation (f32 accumulation)".to_string(),
    }
}

/// This backend as the registry lists it: [`NAME`], [`claimed_verification`] and the
/// function that opens it (always: the CPU backend runs everywhere).
pub fn factory() -> moemla_core::BackendFactory {
    moemla_core::BackendFactory::new(NAME, claimed_verification(), || {
        Ok(Arc::new(CpuBackend::new()) as Arc<dyn Backend>)
    })
}

/// The CPU backend. Tensors live in host memory as [`CpuStorage`]; ops run on the global
/// rayon thread pool (size it with `RAYON_NUM_THREADS`). Clones share one
/// [`Backend::traffic`] count.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    name: Arc<str>,
    traffic: Arc<TrafficCounter>,
}

impl CpuBackend {
    /// The CPU backend (always available).
    pub fn new() -> Self {
        CpuBackend {
            name: NAME.into(),
            traffic: Arc::default(),
        }
    }

    /// Wraps storage as a tensor of this backend: every tensor the backend allocates
    /// (zeroed, uploaded, an op's output) passes here, where it is counted.
    fn tensor(&self, storage: CpuStorage, shape: impl Into<Shape>) -> DeviceTensor {
        self.traffic.count_allocation(storage.as_bytes().len());
        let dtype = storage.dtype();
        DeviceTensor::new(
            Arc::new(CpuBuffer::owned(storage)),
            self.name.clone(),
            shape,
            dtype,
        )
    }
}

impl CpuBackend {
    /// The buffer of each of a `_into` call's outputs `(tensor, dims, arg)`: this
    /// backend's, of exactly `dims`, sharing its buffer with no input and no other output.
    /// The core's `ops::*_into` check this before calling; checking again here keeps a
    /// direct call of the trait method from writing out of bounds or through two
    /// references at once.
    fn outputs<'a, const N: usize>(
        &self,
        call: &'static str,
        inputs: &[&DeviceTensor],
        outputs: [(&'a DeviceTensor, &[usize], &'static str); N],
    ) -> Result<[&'a CpuBuffer; N]> {
        let mut buffers = Vec::with_capacity(N);
        for (i, &(t, dims, arg)) in outputs.iter().enumerate() {
            let earlier = outputs[..i].iter().map(|o| o.0);
            let aliased = inputs
                .iter()
                .copied()
                .chain(earlier)
                .any(|u| t.same_buffer(u));
            if t.dims() != dims || aliased {
                return Err(moemla_core::Error::Device {
                    backend: self.name.to_string(),
                    call: format!("{call}: `{arg}`"),
                    message: format!(
                        "an output must be {dims:?} and share no buffer with an input or \
                         another output (got {t:?}); call it through moemla_core::ops"
                    ),
                });
            }
            buffers.push(storage::buffer(t, &self.name, call, arg)?);
        }
        buffers
            .try_into()
            .map_err(|b: Vec<_>| moemla_core::Error::Device {
                backend: self.name.to_string(),
                call: call.to_string(),
                message: format!("{} output buffers for {N} outputs", b.len()),
            })
    }

    /// The output side of an attention `_into` call (`mla_decode`, `mla_sparse_decode`):
    /// checks `o` [B, Sq, Hq, Dv] and `lse` [B, Hq, Sq] (`dims` = [B, Sq, Hq, Dv]) against
    /// `inputs` as [`Self::outputs`] does, then runs `run` on their memory under `writing`.
    fn attention_into(
        &self,
        call: &'static str,
        inputs: &[&DeviceTensor],
        dims: [usize; 4],
        o: &DeviceTensor,
        lse: &DeviceTensor,
        run: impl FnOnce(storage::FloatSliceMut<'_>, &mut [f32]) -> Result<()>,
    ) -> Result<()> {
        let [b, s_q, h_q, _] = dims;
        let lse_dims = [b, h_q, s_q];
        let outputs = [(o, &dims[..], "o"), (lse, &lse_dims[..], "lse")];
        let [o, lse] = self.outputs(call, inputs, outputs)?;
        let _writing = storage::writing();
        // SAFETY: as in `moe_route_into`.
        let (o, lse) = unsafe { (o.slice_mut(), lse.slice_mut()) };
        let o = storage::float_mut(o, &self.name, call, "o")?;
        let lse = storage::f32_mut(lse, &self.name, call, "lse")?;
        run(o, lse)
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: NAME.to_string(),
            vendor: "moemla".to_string(),
            device: format!(
                "{} ({} threads)",
                device::cpu_model(),
                rayon::current_num_threads()
            ),
            device_kind: moemla_core::DeviceKind::Cpu,
            memory_bytes: device::total_memory_bytes(),
            supported: OpSupport::all_v2(),
            verification: claimed_verification(),
            notes: vec![],
        }
    }

    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        Ok(self.tensor(CpuStorage::zeros(dtype, shape)?, shape.clone()))
    }

    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        let t = self.tensor(CpuStorage::from_host(host)?, host.shape().clone());
        self.traffic.count_upload(host.as_bytes().len());
        Ok(t)
    }

    /// F32 weights on a CPU with AVX-512F: laid out in panels of 16 rows (see
    /// docs/ops.md), which `moe_experts` multiplies with every token of a block broadcast,
    /// so no lane idles whatever an expert's token count. Such a tensor also downloads
    /// (`download`, `download_into`: in the contract's layout); other ops and copies refuse
    /// it with a typed error. Other dtypes and CPUs: `w` itself.
    fn pack_expert_weights(&self, w: &DeviceTensor, kind: ExpertWeight) -> Result<DeviceTensor> {
        // Already in panels: as it is, if packed as `kind`.
        if panels::PanelWeights::of_tensor(w, &self.name, kind.arg(), kind)?.is_some() {
            return Ok(w.clone());
        }
        if w.dtype() != DType::F32 || !panels::available() {
            return Ok(w.clone());
        }
        let dims: [usize; 3] = w.dims().try_into().map_err(|_| {
            moemla_core::Error::Tensor(format!("cpu pack_expert_weights: {w:?} is not [E, N, K]"))
        })?;
        let packed = {
            let _reading = storage::reading();
            let v = storage::f32_slice(w, &self.name, "pack_expert_weights", kind.arg())?;
            panels::PanelWeights::pack(v, panels::Layout::of(kind, dims))?
        };
        self.traffic.count_allocation(packed.bytes());
        Ok(DeviceTensor::new(
            Arc::new(packed),
            self.name.clone(),
            w.shape().clone(),
            DType::F32,
        ))
    }

    fn download(&self, tensor: &DeviceTensor) -> Result<HostTensor> {
        if let Ok(p) = tensor.buffer::<panels::PanelWeights>(&self.name, "download", "tensor") {
            let host = HostTensor::from_slice(tensor.shape().clone(), &p.unpack()?)?;
            self.traffic.count_download(host.as_bytes().len());
            return Ok(host);
        }
        let _reading = storage::reading();
        let s = storage::storage(tensor, &self.name, "download", "tensor")?;
        let host = HostTensor::from_bytes(tensor.shape().clone(), tensor.dtype(), s.to_bytes()?)?;
        self.traffic.count_download(host.as_bytes().len());
        Ok(host)
    }

    fn download_into(
        &self,
        src: &DeviceTensor,
        src_offset: usize,
        dst: &mut HostTensor,
    ) -> Result<()> {
        const CALL: &str = "download_into";
        let range = memory::download_range(src, src_offset, dst)?;
        if let Ok(p) = src.buffer::<panels::PanelWeights>(&self.name, CALL, "src") {
            // Weights in panels: unpacked whole, then the range copied.
            let values = p.unpack()?;
            dst.as_bytes_mut()
                .copy_from_slice(&bytemuck::cast_slice::<f32, u8>(&values)[range]);
            self.traffic.count_download(dst.as_bytes().len());
            return Ok(());
        }
        let _reading = storage::reading();
        let from = storage::storage(src, &self.name, CALL, "src")?.as_bytes();
        dst.as_bytes_mut().copy_from_slice(&from[range]);
        self.traffic.count_download(dst.as_bytes().len());
        Ok(())
    }

    /// Not meaningful here: the CPU backend has no queue (ops run to completion on the
    /// calling thread and rayon's pool), so this is [`moemla_core::Error::NotProvided`].
    unsafe fn with_queue(&self, queue: *mut c_void) -> Result<Arc<dyn Backend>> {
        let _ = queue;
        Err(moemla_core::Error::NotProvided {
            backend: self.name.to_string(),
            what: "with_queue",
        })
    }

    /// Counts uploads / `upload_into` and downloads / `download_into` (all in host memory,
    /// counted as the copies an accelerator would make), and every tensor the backend
    /// allocates. Memory of caller tensors (`from_raw`) is not counted; scratch the ops use
    /// internally is host heap memory, not tensor memory, and is not counted either.
    fn traffic(&self) -> Option<moemla_core::Traffic> {
        Some(self.traffic.get())
    }

    fn synchronize(&self) -> Result<()> {
        // Ops run to completion before they return.
        Ok(())
    }

    /// `ptr` is a host pointer; the tensor never frees it.
    unsafe fn wrap_raw(
        &self,
        ptr: *mut c_void,
        bytes: usize,
        shape: &Shape,
        dtype: DType,
    ) -> Result<DeviceTensor> {
        if shape.byte_len(dtype)? != bytes {
            return Err(moemla_core::Error::Tensor(format!(
                "cpu wrap_raw: {bytes} bytes for a {dtype} tensor of shape {shape}"
            )));
        }
        // SAFETY: the caller upholds `DeviceTensor::from_raw`'s contract for `bytes` bytes.
        let buffer = unsafe { CpuBuffer::wrap(ptr, bytes, dtype)? };
        Ok(DeviceTensor::new(
            Arc::new(buffer),
            self.name.clone(),
            shape.clone(),
            dtype,
        ))
    }

    fn upload_into(&self, src: &HostTensor, dst: &DeviceTensor, dst_offset: usize) -> Result<()> {
        let range = memory::upload_range(src, dst, dst_offset)?;
        let buffer = storage::buffer(dst, &self.name, "upload_into", "dst")?;
        let _writing = storage::writing();
        // SAFETY: `writing` excludes every other access to CPU tensor memory, and `src` is
        // host memory of its own.
        let to = unsafe { buffer.bytes_mut() };
        to[range].copy_from_slice(src.as_bytes());
        self.traffic.count_upload(src.as_bytes().len());
        Ok(())
    }

    fn copy_into(
        &self,
        src: &DeviceTensor,
        src_offset: usize,
        dst: &DeviceTensor,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        const CALL: &str = "copy_into";
        let (from, range) = memory::copy_ranges(src, src_offset, dst, dst_offset, len)?;
        storage::storage(src, &self.name, CALL, "src")?;
        let to = storage::buffer(dst, &self.name, CALL, "dst")?;
        let _writing = storage::writing();
        if src.same_buffer(dst) {
            // SAFETY: exclusive access under `writing`; one slice for both ranges.
            let bytes = unsafe { to.bytes_mut() };
            bytes.copy_within(from, range.start);
        } else {
            let bytes = storage::storage(src, &self.name, CALL, "src")?.as_bytes();
            // SAFETY: exclusive access under `writing`; `src` is another buffer, which caller
            // memory may not overlap (`from_raw`'s contract), so the slices are disjoint.
            let to = unsafe { to.bytes_mut() };
            to[range].copy_from_slice(&bytes[from]);
        }
        Ok(())
    }

    fn moe_route_into(
        &self,
        call: &MoeRouteCall<'_>,
        topk_ids: &DeviceTensor,
        topk_weights: &DeviceTensor,
    ) -> Result<()> {
        const CALL: &str = "moe_route";
        let mut inputs = vec![call.logits];
        inputs.extend(call.bias);
        inputs.extend(call.hash.iter().flat_map(|h| [h.input_ids, h.tid2eid]));
        let dims = [call.tokens, call.params.top_k];
        let outputs = [
            (topk_ids, &dims[..], "topk_ids"),
            (topk_weights, &dims[..], "topk_weights"),
        ];
        let [ids, weights] = self.outputs(CALL, &inputs, outputs)?;
        let _writing = storage::writing();
        // SAFETY: `writing` excludes every other access to CPU tensor memory, and `outputs`
        // checked that no output shares a buffer with an input or another output (caller
        // memory overlaps no other tensor of a call: `from_raw`'s contract), so these are
        // the only references into the outputs' memory.
        let (ids, weights) = unsafe { (ids.slice_mut(), weights.slice_mut()) };
        let ids = storage::i32_mut(ids, &self.name, CALL, "topk_ids")?;
        let weights = storage::f32_mut(weights, &self.name, CALL, "topk_weights")?;
        ops::moe_route::run_into(&self.name, call, ids, weights)
    }

    fn moe_experts_into(&self, call: &MoeExpertsCall<'_>, y: &DeviceTensor) -> Result<()> {
        const CALL: &str = "moe_experts";
        let mut inputs = vec![call.x, call.w13, call.w2, call.topk_ids, call.topk_weights];
        inputs.extend(
            call.fp8_scales
                .iter()
                .flat_map(|s| [s.w13_scale, s.w2_scale]),
        );
        let dims = [call.tokens, call.hidden];
        let [y] = self.outputs(CALL, &inputs, [(y, &dims[..], "y")])?;
        let _writing = storage::writing();
        // SAFETY: as in `moe_route_into`.
        let y = unsafe { y.slice_mut() };
        let y = storage::float_mut(y, &self.name, CALL, "y")?;
        ops::moe_experts::run_into(&self.name, call, y)
    }

    fn mla_decode_into(
        &self,
        call: &MlaDecodeCall<'_>,
        o: &DeviceTensor,
        lse: &DeviceTensor,
    ) -> Result<()> {
        let inputs = [call.q, call.kv_cache, call.block_table, call.cache_seqlens];
        let dims = [call.batch, call.s_q, call.h_q, call.d_v];
        self.attention_into("mla_decode", &inputs, dims, o, lse, |o, lse| {
            ops::mla_decode::run_into(&self.name, call, o, lse)
        })
    }

    fn mla_sparse_decode_into(
        &self,
        call: &MlaSparseDecodeCall<'_>,
        o: &DeviceTensor,
        lse: &DeviceTensor,
    ) -> Result<()> {
        let mut inputs = vec![call.q, call.kv_cache, call.indices];
        inputs.extend(call.topk_length);
        inputs.extend(call.attn_sink);
        let dims = [call.batch, call.s_q, call.h_q, call.d_v];
        self.attention_into("mla_sparse_decode", &inputs, dims, o, lse, |o, lse| {
            ops::mla_sparse_decode::run_into(&self.name, call, o, lse)
        })
    }

    fn mla_kv_quantize_into(
        &self,
        call: &MlaKvQuantizeCall<'_>,
        kv_fp8: &DeviceTensor,
    ) -> Result<()> {
        const CALL: &str = "mla_kv_quantize";
        let dims = [call.rows, moemla_core::fp8::DS_V32_ROW_BYTES];
        let [out] = self.outputs(CALL, &[call.kv], [(kv_fp8, &dims[..], "kv_fp8")])?;
        let _writing = storage::writing();
        // SAFETY: as in `moe_route_into`.
        let out = unsafe { out.slice_mut() };
        ops::mla_kv_quantize::run_into(&self.name, call, out.into_bytes())
    }

    fn dsa_indexer_topk_into(
        &self,
        call: &DsaIndexerTopkCall<'_>,
        topk_indices: &DeviceTensor,
        topk_scores: &DeviceTensor,
    ) -> Result<()> {
        const CALL: &str = "dsa_indexer_topk";
        let inputs = [
            call.q,
            call.weights,
            call.k_cache,
            call.block_table,
            call.cache_seqlens,
        ];
        let dims = [call.batch, call.s_q, call.params.top_k];
        let outputs = [
            (topk_indices, &dims[..], "topk_indices"),
            (topk_scores, &dims[..], "topk_scores"),
        ];
        let [ids, scores] = self.outputs(CALL, &inputs, outputs)?;
        let _writing = storage::writing();
        // SAFETY: as in `moe_route_into`.
        let (ids, scores) = unsafe { (ids.slice_mut(), scores.slice_mut()) };
        let ids = storage::i32_mut(ids, &self.name, CALL, "topk_indices")?;
        let scores = storage::f32_mut(scores, &self.name, CALL, "topk_scores")?;
        ops::dsa_indexer_topk::run_into(&self.name, call, ids, scores)
    }

    fn mla_cache_write(&self, call: &MlaCacheWriteCall<'_>) -> Result<()> {
        const CALL: &str = "mla_cache_write";
        let inputs = [call.kv, call.slot_mapping];
        let dims = call.kv_cache.dims().to_vec();
        let outputs = [(call.kv_cache, &dims[..], "kv_cache")];
        let [cache] = self.outputs(CALL, &inputs, outputs)?;
        let _writing = storage::writing();
        // SAFETY: as in `moe_route_into` (the cache is the call's only output).
        let cache = unsafe { cache.slice_mut() };
        ops::mla_cache_write::run(&self.name, call, cache.into_bytes())
    }

    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        let _reading = storage::reading();
        let (ids, weights) = ops::moe_route::run(&self.name, call)?;
        let dims = [call.tokens, call.params.top_k];
        Ok(MoeRouteOutput {
            topk_ids: self.tensor(CpuStorage::I32(ids), dims),
            topk_weights: self.tensor(CpuStorage::F32(weights), dims),
        })
    }

    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        let _reading = storage::reading();
        let y = ops::moe_experts::run(&self.name, call)?;
        Ok(self.tensor(y, [call.tokens, call.hidden]))
    }

    fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        let _reading = storage::reading();
        let (o, lse) = ops::mla_decode::run(&self.name, call)?;
        Ok(MlaDecodeOutput {
            o: self.tensor(o, [call.batch, call.s_q, call.h_q, call.d_v]),
            lse: self.tensor(CpuStorage::F32(lse), [call.batch, call.h_q, call.s_q]),
        })
    }

    fn mla_kv_quantize(&self, call: &MlaKvQuantizeCall<'_>) -> Result<DeviceTensor> {
        let _reading = storage::reading();
        let rows = ops::mla_kv_quantize::run(&self.name, call)?;
        let dims = [call.rows, moemla_core::fp8::DS_V32_ROW_BYTES];
        Ok(self.tensor(CpuStorage::U8(rows), dims))
    }

    fn mla_sparse_decode(&self, call: &MlaSparseDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        let _reading = storage::reading();
        let (o, lse) = ops::mla_sparse_decode::run(&self.name, call)?;
        Ok(MlaDecodeOutput {
            o: self.tensor(o, [call.batch, call.s_q, call.h_q, call.d_v]),
            lse: self.tensor(CpuStorage::F32(lse), [call.batch, call.h_q, call.s_q]),
        })
    }

    fn dsa_indexer_topk(&self, call: &DsaIndexerTopkCall<'_>) -> Result<DsaIndexerTopkOutput> {
        let _reading = storage::reading();
        let (indices, scores) = ops::dsa_indexer_topk::run(&self.name, call)?;
        let dims = [call.batch, call.s_q, call.params.top_k];
        Ok(DsaIndexerTopkOutput {
            topk_indices: self.tensor(CpuStorage::I32(indices), dims),
            topk_scores: self.tensor(CpuStorage::F32(scores), dims),
        })
    }

    fn supports(&self, support: &OpSupport) -> bool {
        // What `info` lists, without probing the host for the device name.
        OpSupport::all_v2().contains(support)
    }

    fn copy_bench(&self, bytes: usize, reps: usize) -> Result<std::time::Duration> {
        ceilings::copy_bench(bytes, reps)
    }

    fn dense_gemm(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        let _reading = storage::reading();
        let c = ceilings::dense_gemm(&self.name, a, b)?;
        Ok(self.tensor(c, [a.dims()[0], b.dims()[0]]))
    }

    fn dense_gemm_impl(&self, dtype: DType) -> String {
        match dtype {
            DType::F32 => "gemm crate 0.19, f32, all threads".into(),
            other => format!("gemm crate 0.19, f32 compute on {other} inputs upcast, all threads"),
        }
    }
}
