//! # moemla-opencl
//!
//! The moemla OpenCL backend: every op of contract v1 and v2 (FP8 block-scaled experts, the
//! 656-byte FP8 latent cache, sparse attention, the indexer) as OpenCL C 1.2 kernels
//! (`kernels/opencl/*.cl`), F32 compute with F32, F16 and BF16 storage. It runs on any
//! OpenCL 1.2 device; CI runs it on PoCL's CPU device.
//!
//! The OpenCL library is loaded at run time (no SDK needed to build). Every platform's
//! devices are listed, GPUs first (see [`device_count`]): `opencl:i` is the i-th, with one
//! context and one in-order queue per device and process, made on first use ([`opened`];
//! [`shared`] for device 0). `opencl` alone is device 0: the first GPU, else the first
//! device, or the one env `MOEMLA_OPENCL_DEVICE` names (an index or a name substring).
//!
//! Ops only enqueue: they never wait for the queue or read back. Index errors the kernels
//! find (bad `topk_ids`, `block_table`, `cache_seqlens`, hash-routing tables, sparse
//! `indices` / `topk_length` entries, `slot_mapping`) and the non-finite input of the FP8
//! quantizers (`mla_kv_quantize`, `mla_cache_write` with `fp8_ds_v32`) are reported by the
//! next [`Backend::synchronize`], [`Backend::download`] or [`Backend::download_into`], as on
//! CUDA and HIP. A caller's own `cl_mem` buffers (in this backend's context,
//! [`OpenClBackend::context`]) can be wrapped as tensors with `DeviceTensor::from_raw`, and
//! the `_into` ops write into them; [`Backend::with_queue`] runs ops on a caller's command
//! queue. Scratch comes from a per-queue pool and kernel objects are reused, so a repeated
//! step allocates nothing ([`Backend::traffic`] counts what does).

mod buffer;
mod ceilings;
mod device;
mod error;
mod flags;
mod launch;
mod limits;
mod ops;
mod program;
mod programs_v2;

pub use buffer::ClBuffer;

use device::ClDevice;
use moemla_core::calls::{
    DsaIndexerTopkCall, DsaIndexerTopkOutput, MlaCacheWriteCall, MlaDecodeCall, MlaKvQuantizeCall,
    MlaSparseDecodeCall, MoeExpertsCall, MoeRouteCall,
};
use moemla_core::{
    memory, Backend, BackendInfo, DType, DeviceTensor, HostTensor, MeasuredLimits, MlaDecodeOutput,
    MoeRouteOutput, OpSupport, Result, Shape, Verification, VerificationKind,
};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The backend's name, as `--backend opencl` selects it and as its tensors carry it.
pub const NAME: &str = "opencl";

/// How this backend has been verified as a whole, shown by `moemla devices` even where it
/// cannot run; [`Backend::info`] says what holds for the device in hand.
pub fn claimed_verification() -> Verification {
    Verification {
        kind: VerificationKind::Silicon,
        detail: format!(
            "CPU via PoCL {} (golden set in CI); {}; not verified on any other OpenCL device",
            VERIFIED_POCL.join(", "),
            VERIFIED_GPUS
                .iter()
                .map(verified_gpu_detail)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// This backend as the registry lists it: [`NAME`], [`claimed_verification`] and the
/// function that opens it (`Err(Error::Unavailable)` with the reason where it cannot run).
/// Its devices are every platform's, GPUs first ([`device_count`]): `opencl:i` opens the
/// i-th.
pub fn factory() -> moemla_core::BackendFactory {
    moemla_core::BackendFactory::with_devices(NAME, claimed_verification(), device_count, |index| {
        Ok(opened(index)? as Arc<dyn Backend>)
    })
}

/// The OpenCL backend on one device, with its context and queue.
pub struct OpenClBackend {
    name: Arc<str>,
    device: ClDevice,
}

/// The process-wide OpenCL backend on device 0 (`opencl`), opened on first call (later
/// calls share it, or get the same `Unavailable` error).
pub fn shared() -> Result<Arc<OpenClBackend>> {
    opened(0)
}

/// How many OpenCL devices this process sees, every platform's (0 where the ICD loader or
/// every platform is missing): `opencl:0` to `opencl:{count - 1}`, GPUs first, then the
/// others, each in platform then device order. Counted once per process.
pub fn device_count() -> usize {
    let mut state = state();
    *state.count.get_or_insert_with(device::device_count)
}

/// The process-wide OpenCL backend on device `index` (see [`device_count`]; named
/// `opencl` for device 0, `opencl:index` for the others), opened on first call (later
/// calls share it, or get the same error). One context per device and process.
pub fn opened(index: usize) -> Result<Arc<OpenClBackend>> {
    let mut state = state();
    let backend = state.opened.entry(index).or_insert_with(|| {
        Ok(Arc::new(OpenClBackend {
            name: moemla_core::device_backend_name(NAME, index).into(),
            device: ClDevice::open_index(index)?,
        }))
    });
    backend.clone()
}

/// The devices counted and opened so far in this process.
struct State {
    count: Option<usize>,
    opened: BTreeMap<usize, Result<Arc<OpenClBackend>>>,
}

/// The process's [`State`], locked: every platform query and context creation runs under
/// this one lock, as PoCL crashes when they run concurrently.
fn state() -> MutexGuard<'static, State> {
    static STATE: Mutex<State> = Mutex::new(State {
        count: None,
        opened: BTreeMap::new(),
    });
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

impl OpenClBackend {
    /// Programs built so far: each (kernel module, storage dtype) is built once per process.
    pub fn programs_built(&self) -> usize {
        self.device.programs_built()
    }

    /// Kernel objects made so far (`clCreateKernel`): one per kernel and concurrent launch,
    /// then reused, so a repeated decode step makes none.
    pub fn kernels_made(&self) -> usize {
        self.device.programs.kernels_made()
    }

    /// The device, context and queue (for this crate's unit tests).
    #[cfg(test)]
    pub(crate) fn device(&self) -> &ClDevice {
        &self.device
    }

    /// The backend's OpenCL context (`cl_context`), in which a caller creates the buffers
    /// it wraps with `DeviceTensor::from_raw`. Valid as long as the process.
    pub fn context(&self) -> *mut c_void {
        self.device.context.get()
    }

    /// Wraps a buffer as a tensor of this backend.
    fn tensor(&self, buf: ClBuffer, shape: impl Into<Shape>, dtype: DType) -> DeviceTensor {
        DeviceTensor::new(Arc::new(buf), self.name.clone(), shape, dtype)
    }

    /// A new output tensor for `what`, not filled: the op's kernels write every element.
    fn output(&self, what: &str, dims: &[usize], dtype: DType) -> Result<DeviceTensor> {
        let shape = Shape::from(dims);
        let buf = self.device.tensor_buffer(what, shape.byte_len(dtype)?)?;
        Ok(self.tensor(buf, shape, dtype))
    }

    fn verification(&self) -> Verification {
        let facts = &self.device.facts;
        if let Some(gpu) = verified_gpu(&facts.platform, &facts.name) {
            return Verification {
                kind: VerificationKind::Silicon,
                detail: verified_gpu_detail(gpu),
            };
        }
        match pocl_version(&facts.platform_version) {
            Some(version) if facts.is_cpu && verified_pocl(version) => Verification {
                kind: VerificationKind::Silicon,
                detail: format!("CPU via PoCL {version}"),
            },
            _ => Verification {
                kind: VerificationKind::Unverified,
                detail: "not verified on this device; run `moemla conformance --backend opencl`"
                    .to_string(),
            },
        }
    }
}

/// GPUs on which every committed golden case (v1 and v2) has passed through their
/// vendor's OpenCL driver (`scripts/device-check.sh run`, steps opencl and opencl-v2):
/// (platform name, device name, driver and date), matched exactly.
const VERIFIED_GPUS: &[(&str, &str, &str)] = &[(
    "NVIDIA CUDA",
    "NVIDIA H200",
    "driver 580.159.04, 2026-12-04",
)];

/// The [`VERIFIED_GPUS`] entry of the device `name` on the platform `platform`, if any.
fn verified_gpu(
    platform: &str,
    name: &str,
) -> Option<&'static (&'static str, &'static str, &'static str)> {
    VERIFIED_GPUS
        .iter()
        .find(|(p, n, _)| *p == platform && *n == name)
}

/// How a [`VERIFIED_GPUS`] entry reads in a verification detail.
fn verified_gpu_detail((platform, name, when): &(&str, &str, &str)) -> String {
    format!("{name} via the {platform} OpenCL platform ({when})")
}

/// PoCL releases (major.minor) on whose CPU device every committed golden case has passed
/// (`moemla conformance --backend opencl`; PoCL 3.1 as Debian 12 ships it).
const VERIFIED_POCL: &[&str] = &["3.1"];

/// Whether `version` ("3.1+debian") is one of [`VERIFIED_POCL`].
fn verified_pocl(version: &str) -> bool {
    VERIFIED_POCL.iter().any(|v| {
        version
            .strip_prefix(v)
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// "3.1+debian" from a PoCL platform version ("OpenCL 3.0 PoCL 3.1+debian  Linux, ...").
fn pocl_version(platform_version: &str) -> Option<&str> {
    let mut words = platform_version.split_whitespace();
    words.find(|w| *w == "PoCL")?;
    words.next()
}

impl Backend for OpenClBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> BackendInfo {
        let facts = &self.device.facts;
        let has = |ext: &str| {
            let yes = facts.extensions.split_whitespace().any(|e| e == ext);
            format!("{ext}: {}", if yes { "yes" } else { "no" })
        };
        BackendInfo {
            name: NAME.to_string(),
            vendor: facts.platform.clone(),
            device: facts.name.clone(),
            device_kind: if facts.is_cpu {
                moemla_core::DeviceKind::Cpu
            } else {
                moemla_core::DeviceKind::Accelerator
            },
            memory_bytes: Some(facts.global_mem),
            // Every op of contract v2, every variant, in every dtype it allows.
            supported: OpSupport::all_v2(),
            verification: self.verification(),
            notes: vec![
                facts.c_version.trim().to_string(),
                format!(
                    "{} (f16 is read with vload_half; all arithmetic is f32)",
                    has("cl_khr_fp16")
                ),
                has("cl_khr_fp64"),
            ],
        }
    }

    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        let buf = self
            .device
            .tensor_filled("alloc_zeroed", shape.byte_len(dtype)?, 0)?;
        Ok(self.tensor(buf, shape.clone(), dtype))
    }

    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        let buf = self.device.upload("upload", host.as_bytes())?;
        Ok(self.tensor(buf, host.shape().clone(), host.dtype()))
    }

    /// Waits for the queue; first reports a pending index error of an earlier op (see
    /// [`Backend::synchronize`]), and then downloads nothing. The error flags of pending
    /// ops are read beside the data, in one wait.
    fn download(&self, tensor: &DeviceTensor) -> Result<HostTensor> {
        let buf = tensor.buffer::<ClBuffer>(&self.name, "download", "tensor")?;
        let len = tensor.shape().byte_len(tensor.dtype())?;
        let mut bytes = moemla_core::alloc::try_filled_vec::<u8>(len, "opencl download")?;
        let read = buffer::Read {
            buf,
            offset: 0,
            out: &mut bytes,
        };
        if let Err(failed) = self.device.wait_checked(Some(read)) {
            // Leaked when the read may still write into it.
            return Err(failed.leaking(bytes));
        }
        HostTensor::from_bytes(tensor.shape().clone(), tensor.dtype(), bytes)
    }

    /// Waits for the queue; first reports a pending index error of an earlier op (as
    /// [`Backend::download`]), else reads the range (no allocation). The error flags of
    /// pending ops are read beside the range, in one wait, so `dst` holds the range's bytes
    /// also when an index error is reported. After a failed read that the queue could not
    /// be finished past, `dst`'s old memory is leaked (the read may still write into it)
    /// and `dst` holds zeros.
    fn download_into(
        &self,
        src: &DeviceTensor,
        src_offset: usize,
        dst: &mut HostTensor,
    ) -> Result<()> {
        let range = memory::download_range(src, src_offset, dst)?;
        let buf = src.buffer::<ClBuffer>(&self.name, "download_into", "src")?;
        let read = buffer::Read {
            buf,
            offset: range.start,
            out: dst.as_bytes_mut(),
        };
        self.device
            .wait_checked(Some(read))
            .map_err(|failed| failed.leaking_host(dst))
    }

    /// `queue` is a `cl_command_queue` of this backend's context
    /// ([`OpenClBackend::context`]), in order; it is retained for the handle's life. The
    /// handle shares the programs, kernels and traffic counts, and has its own index-error
    /// flags (reported by its own synchronize / downloads) and scratch pool.
    unsafe fn with_queue(&self, queue: *mut c_void) -> Result<Arc<dyn Backend>> {
        // SAFETY: the caller upholds `Backend::with_queue`'s contract: `queue` is null or a
        // valid `cl_command_queue`.
        let device = unsafe { self.device.with_queue(queue.cast())? };
        Ok(Arc::new(OpenClBackend {
            name: self.name.clone(),
            device,
        }))
    }

    /// Counted where the device allocates (`clCreateBuffer`: tensors, scratch, error
    /// flags; a buffer created from host data also counts as an upload), writes into
    /// existing memory (`upload_into`) and reads
    /// (every read command: downloads, and the error-flag words a synchronize or download
    /// reads when ops with index checks are pending).
    fn traffic(&self) -> Option<moemla_core::Traffic> {
        Some(self.device.traffic.get())
    }

    /// Waits for all enqueued work, then reports the first index error an op enqueued
    /// since the last check met on the device (in enqueue order) as `IndexOutOfRange`,
    /// once: the flags are reset and the backend stays usable.
    fn synchronize(&self) -> Result<()> {
        self.device
            .wait_checked(None)
            .map_err(buffer::ReadFailed::into_error)
    }

    /// `ptr` is a `cl_mem` buffer of this backend's context ([`OpenClBackend::context`]) of
    /// at least `bytes` bytes. moemla retains it (`clRetainMemObject`) and releases that
    /// reference when the last tensor over it is dropped; the caller keeps and releases its
    /// own. A null handle, another context's buffer or a smaller one is `Error::Tensor`.
    unsafe fn wrap_raw(
        &self,
        ptr: *mut c_void,
        bytes: usize,
        shape: &Shape,
        dtype: DType,
    ) -> Result<DeviceTensor> {
        if shape.byte_len(dtype)? != bytes {
            return Err(moemla_core::Error::Tensor(format!(
                "opencl wrap_raw: {bytes} bytes for a {dtype} tensor of shape {shape}"
            )));
        }
        // SAFETY: the caller upholds `DeviceTensor::from_raw`'s contract: `ptr` is a
        // `cl_mem` handle (null is refused by `wrap`).
        let buf = unsafe { self.device.wrap(ptr.cast(), bytes)? };
        Ok(self.tensor(buf, shape.clone(), dtype))
    }

    /// Enqueued after earlier work; `src` is copied to a host copy the queue keeps until
    /// the write has run (then reused), so the host does not wait and no device memory is
    /// allocated.
    fn upload_into(&self, src: &HostTensor, dst: &DeviceTensor, dst_offset: usize) -> Result<()> {
        let range = memory::upload_range(src, dst, dst_offset)?;
        let buf = dst.buffer::<ClBuffer>(&self.name, "upload_into", "dst")?;
        self.device.write(buf, range.start, src.as_bytes())
    }

    /// Enqueued after earlier work (a device copy; overlapping ranges of one buffer go
    /// through a temporary).
    fn copy_into(
        &self,
        src: &DeviceTensor,
        src_offset: usize,
        dst: &DeviceTensor,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        const CALL: &str = "copy_into";
        let (src_range, dst_range) = memory::copy_ranges(src, src_offset, dst, dst_offset, len)?;
        let from = src.buffer::<ClBuffer>(&self.name, CALL, "src")?;
        let to = dst.buffer::<ClBuffer>(&self.name, CALL, "dst")?;
        self.device
            .copy(from, src_range.start, to, dst_range.start, src_range.len())
    }

    fn moe_experts_into(&self, call: &MoeExpertsCall<'_>, y: &DeviceTensor) -> Result<()> {
        let y = y.buffer::<ClBuffer>(&self.name, "moe_experts", "y")?;
        ops::moe_experts::run(&self.device, &self.name, call, y)
    }

    fn mla_decode_into(
        &self,
        call: &MlaDecodeCall<'_>,
        o: &DeviceTensor,
        lse: &DeviceTensor,
    ) -> Result<()> {
        let o = o.buffer::<ClBuffer>(&self.name, "mla_decode", "o")?;
        let lse = lse.buffer::<ClBuffer>(&self.name, "mla_decode", "lse")?;
        ops::mla_decode::run(&self.device, &self.name, call, o, lse)
    }

    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        let dims = [call.tokens, call.params.top_k];
        let topk_ids = self.output("moe_route topk_ids", &dims, DType::I32)?;
        let topk_weights = self.output("moe_route topk_weights", &dims, DType::F32)?;
        self.moe_route_into(call, &topk_ids, &topk_weights)?;
        Ok(MoeRouteOutput {
            topk_ids,
            topk_weights,
        })
    }

    fn moe_route_into(
        &self,
        call: &MoeRouteCall<'_>,
        topk_ids: &DeviceTensor,
        topk_weights: &DeviceTensor,
    ) -> Result<()> {
        let ids = topk_ids.buffer::<ClBuffer>(&self.name, "moe_route", "topk_ids")?;
        let weights = topk_weights.buffer::<ClBuffer>(&self.name, "moe_route", "topk_weights")?;
        ops::moe_route::run(&self.device, &self.name, call, ids, weights)
    }

    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        let y = self.output("moe_experts y", &[call.tokens, call.hidden], call.dtype)?;
        self.moe_experts_into(call, &y)?;
        Ok(y)
    }

    fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        let o_dims = [call.batch, call.s_q, call.h_q, call.d_v];
        let o = self.output("mla_decode o", &o_dims, call.dtype)?;
        let lse_dims = [call.batch, call.h_q, call.s_q];
        let lse = self.output("mla_decode lse", &lse_dims, DType::F32)?;
        self.mla_decode_into(call, &o, &lse)?;
        Ok(MlaDecodeOutput { o, lse })
    }

    fn mla_cache_write(&self, call: &MlaCacheWriteCall<'_>) -> Result<()> {
        let name = "mla_cache_write";
        let cache = (call.kv_cache).buffer::<ClBuffer>(&self.name, name, "kv_cache")?;
        ops::mla_cache_write::run(&self.device, &self.name, call, cache)
    }

    fn mla_kv_quantize(&self, call: &MlaKvQuantizeCall<'_>) -> Result<DeviceTensor> {
        let dims = [call.rows, moemla_core::fp8::DS_V32_ROW_BYTES];
        let out = self.output("mla_kv_quantize kv_fp8", &dims, DType::U8)?;
        self.mla_kv_quantize_into(call, &out)?;
        Ok(out)
    }

    fn mla_kv_quantize_into(
        &self,
        call: &MlaKvQuantizeCall<'_>,
        kv_fp8: &DeviceTensor,
    ) -> Result<()> {
        let out = kv_fp8.buffer::<ClBuffer>(&self.name, "mla_kv_quantize", "kv_fp8")?;
        ops::mla_kv_quantize::run(&self.device, &self.name, call, out)
    }

    fn mla_sparse_decode(&self, call: &MlaSparseDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        let o_dims = [call.batch, call.s_q, call.h_q, call.d_v];
        let o = self.output("mla_sparse_decode o", &o_dims, call.dtype)?;
        let lse_dims = [call.batch, call.h_q, call.s_q];
        let lse = self.output("mla_sparse_decode lse", &lse_dims, DType::F32)?;
        self.mla_sparse_decode_into(call, &o, &lse)?;
        Ok(MlaDecodeOutput { o, lse })
    }

    fn mla_sparse_decode_into(
        &self,
        call: &MlaSparseDecodeCall<'_>,
        o: &DeviceTensor,
        lse: &DeviceTensor,
    ) -> Result<()> {
        let op = moemla_core::Op::MlaSparseDecode;
        let o_buf = o.buffer::<ClBuffer>(&self.name, op.name(), "o")?;
        let lse_buf = lse.buffer::<ClBuffer>(&self.name, op.name(), "lse")?;
        let o_bytes =
            Shape::from(&[call.batch, call.s_q, call.h_q, call.d_v][..]).byte_len(call.dtype)?;
        ops::need_len(op, "o", o_buf, o_bytes)?;
        let lse_bytes = Shape::from(&[call.batch, call.h_q, call.s_q][..]).byte_len(DType::F32)?;
        ops::need_len(op, "lse", lse_buf, lse_bytes)?;
        ops::mla_sparse_decode::run(&self.device, &self.name, call, o_buf, lse_buf)
    }

    fn dsa_indexer_topk(&self, call: &DsaIndexerTopkCall<'_>) -> Result<DsaIndexerTopkOutput> {
        let dims = [call.batch, call.s_q, call.params.top_k];
        let indices = self.output("dsa_indexer_topk topk_indices", &dims, DType::I32)?;
        let scores = self.output("dsa_indexer_topk topk_scores", &dims, DType::F32)?;
        self.dsa_indexer_topk_into(call, &indices, &scores)?;
        Ok(DsaIndexerTopkOutput {
            topk_indices: indices,
            topk_scores: scores,
        })
    }

    fn dsa_indexer_topk_into(
        &self,
        call: &DsaIndexerTopkCall<'_>,
        topk_indices: &DeviceTensor,
        topk_scores: &DeviceTensor,
    ) -> Result<()> {
        let name = "dsa_indexer_topk";
        let i_buf = topk_indices.buffer::<ClBuffer>(&self.name, name, "topk_indices")?;
        let s_buf = topk_scores.buffer::<ClBuffer>(&self.name, name, "topk_scores")?;
        ops::dsa_indexer_topk::run(&self.device, &self.name, call, i_buf, s_buf)
    }

    fn copy_bench(&self, bytes: usize, reps: usize) -> Result<Duration> {
        ceilings::copy_bench(&self.device, bytes, reps)
    }

    fn dense_gemm(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        let kernel = ceilings::Gemm::for_device(&self.device);
        let (c, dims) = ceilings::dense_gemm(&self.device, &self.name, kernel, a, b)?;
        Ok(self.tensor(c, dims, a.dtype()))
    }

    fn dense_gemm_impl(&self, dtype: DType) -> String {
        ceilings::dense_gemm_impl(ceilings::Gemm::for_device(&self.device), dtype)
    }

    fn limits_bench(&self, read_bytes: usize, reps: usize) -> Result<MeasuredLimits> {
        limits::measure(&self.device, read_bytes, reps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pocl_version_is_the_word_after_pocl() {
        let v = "OpenCL 3.0 PoCL 3.1+debian  Linux, None+Asserts, RELOC, SPIR, LLVM 15.0.6";
        assert_eq!(pocl_version(v), Some("3.1+debian"));
        assert_eq!(pocl_version("OpenCL 3.0 CUDA 12.4.131"), None);
    }

    #[test]
    fn only_the_verified_gpu_on_its_vendors_platform_claims_silicon() {
        let h200 = verified_gpu("NVIDIA CUDA", "NVIDIA H200").unwrap();
        assert_eq!(h200.2, "driver 580.159.04, 2026-12-04");
        assert!(verified_gpu("NVIDIA CUDA", "NVIDIA H100 80GB HBM3").is_none());
        assert!(verified_gpu("Portable Computing Language", "NVIDIA H200").is_none());
        assert!(claimed_verification().detail.contains(
            "NVIDIA H200 via the NVIDIA CUDA OpenCL platform (driver 580.159.04, 2026-12-04)"
        ));
    }

    #[test]
    fn only_verified_pocl_releases_claim_silicon() {
        assert!(verified_pocl("3.1+debian"));
        assert!(verified_pocl("3.1"));
        assert!(!verified_pocl("3.10"));
        assert!(!verified_pocl("6.0+debian"));
    }
}
