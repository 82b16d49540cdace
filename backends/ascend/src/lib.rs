//! # moemla-ascend
//!
//! moemla on Huawei Ascend NPUs through CANN's operator library (aclnn), loaded at run
//! time — no CANN needed to build. See `loader` for where CANN is looked for, and
//! `backends/ascend/README.md` for the op mapping, the contract gaps and how to verify on
//! a 910B.
//!
//! Verified only against `moemla-cann-emulator` (a CPU emulator of the CANN C API), never
//! on Ascend hardware; `info()` says so.

mod acl;
mod buffer;
mod device;
mod error;
mod frees;
mod loader;
mod ops;
mod tried;

pub use device::NAME;

use buffer::DevMem;
use device::Device;
use moemla_core::calls::{
    DsaIndexerTopkCall, DsaIndexerTopkOutput, MlaCacheWriteCall, MlaDecodeCall, MlaDecodeOutput,
    MlaSparseDecodeCall, MoeExpertsCall, MoeRouteCall, MoeRouteOutput,
};
use moemla_core::{
    memory, Backend, BackendInfo, DType, DeviceTensor, Error, Format, HostTensor, Op, OpSupport,
    Result, Shape, Traffic, Verification, VerificationKind,
};
use std::ffi::c_void;
use std::sync::{Arc, OnceLock};

/// How this backend has been verified, shown by `moemla devices` even where it cannot run.
pub fn claimed_verification() -> Verification {
    Verification {
        kind: VerificationKind::Emulator,
        detail: "CANN C-API emulator; not verified on Ascend hardware".to_string(),
    }
}

/// This backend as the registry lists it: [`NAME`], [`claimed_verification`] and the
/// function that opens it (`Err(Error::Unavailable)` with the reason where it cannot run).
pub fn factory() -> moemla_core::BackendFactory {
    moemla_core::BackendFactory::new(NAME, claimed_verification(), || {
        Ok(Arc::new(AscendBackend::new()?) as Arc<dyn Backend>)
    })
}

/// The Ascend backend: one device, one stream.
pub struct AscendBackend {
    dev: Arc<Device>,
    name: Arc<str>,
    /// The optimised rightDownCausal mask for sparseMode 3, made on first use.
    mask: OnceLock<Arc<DevMem>>,
    /// The caller's stream of a [`Backend::with_queue`] handle (`None`: the device's own).
    queue: Option<Arc<CallerStream>>,
    /// Calls served per mapping (shared with this backend's `with_queue` handles).
    paths: Arc<PathCounters>,
}

/// How many calls each mapping of an op with a fused and a composed path has served on a
/// backend (and its `with_queue` handles): which path ran, for tests and diagnostics. Each
/// call counts once: fused, composed (the fused op cannot express it) or fallback (it can,
/// but the loaded CANN refused it at its first phase, so it ran composed).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Paths {
    /// mla_sparse_decode calls run by CANN's aclnnSparseFlashAttention.
    pub sparse_attention_fused: u64,
    /// mla_sparse_decode calls aclnnSparseFlashAttention cannot express, run by the composed
    /// per-query path.
    pub sparse_attention_composed: u64,
    /// mla_sparse_decode calls within aclnnSparseFlashAttention's documented limits that
    /// its `GetWorkspaceSize` refused, run by the composed path instead.
    pub sparse_attention_fallback: u64,
    /// dsa_indexer_topk calls whose selection ran on CANN's aclnnLightningIndexer.
    pub indexer_fused: u64,
    /// dsa_indexer_topk calls aclnnLightningIndexer cannot express, run by the composed
    /// per-query path.
    pub indexer_composed: u64,
    /// dsa_indexer_topk calls within aclnnLightningIndexer's documented limits that its
    /// `GetWorkspaceSize` refused, run by the composed path instead.
    pub indexer_fallback: u64,
}

/// The live counters behind [`Paths`].
#[derive(Debug, Default)]
pub(crate) struct PathCounters {
    pub(crate) sparse_attention_fused: std::sync::atomic::AtomicU64,
    pub(crate) sparse_attention_composed: std::sync::atomic::AtomicU64,
    pub(crate) sparse_attention_fallback: std::sync::atomic::AtomicU64,
    pub(crate) indexer_fused: std::sync::atomic::AtomicU64,
    pub(crate) indexer_composed: std::sync::atomic::AtomicU64,
    pub(crate) indexer_fallback: std::sync::atomic::AtomicU64,
}

/// A caller's aclrtStream registered with the device for a handle's life; dropping it waits
/// for the stream and unregisters it.
struct CallerStream {
    dev: Arc<Device>,
    stream: usize,
}

impl Drop for CallerStream {
    fn drop(&mut self) {
        self.dev.remove_stream(self.stream);
    }
}

impl AscendBackend {
    /// Loads CANN and opens device `MOEMLA_ASCEND_DEVICE` (default 0). Fails with
    /// [`Error::Unavailable`] (listing every library path tried) when CANN or the device is
    /// missing; never panics.
    pub fn new() -> Result<Self> {
        let id = match std::env::var("MOEMLA_ASCEND_DEVICE") {
            Ok(s) => s.parse::<i32>().map_err(|_| Error::Unavailable {
                backend: NAME.to_string(),
                reason: format!("MOEMLA_ASCEND_DEVICE={s:?} is not a device index"),
            })?,
            Err(_) => 0,
        };
        let cann = loader::Cann::load().map_err(|reason| Error::Unavailable {
            backend: NAME.to_string(),
            reason,
        })?;
        Ok(AscendBackend {
            dev: Device::open(cann, id)?,
            name: Arc::from(NAME),
            mask: OnceLock::new(),
            queue: None,
            paths: Arc::default(),
        })
    }

    /// Calls served so far per mapping (fused CANN op, composed path, or composed after the
    /// fused op refused the call), see [`Paths`].
    pub fn paths(&self) -> Paths {
        use std::sync::atomic::Ordering::Relaxed;
        Paths {
            sparse_attention_fused: self.paths.sparse_attention_fused.load(Relaxed),
            sparse_attention_composed: self.paths.sparse_attention_composed.load(Relaxed),
            sparse_attention_fallback: self.paths.sparse_attention_fallback.load(Relaxed),
            indexer_fused: self.paths.indexer_fused.load(Relaxed),
            indexer_composed: self.paths.indexer_composed.load(Relaxed),
            indexer_fallback: self.paths.indexer_fallback.load(Relaxed),
        }
    }

    /// Runs one op's launches (serialised with other ops) on this handle's stream.
    fn op<T>(&self, body: impl FnOnce() -> Result<T>) -> Result<T> {
        self.dev.op_on(self.queue.as_ref().map(|q| q.stream), body)
    }

    fn mem<'a>(
        &self,
        t: &'a DeviceTensor,
        call: &'static str,
        arg: &'static str,
    ) -> Result<&'a DevMem> {
        t.buffer::<DevMem>(NAME, call, arg)
    }

    /// The 2048 x 2048 INT8 mask FIA's sparseMode 3 takes: 1 (masked) above the diagonal
    /// (FIA V3 page, sparseMode table: "优化后的attenmask矩阵（2048*2048）").
    fn causal_mask(&self) -> Result<Arc<DevMem>> {
        if let Some(m) = self.mask.get() {
            return Ok(m.clone());
        }
        const N: usize = 2048;
        let host: Vec<u8> = (0..N * N).map(|i| u8::from(i % N > i / N)).collect();
        let mem = self.dev.upload_bytes(&host)?;
        Ok(self.mask.get_or_init(|| mem).clone())
    }

    fn wrap(&self, mem: Arc<DevMem>, shape: impl Into<Shape>, dtype: DType) -> DeviceTensor {
        DeviceTensor::new(mem, self.name.clone(), shape, dtype)
    }
}

impl Backend for AscendBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn info(&self) -> BackendInfo {
        let ops = &self.dev.cann.ops;
        let mut supported = Vec::new();
        if ops::moe_route::available(ops) {
            supported.extend(DType::FLOATS.map(|dtype| OpSupport::new(Op::MoeRoute, dtype)));
            supported.extend(
                DType::FLOATS
                    .map(|dtype| OpSupport::with_format(Op::MoeRoute, dtype, Format::HashRouting)),
            );
        }
        if ops::moe_route::sqrtsoftplus_available(ops) {
            supported
                .extend(DType::FLOATS.map(|dtype| {
                    OpSupport::with_format(Op::MoeRoute, dtype, Format::Sqrtsoftplus)
                }));
        }
        if ops::moe_experts::available(ops) {
            supported.extend(DType::FLOATS.map(|dtype| OpSupport::new(Op::MoeExperts, dtype)));
        }
        if ops::moe_experts::fp8_available(ops) {
            supported
                .extend(DType::FLOATS.map(|dtype| {
                    OpSupport::with_format(Op::MoeExperts, dtype, Format::Fp8Weights)
                }));
        }
        if ops::moe_experts::clamp_available(ops) {
            supported.extend(
                DType::FLOATS.map(|dtype| {
                    OpSupport::with_format(Op::MoeExperts, dtype, Format::SwigluLimit)
                }),
            );
        }
        if ops::moe_experts::shared_available(ops) {
            supported.extend(
                DType::FLOATS.map(|dtype| {
                    OpSupport::with_format(Op::MoeExperts, dtype, Format::SharedExperts)
                }),
            );
        }
        if ops::mla_decode::available(ops) {
            supported.extend(
                [DType::F16, DType::BF16].map(|dtype| OpSupport::new(Op::MlaDecode, dtype)),
            );
            // F32 and the shapes FIA cannot do run composed (ops::mla_decode::composed).
            if ops::mla_sparse_decode::available(ops) {
                supported.push(OpSupport::new(Op::MlaDecode, DType::F32));
            }
        }
        if ops::mla_sparse_decode::available(ops) {
            supported.extend(DType::FLOATS.map(|dtype| OpSupport::new(Op::MlaSparseDecode, dtype)));
        }
        if ops::mla_sparse_decode::fp8_available(ops) {
            // The FP8 cache (F16/BF16 queries), composed (ops::mla_sparse_decode).
            for op in [Op::MlaDecode, Op::MlaSparseDecode] {
                supported.extend(
                    [DType::F16, DType::BF16]
                        .map(|dtype| OpSupport::with_format(op, dtype, Format::Fp8DsV32)),
                );
            }
        }
        if ops::dsa_indexer_topk::available(ops) {
            supported.extend(DType::FLOATS.map(|dtype| OpSupport::new(Op::DsaIndexerTopk, dtype)));
        }
        if ops::mla_cache_write::f32_available(ops) {
            supported.push(OpSupport::new(Op::MlaCacheWrite, DType::F32));
        }
        if ops::mla_cache_write::available(ops) {
            supported.extend(
                ops::mla_cache_write::DTYPES.map(|dtype| OpSupport::new(Op::MlaCacheWrite, dtype)),
            );
        }
        let mut notes: Vec<String> = vec![format!(
            "loaded: {}",
            self.dev
                .cann
                .origin
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )];
        notes.extend(ops::moe_route::NOTES.iter().map(|s| s.to_string()));
        notes.extend(ops::mla_decode::NOTES.iter().map(|s| s.to_string()));
        notes.extend(ops::moe_experts::NOTES.iter().map(|s| s.to_string()));
        notes.extend(ops::mla_sparse_decode::NOTES.iter().map(|s| s.to_string()));
        notes.extend(ops::dsa_indexer_topk::NOTES.iter().map(|s| s.to_string()));
        notes.extend(ops::mla_cache_write::NOTES.iter().map(|s| s.to_string()));
        notes.extend(ops::gaps::notes());
        let mut memory_bytes = None;
        if let Some(get) = self.dev.cann.rt.aclrtGetMemInfo {
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: out-pointers to locals; attr 1 = ACL_HBM_MEM (AscendCL "aclrtMemAttr").
            if unsafe { get(1, &mut free, &mut total) } == 0 {
                memory_bytes = Some(total as u64);
            }
        }
        BackendInfo {
            name: NAME.to_string(),
            vendor: "Huawei Ascend (CANN aclnn)".to_string(),
            device: format!("{} (device {})", self.dev.soc, self.dev.id),
            // The CANN C-API emulator names its SoC after itself; real CANN names the chip.
            device_kind: if self.dev.soc == "moemla-cann-emulator" {
                moemla_core::DeviceKind::Emulator
            } else {
                moemla_core::DeviceKind::Accelerator
            },
            memory_bytes,
            supported,
            verification: claimed_verification(),
            notes,
        }
    }

    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        let bytes = shape.byte_len(dtype)?;
        let mem = self.dev.alloc(bytes)?;
        // SAFETY: `mem` holds max(bytes, 1) bytes.
        let st = unsafe { (self.dev.cann.rt.aclrtMemset)(mem.ptr(), mem.bytes().max(1), 0, bytes) };
        self.dev.check(st, "aclrtMemset")?;
        Ok(self.wrap(mem, shape.clone(), dtype))
    }

    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        let mem = self.dev.upload_bytes(host.as_bytes())?;
        Ok(self.wrap(mem, host.shape().clone(), host.dtype()))
    }

    fn download(&self, tensor: &DeviceTensor) -> Result<HostTensor> {
        let mem = self.mem(tensor, "download", "tensor")?;
        let bytes = self.dev.download_bytes(mem, tensor.size_in_bytes())?;
        HostTensor::from_bytes(tensor.shape().clone(), tensor.dtype(), bytes)
    }

    fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    /// After the work already queued (the stream is synchronised first), a synchronous
    /// aclrtMemcpy into the range.
    fn upload_into(&self, src: &HostTensor, dst: &DeviceTensor, dst_offset: usize) -> Result<()> {
        let range = memory::upload_range(src, dst, dst_offset)?;
        let mem = self.mem(dst, "upload_into", "dst")?;
        self.op(|| self.dev.write_at(mem, range.start, src.as_bytes()))
    }

    /// After the work already queued, aclrtMemcpy DEVICE_TO_DEVICE (overlapping ranges of
    /// one buffer through a temporary).
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
        let from = self.mem(src, CALL, "src")?;
        let to = self.mem(dst, CALL, "dst")?;
        self.op(|| {
            self.dev
                .copy_at(from, src_range.start, to, dst_range.start, src_range.len())
        })
    }

    fn download_into(
        &self,
        src: &DeviceTensor,
        src_offset: usize,
        dst: &mut HostTensor,
    ) -> Result<()> {
        let range = memory::download_range(src, src_offset, dst)?;
        let mem = self.mem(src, "download_into", "src")?;
        self.op(|| self.dev.read_at(mem, range.start, dst.as_bytes_mut()))
    }

    /// `queue` is an `aclrtStream` of this device (from `aclrtCreateStream` with the
    /// device set); it must accept `aclrtSynchronizeStream` now. The handle shares the
    /// device, memory and traffic counts; its ops launch on `queue`. Its `synchronize`
    /// (and every download) waits for the device's stream and every registered caller
    /// stream, not only its own: buffers freed while launches are outstanding are released
    /// only after a wait that covers all of them. Dropping the handle waits for `queue`.
    unsafe fn with_queue(&self, queue: *mut c_void) -> Result<Arc<dyn Backend>> {
        let refuse = |reason: String| Error::Queue {
            backend: NAME.to_string(),
            reason,
        };
        if queue.is_null() {
            return Err(refuse("the aclrtStream is null".to_string()));
        }
        self.dev.synchronize()?;
        // SAFETY: the caller upholds `Backend::with_queue`'s contract: `queue` is a valid
        // stream handle; CANN reports one it does not know.
        let st = unsafe { (self.dev.cann.rt.aclrtSynchronizeStream)(queue) };
        if st != 0 {
            return Err(refuse(format!(
                "aclrtSynchronizeStream on it failed: {} ({st}); pass a stream created by \
                 aclrtCreateStream on device {}",
                error::status_name(st),
                self.dev.id
            )));
        }
        self.dev.add_stream(queue as usize);
        Ok(Arc::new(AscendBackend {
            dev: self.dev.clone(),
            name: self.name.clone(),
            mask: OnceLock::new(),
            queue: Some(Arc::new(CallerStream {
                dev: self.dev.clone(),
                stream: queue as usize,
            })),
            paths: self.paths.clone(),
        }))
    }

    /// Counted at aclrtMalloc (tensors, workspaces, temporaries) and at every aclrtMemcpy
    /// between host and device (uploads, downloads, and the index contents ops read back
    /// to check them: CANN's operators take them as host arguments or do not check them).
    fn traffic(&self) -> Option<Traffic> {
        Some(self.dev.traffic.get())
    }

    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        self.op(|| ops::moe_route::run(self, call))
    }

    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        self.op(|| ops::moe_experts::run(self, call))
    }

    fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        self.op(|| ops::mla_decode::run(self, call))
    }

    fn mla_cache_write(&self, call: &MlaCacheWriteCall<'_>) -> Result<()> {
        self.op(|| ops::mla_cache_write::run(self, call))
    }

    fn mla_sparse_decode(&self, call: &MlaSparseDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        self.op(|| ops::mla_sparse_decode::run(self, call))
    }

    fn dsa_indexer_topk(&self, call: &DsaIndexerTopkCall<'_>) -> Result<DsaIndexerTopkOutput> {
        self.op(|| ops::dsa_indexer_topk::run(self, call))
    }
}
